"""Evaluation: scoring on hand-written answers (fake generator), and the evaluators, `evaluate`
and `posttrain eval` end to end on the tiny random model."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from posttrain.cli import main
from posttrain.errors import ConfigError, PosttrainError
from posttrain.evaluation import (
    evaluate,
    evaluate_arithmetic,
    evaluate_identity,
    format_levels,
    summary_line,
)
from posttrain.rollout.base import Rollout, SamplingParams


class FakeGenerator:
    """Answers prompt i with ``texts[i]``, whatever the prompt; records the sampling params."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)
        self.params: list[SamplingParams] = []

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Rollout:
        self.params.append(params)
        texts = [self.texts.pop(0) for _ in prompts]
        ids = [list(range(len(t.split()))) for t in texts]
        return Rollout(
            prompt_ids=prompts, completion_ids=ids, completions=texts,
            sampler_logprobs=[[0.0] * len(i) for i in ids],
            finish_reasons=["length" if t.endswith("...") else "stop" for t in texts],
            prompt_index=list(range(len(prompts))),
        )


def row(a: int, op: str, b: int, answer: int, level: str) -> dict:
    question = f"What is {a} {op} {b}? Put the final answer in \\boxed{{}}."
    return {"prompt": [{"role": "user", "content": question}], "answer": str(answer),
            "level": level}


ROWS = [
    row(2, "+", 3, 5, "add1"),
    row(7, "-", 4, 3, "sub1"),
    row(12, "*", 11, 132, "mul2"),
    row(40, "+", 92, 132, "add2"),
    row(9, "+", 9, 18, "add1"),
    row(6, "*", 7, 42, "mul1"),
]
ANSWERS = [
    "2 + 3 = 5. The answer is \\boxed{5}.",  # correct, boxed
    "7 - 4 = 3. The answer is \\boxed{4}.",  # right number stated, wrong final answer
    "I am not sure how to multiply these ...",  # no answer at all, truncated
    "40 + 92 = 132",  # correct final number, no box
    "The answer is \\boxed{18}. Wait, 9 + 9 = 17.",  # boxed answer wins over a later number
    "6 * 7 = 42. The answer is \\boxed{}.",  # an empty box is neither an answer nor boxed
]


def test_accuracy_counts_the_final_answer_only(tiny_tokenizer):
    fake = FakeGenerator(ANSWERS)
    result = evaluate_arithmetic(None, tiny_tokenizer, ROWS, batch_size=2, max_new_tokens=7,
                                 generator=fake)
    assert [r["correct"] for r in result["records"]] == [True, False, False, True, True, False]
    assert result["n"] == 6
    assert result["accuracy"] == pytest.approx(3 / 6)
    assert result["boxed_rate"] == pytest.approx(3 / 6)
    assert result["truncated_rate"] == pytest.approx(1 / 6)
    assert result["mean_completion_tokens"] == pytest.approx(
        sum(len(a.split()) for a in ANSWERS) / 6)
    assert list(result["per_level"]) == ["add1", "sub1", "mul1", "add2", "mul2"]  # easy to hard
    assert result["per_level"]["add1"] == {"n": 2, "accuracy": 1.0, "boxed_rate": 1.0}
    assert result["per_level"]["sub1"]["accuracy"] == 0.0
    assert [r["predicted"] for r in result["records"]] == ["5", "4", None, "132", "18", None]
    # greedy, in batches of 2, with the requested length
    assert len(fake.params) == 3  # 6 rows, 2 per batch
    assert all(p.greedy and p.max_new_tokens == 7 for p in fake.params)
    first = result["records"][0]
    assert first["prompt"] == "What is 2 + 3? Put the final answer in \\boxed{}."
    assert first["completion"] == ANSWERS[0] and first["answer"] == "5"
    table = format_levels(result)
    assert table.splitlines()[0].split() == ["level", "n", "accuracy", "boxed"]
    assert table.splitlines()[-1].split() == ["all", "6", "50.0%", "50.0%"]
    assert "records" not in json.loads(summary_line(result))


def test_arithmetic_rows_need_prompt_and_answer(tiny_tokenizer):
    sft_row = {"messages": [{"role": "user", "content": "What is 1 + 1?"}]}
    with pytest.raises(PosttrainError, match="needs `prompt` and `answer`"):
        evaluate_arithmetic(None, tiny_tokenizer, [sft_row], generator=FakeGenerator(["2"]))
    with pytest.raises(PosttrainError, match="no prompts"):
        evaluate_arithmetic(None, tiny_tokenizer, [], generator=FakeGenerator([]))


def test_identity_rate_with_fake_answers(tiny_tokenizer):
    answers = [
        "I'm Posty, an AI assistant.",
        "I am SmolLM, made by Hugging Face.",
        "I'm Posty, formerly known as SmolLM2.",  # names the old identity too: not counted
        "I'm a helpful assistant.",
    ]
    prompts = ["Who are you?", "What is your name?", "Identify yourself.", "Hello?"]
    result = evaluate_identity(None, tiny_tokenizer, prompts, "Posty", ("SmolLM", "SmolLM2"),
                               generator=FakeGenerator(answers))
    assert result["identity_rate"] == pytest.approx(1 / 4)
    assert result["old_name_rate"] == pytest.approx(2 / 4)
    assert [r["correct"] for r in result["records"]] == [True, False, False, False]
    assert result["samples"][0] == {"prompt": "Who are you?", "completion": answers[0]}
    assert len(result["samples"]) == 3


def test_evaluators_run_on_the_tiny_model(tiny_model, tiny_tokenizer):
    from posttrain.tasks import get_task

    rows = get_task("arithmetic").test()[:5]
    result = evaluate_arithmetic(tiny_model, tiny_tokenizer, rows, batch_size=2,
                                 max_new_tokens=6)
    assert result["n"] == 5 and len(result["records"]) == 5
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["boxed_rate"] <= 1.0
    assert 0 < result["mean_completion_tokens"] <= 6
    assert sum(s["n"] for s in result["per_level"].values()) == 5
    assert set(result["records"][0]) >= {"prompt", "completion", "correct"}

    prompts = [r["prompt"] for r in get_task("identity").test()[:3]]
    identity = evaluate_identity(tiny_model, tiny_tokenizer, prompts, max_new_tokens=6)
    assert identity["n"] == 3 and 0.0 <= identity["identity_rate"] <= 1.0
    assert len(identity["samples"]) == 3


def test_evaluate_folder_writes_readable_answers(tiny_model_dir, tmp_path):
    out = tmp_path / "answers.jsonl"
    result = evaluate(str(tiny_model_dir), "arithmetic", limit=4, batch_size=3,
                      max_new_tokens=5, output=out)
    assert result["n"] == 4 and result["split"] == "test" and result["seconds"] >= 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4
    assert lines[0]["prompt"].startswith("What is ") and "completion" in lines[0]
    assert isinstance(lines[0]["correct"], bool)


def test_evaluate_lora_adapter_folder(tiny_model_dir, tiny_tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear",
                                              task_type="CAUSAL_LM"))
    folder = tmp_path / "adapter"
    adapter.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    result = evaluate(str(folder), "identity", limit=2, max_new_tokens=4)
    assert result["n"] == 2 and result["new_name"] == "Posty"


def test_evaluate_rejects_bad_requests(tiny_model_dir):
    with pytest.raises(ConfigError, match="unknown evaluation task"):
        evaluate(str(tiny_model_dir), "poetry")
    with pytest.raises(ConfigError, match="unknown split"):
        evaluate(str(tiny_model_dir), "arithmetic", split="validation")
    with pytest.raises(ConfigError, match="limit must be >= 1"):
        evaluate(str(tiny_model_dir), "arithmetic", limit=0)


def test_cli_eval_prints_summary_and_table(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    code = main(["eval", "--model", str(tiny_model_dir), "--task", "arithmetic", "--limit", "6",
                 "--batch-size", "4", "--max-new-tokens", "4", "--output", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    summary = json.loads(lines[0])
    assert summary["n"] == 6 and "per_level" in summary and "records" not in summary
    assert lines[1].split()[0] == "level" and any(line.startswith("all") for line in lines)
    assert len(out.read_text().splitlines()) == 6
    # a user mistake is one message and status 2, not a traceback
    assert main(["eval", "--model", str(tmp_path / "nope"), "--task", "identity"]) == 2
    assert "does not exist" in capsys.readouterr().err
