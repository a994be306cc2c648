"""What people bring from TRL and plain transformers: reward functions, config names, datasets,
and what they expect of outputs, the Python API and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl

import posttrain
from posttrain.cli import main
from posttrain.config import load_config
from posttrain.data.loading import load_rows
from posttrain.errors import ConfigError, DataError, PosttrainError, RewardError

# --- reward functions written for TRL ---------------------------------------------------


@pytest.fixture
def prompts(tmp_path):
    rows = [{"prompt": f"Say a number, please {i}", "answer": str(i)} for i in range(4)]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


@pytest.fixture
def chat_prompts(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"Say {i}"}], "answer": str(i)}
            for i in range(4)]
    return write_jsonl(tmp_path / "chat.jsonl", rows)


def rl_values(data, tmp_path, **values):
    return {"model": "random:tiny", "train_data": str(data), "output_dir": str(tmp_path / "o"),
            "prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 4, "max_steps": 1,
            "progress": False, **values}


def test_trl_style_reward_functions_get_keywords(prompts, chat_prompts, tmp_path):
    seen = {}

    def length(completions, **kwargs):  # TRL's most common shape
        seen.setdefault("kwargs", set(kwargs))
        seen.setdefault("completion", completions[0])
        return [float(len(c) if isinstance(c, str) else len(c[0]["content"])) for c in completions]

    def uses_answer(prompts, completions, answer, **kwargs):  # names a column
        seen.setdefault("prompt", prompts[0])
        return [float(a == "1") for a in answer]

    async def slow_async(completions, **kwargs):
        return [0.5] * len(completions)

    posttrain.grpo(rl_values(prompts, tmp_path), reward_functions=[length, uses_answer,
                                                                   slow_async])
    assert {"prompts", "completion_ids", "answer"} <= seen["kwargs"]
    assert isinstance(seen["completion"], str) and isinstance(seen["prompt"], str)
    seen.clear()
    posttrain.grpo(rl_values(chat_prompts, tmp_path, output_dir=str(tmp_path / "chat")),
                   reward_functions=[length, uses_answer])
    assert seen["completion"][0]["role"] == "assistant"  # conversational: messages
    assert seen["prompt"][0]["role"] == "user"
    records = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").open()]
    assert records[0]["rewards/slow_async/mean"] == 0.5


def test_reward_signature_and_columns_are_checked_before_the_model_loads(prompts, tmp_path,
                                                                         monkeypatch):
    from posttrain.algorithms import online

    monkeypatch.setattr(online, "load_policy", lambda *a, **k: pytest.fail("model loaded"))

    def needs_solution(completions, solution, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match=r"needs_solution.*TRL's style.*solution"):
        posttrain.trainer("grpo", rl_values(prompts, tmp_path), reward_functions=[needs_solution])

    def one_positional(prompts, completions, completion_ids, extra):
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match=r"one_positional.*extra"):
        posttrain.trainer("grpo", rl_values(prompts, tmp_path), reward_functions=[one_positional])


# --- config names -------------------------------------------------------------------------


def test_trl_config_names_are_accepted(tmp_path):
    recipe = tmp_path / "trl.yaml"
    recipe.write_text(
        "model_name_or_path: random:tiny\ndataset_name: trl-lib/tldr\n"
        "per_device_train_batch_size: 4\nnum_train_epochs: 2\nmax_completion_length: 64\n"
        "use_peft: true\nuse_vllm: false\nbf16: false\nlr_scheduler_type: linear\n"
        "num_generations: 4\n")
    config = posttrain.make_config("grpo", str(recipe))
    assert (config.model, config.train_data, config.per_device_batch_size, config.num_epochs,
            config.max_new_tokens, config.use_lora, config.rollout_backend,
            config.mixed_precision, config.lr_scheduler) == (
        "random:tiny", "hf:trl-lib/tldr", 4, 2.0, 64, True, "hf", "no", "linear")
    assert posttrain.make_config("ppo", {"train_data": "x", "num_ppo_epochs": 2}).num_iterations == 2


def test_hints_do_not_mislead_and_no_reads_as_no(tmp_path):
    data = "x.jsonl"
    with pytest.raises(ConfigError) as err:
        load_config(posttrain.SFTConfig, overrides=[f"train_data={data}", "use_vllm=true"])
    assert "use_lora" not in str(err.value).split("Valid keys")[0]
    assert "does not apply" in str(err.value)
    with pytest.raises(ConfigError, match="evaluates every eval_steps"):
        load_config(posttrain.SFTConfig, overrides=[f"train_data={data}", "eval_strategy=steps"])
    with pytest.raises(ConfigError, match="same setting"):
        load_config(posttrain.SFTConfig, overrides=[f"train_data={data}", "bf16=true",
                                                    "mixed_precision=bf16"])
    assert load_config(posttrain.SFTConfig, overrides=[f"train_data={data}",
                                                       "mixed_precision=no"]).mixed_precision == "no"


# --- data -----------------------------------------------------------------------------------

CONVERSATION = {"messages": [{"role": "user", "content": "What is 1 + 1?"},
                             {"role": "assistant", "content": "2"}]}


def test_json_lines_in_a_json_file_and_save_to_disk_folders(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_list([CONVERSATION] * 3)
    dataset.to_json(str(tmp_path / "data.json"))  # JSON lines, datasets' default
    assert len(load_rows(str(tmp_path / "data.json"))) == 3
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert len(load_rows(str(tmp_path / "saved"))) == 3
    assert len(load_rows(f"hf:{tmp_path / 'saved'}")) == 3
    datasets.DatasetDict({"train": dataset, "test": dataset}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_rows(str(tmp_path / "dd"), split="test")) == 3
    with pytest.raises(DataError, match="no split 'dev'"):
        load_rows(str(tmp_path / "dd"), split="dev")
    assert len(load_rows(dataset)) == 3 and len(load_rows([CONVERSATION])) == 1


def test_csv_cells_stay_text(tmp_path):
    path = tmp_path / "rows.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "answer"])
        writer.writerow(["What is 30 + 1?", " 31"])
    rows = load_rows(str(path))
    assert rows.rows[0]["answer"] == " 31" and rows.locations[0].endswith("line 2")


def test_sharegpt_and_alpaca_through_columns(tmp_path):
    from posttrain.data.formats import to_sft_example

    share = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    rows = load_rows([share], columns={"messages": "conversations"})
    example = to_sft_example(rows.rows[0], rows.locations[0])
    assert [m["role"] for m in example.messages] == ["user", "assistant"]
    alpaca = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    rows = load_rows([alpaca], columns={"prompt": ["instruction", "input"], "completion": "output"})
    example = to_sft_example(rows.rows[0], rows.locations[0])
    assert example.messages[0]["content"] == "Add the numbers.\n\n2 and 3"
    with pytest.raises(DataError, match=r"column\(s\) \['conversations'\]"):
        load_rows([{"x": 1}], columns={"messages": "conversations"})


def test_text_rows_and_raw_prompt_completion_train_without_the_template(tiny_tokenizer):
    from posttrain.data.formats import to_sft_example
    from posttrain.data.tokenize import IGNORE_INDEX, tokenize_sft

    text = to_sft_example({"text": "plain language modelling"}, "row 0")
    tokens = tokenize_sft(tiny_tokenizer, text, 64)
    assert "<|im_start|>" not in tiny_tokenizer.decode(tokens.input_ids)
    assert tokens.labels[0] == IGNORE_INDEX and all(t != IGNORE_INDEX for t in tokens.labels[1:])
    raw = to_sft_example({"prompt": "Q: 1+1?", "completion": " A: 2"}, "row 0", chat_template=False)
    tokens = tokenize_sft(tiny_tokenizer, raw, 64)
    prompt_len = len(tiny_tokenizer("Q: 1+1?", add_special_tokens=False)["input_ids"])
    assert all(t == IGNORE_INDEX for t in tokens.labels[:prompt_len])
    assert tokens.input_ids[-1] == tiny_tokenizer.eos_token_id == tokens.labels[-1]
    assert "<|im_start|>" not in tiny_tokenizer.decode(tokens.input_ids)


TOOL_ROW = {"messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny."}]}


def test_tool_calls_go_through_the_template_or_fail_clearly(tiny_tokenizer):
    import copy

    from posttrain.data.formats import to_sft_example
    from posttrain.data.tokenize import tokenize_sft

    example = to_sft_example(TOOL_ROW, "row 3")
    with pytest.raises(DataError, match="does not render the tool call 'get_weather'"):
        tokenize_sft(tiny_tokenizer, example, 256, "row 3")
    tools_aware = copy.deepcopy(tiny_tokenizer)
    tools_aware.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }}</tool_call>"
        "{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokens = tokenize_sft(tools_aware, example, 256, "row 3")
    trained = tools_aware.decode([t for t, lab in zip(tokens.input_ids, tokens.labels) if lab >= 0])
    assert "get_weather" in trained and "It is sunny." in trained and "sunny<" not in trained


def test_weighted_mixtures(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "a", "k": i} for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "b", "k": i} for i in range(10)])
    rows = load_rows([{"path": str(a), "weight": 3}, {"path": str(b), "weight": 1}])
    kinds = [r["prompt"] for r in rows.rows]
    assert len(kinds) == 20 and kinds.count("a") == 15 and kinds.count("b") == 5
    assert any(str(a) in where for where in rows.locations)


def test_the_api_takes_rows_and_datasets_and_keeps_file_order(tmp_path):
    seen = []

    class Record(posttrain.Callback):
        def on_step_end(self, step, metrics):
            seen.append((step, metrics["loss"]))

        def on_evaluate(self, step, metrics):
            seen.append(("eval", step))

    rows = [{"prompt": f"What is {i} + 1?", "completion": f"{i + 1}"} for i in range(6)]
    trainer = posttrain.trainer("sft", {"model": "random:tiny", "train_data": rows,
                                        "eval_data": rows[:2], "output_dir": str(tmp_path / "o"),
                                        "progress": False, "per_device_batch_size": 2,
                                        "shuffle": False, "eval_steps": 2})
    batches = trainer.step_batches(0)
    first = next(batches).micro_batches[0]["input_ids"]
    assert "What is 0 + 1?" in trainer.tokenizer.decode(first[0])  # file order
    metrics = trainer.train(callbacks=[Record()])
    assert [s for s, _ in seen if s != "eval"] == [1, 2, 3] and ("eval", 2) in seen
    assert "eval/loss" in metrics
    assert "in-memory list" in (tmp_path / "o" / "posttrain_config.yaml").read_text()


def test_config_objects_are_validated_and_overrides_apply(tmp_path):
    with pytest.raises(ConfigError, match="train_data is empty"):
        posttrain.sft(posttrain.SFTConfig(train_data=""), learning_rate=123)
    config = posttrain.make_config("sft", posttrain.SFTConfig(train_data="x.jsonl"),
                                   learning_rate=123.0)
    assert config.learning_rate == 123.0
    with pytest.raises(ConfigError, match="learning_rate"):
        posttrain.make_config("sft", posttrain.SFTConfig(train_data="x.jsonl"),
                              learning_rate=float("nan"))


# --- outputs ------------------------------------------------------------------------------


def test_checkpoints_load_as_models_and_score_refuses_a_causal_lm(memorise_data, tmp_path,
                                                                  capsys):
    from safetensors.torch import load_file

    from posttrain.models import load_trained

    out = tmp_path / "run"
    posttrain.sft({"model": "random:tiny", "train_data": str(memorise_data),
                   "output_dir": str(out), "max_steps": 2, "save_steps": 1, "progress": False})
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000001"]  # no final one
    model = load_trained(out / "checkpoints" / "step-000001")
    trained = load_file(out / "checkpoints" / "step-000001" / "trainable.safetensors")
    torch.testing.assert_close(model.model.embed_tokens.weight,
                               trained["model.model.embed_tokens.weight"])
    capsys.readouterr()
    assert main(["chat", "--model", str(out / "checkpoints" / "step-000001"),
                 "--prompt", "hi", "--max-new-tokens", "3"]) == 0
    assert main(["score", "--model", str(out), "--data", str(memorise_data)]) == 2
    assert "is not a reward model" in capsys.readouterr().err


def test_push_to_hub_uploads_the_model_folder(memorise_data, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def whoami(self):
            calls.append(("whoami",))
            return {"name": "me"}

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private))
            return type("Repo", (), {"repo_id": f"me/{repo_id}", "url": f"https://hf.co/me/{repo_id}"})

        def upload_folder(self, folder_path, repo_id, ignore_patterns, commit_message):
            calls.append(("upload", sorted(p.name for p in Path(folder_path).iterdir()), repo_id,
                          ignore_patterns))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    posttrain.sft({"model": "random:tiny", "train_data": str(memorise_data), "max_steps": 1,
                   "output_dir": str(tmp_path / "mine"), "progress": False, "push_to_hub": True})
    assert calls[0] == ("whoami",) and calls[1] == ("create", "mine", True)
    kind, files, repo, ignored = calls[2]
    assert kind == "upload" and repo == "me/mine" and "model.safetensors" in files
    assert "checkpoints/**" in ignored

    class NoToken(FakeApi):
        def whoami(self):
            raise OSError("no token")

    monkeypatch.setattr(huggingface_hub, "HfApi", NoToken)
    with pytest.raises(PosttrainError, match="push_to_hub needs a Hugging Face token"):
        posttrain.sft({"model": "random:tiny", "train_data": str(memorise_data), "max_steps": 1,
                       "output_dir": str(tmp_path / "other"), "push_to_hub": True})


# --- CLI ------------------------------------------------------------------------------------


def test_cli_version_and_defaults_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("posttrain ")
    for command in ("chat", "generate", "score", "eval", "sample"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "(default:" in capsys.readouterr().out, command


def test_resuming_another_trainers_run_is_refused(memorise_data, tmp_path):
    out = tmp_path / "run"
    posttrain.sft({"model": "random:tiny", "train_data": str(memorise_data), "max_steps": 1,
                   "output_dir": str(out), "progress": False, "save_final_checkpoint": True})
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a",
                                                    "rejected": "b"}] * 2)
    with pytest.raises(ConfigError, match="written by SFT, not DPO"):
        posttrain.dpo({"model": "random:tiny", "train_data": str(pairs), "output_dir": str(out),
                       "resume": True, "allow_config_change": True, "progress": False})


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce_pp", "ppo"])
def test_every_online_trainer_takes_reward_functions_from_the_api(name, prompts, tmp_path):
    def length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    metrics = getattr(posttrain, name)(rl_values(prompts, tmp_path), reward_functions=[length],
                                       log_entropy=False)
    assert "rewards/length/mean" in metrics
    saved = (tmp_path / "o" / "posttrain_config.yaml").read_text()
    assert f"advantage_estimator: {'gae' if name == 'ppo' else name}" in saved
