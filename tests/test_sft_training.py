"""SFT end to end on a tiny random model: learning, accumulation, LoRA, checkpoint/resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from posttrain.algorithms.sft import SFT, SFTConfig
from posttrain.cli import main
from posttrain.config import load_config
from posttrain.train.loop import train


def make_config(data, out, **values) -> SFTConfig:
    base = {"model": "random:tiny", "train_data": str(data), "output_dir": str(out),
            "progress": False, "lr_scheduler": "constant"}
    return load_config(SFTConfig, values={**base, **values})


def test_memorises_and_answers_through_chat(memorise_data, tmp_path, capsys):
    out = tmp_path / "run"
    config = make_config(memorise_data, out, num_epochs=80, learning_rate=3e-3,
                         per_device_batch_size=8)
    metrics = train(SFT(config))
    assert metrics["loss"] < 0.1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["loss"] > 1.0 and records[-1]["loss"] < 0.1
    # the output folder is a plain Hugging Face model folder
    AutoModelForCausalLM.from_pretrained(out)
    capsys.readouterr()
    assert main(["chat", "--model", str(out), "--prompt", "What is 5 + 6?"]) == 0
    assert capsys.readouterr().out.strip() == "The answer is 11."


def test_gradient_accumulation_matches_one_big_batch(memorise_data, tmp_path):
    """4 micro-batches of 1 == 1 batch of 4 (loss normalised over the whole step)."""
    weights = {}
    for name, micro, accumulation in (("big", 4, 1), ("accumulated", 1, 4)):
        for reduction in ("token", "sequence"):
            out = tmp_path / f"{name}-{reduction}"
            config = make_config(memorise_data, out, max_steps=2, learning_rate=1e-2,
                                 per_device_batch_size=micro,
                                 gradient_accumulation_steps=accumulation,
                                 loss_reduction=reduction, max_grad_norm=0.0)
            train(SFT(config))
            weights[name, reduction] = load_file(out / "model.safetensors")
    for reduction in ("token", "sequence"):
        big, accumulated = weights["big", reduction], weights["accumulated", reduction]
        for key in big:
            torch.testing.assert_close(accumulated[key], big[key], atol=1e-5, rtol=1e-4)
    # and the two reductions really differ (the test can tell them apart)
    key = next(iter(weights["big", "token"]))
    assert not torch.allclose(weights["big", "token"][key], weights["big", "sequence"][key])


def test_packing_trains(memorise_data, tmp_path):
    config = make_config(memorise_data, tmp_path / "packed", packing=True, max_length=128,
                         per_device_batch_size=1, num_epochs=5, learning_rate=3e-3)
    algorithm = SFT(config)
    assert len(algorithm.train_examples) < 8  # several conversations per packed row
    metrics = train(algorithm)
    assert metrics["tokens"] > 0 and metrics["loss"] < 5


def test_lora_trains_saves_and_reloads(memorise_data, tmp_path):
    from posttrain.models import load_trained

    out = tmp_path / "lora"
    config = make_config(memorise_data, out, use_lora=True, lora_r=4, lora_alpha=8,
                         num_epochs=20, learning_rate=1e-2, merge_lora=True)
    algorithm = SFT(config)
    before = {n: p.detach().clone() for n, p in algorithm.model.named_parameters()}
    metrics = train(algorithm)
    changed = [n for n, p in algorithm.model.named_parameters()
               if not torch.equal(p.detach(), before[n])]
    assert changed and all("lora_" in n for n in changed)  # only the adapter moved
    assert (out / "adapter_config.json").exists() and (out / "merged" / "config.json").exists()
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert metrics["loss"] < first - 0.5  # it learns
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "random:tiny"  # the name, not a cache path
    assert (out / "generation_config.json").exists()
    reloaded = load_trained(out).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)


class Crash(RuntimeError):
    pass


def test_kill_and_resume_gives_the_same_weights(memorise_data, tmp_path):
    common = dict(max_steps=6, per_device_batch_size=2, learning_rate=5e-3,
                  lr_scheduler="cosine", warmup_steps=2, save_steps=3)
    straight = tmp_path / "straight"
    train(SFT(make_config(memorise_data, straight, **common)))

    resumed = tmp_path / "resumed"
    algorithm = SFT(make_config(memorise_data, resumed, **common))
    calls = {"n": 0}
    original_loss = algorithm.loss

    def crashing_loss(*args):
        calls["n"] += 1
        if calls["n"] == 5:  # in step 5, after the step-3 checkpoint
            raise Crash("simulated kill")
        return original_loss(*args)

    algorithm.loss = crashing_loss
    with pytest.raises(Crash):
        train(algorithm)
    # the periodic checkpoint, and the one written as the crash stopped the run after step 4
    assert (resumed / "checkpoints" / "step-000003" / "manifest.json").exists()
    assert (resumed / "checkpoints" / "step-000004" / "manifest.json").exists()
    assert not (resumed / "model.safetensors").exists()
    with pytest.raises(Exception, match="already has checkpoints"):
        train(SFT(make_config(memorise_data, resumed, **common)))
    train(SFT(make_config(memorise_data, resumed, resume=True, **common)))

    a = load_file(straight / "model.safetensors")
    b = load_file(resumed / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-7, rtol=0)
    steps = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # nothing logged twice


def test_cli_sft_runs_and_reports(memorise_data, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["sft", f"train_data={memorise_data}", "model=random:tiny", f"output_dir={out}",
                 "max_steps=2", "progress=false"])
    assert code == 0
    assert "model saved to" in capsys.readouterr().out
    assert (out / "model.safetensors").exists() and (out / "posttrain_config.yaml").exists()
