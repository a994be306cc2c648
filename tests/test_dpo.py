"""DPO (posttrain.algorithms.dpo): masks, the concatenated forward, the four reference modes,
the precomputed cache, exact gradient accumulation, learning, errors and the CLI."""

from __future__ import annotations

import copy
import gc
import json
import math
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_jsonl

from posttrain.algorithms.dpo import DPO, DPOConfig
from posttrain.algorithms.pairs import collate_pairs, response_logps
from posttrain.config import load_config
from posttrain.data.tokenize import IGNORE_INDEX
from posttrain.errors import ConfigError, DataError
from posttrain.ops.preference import combined_dpo_loss
from posttrain.tiny import build_tiny_model
from posttrain.train.metrics import StepMetrics

PAIRS = [
    {"prompt": "What is 2 + 3?", "chosen": "The answer is 5.", "rejected": "The answer is 7."},
    {"prompt": "What is 1 + 1?", "chosen": "The answer is 2.", "rejected": "I do not know."},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "A cat sat on the mat."},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
     "chosen": "hello", "rejected": "Once upon a time there was a red dragon."},
]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", PAIRS)


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def make(tmp_path, pairs_file, tokenizer, model=None, **values) -> DPO:
    values = {"train_data": str(pairs_file), "output_dir": str(tmp_path / "out"),
              "per_device_batch_size": 4, "lora_dropout": 0.0, "progress": False,
              "ref_cache_dir": str(tmp_path / "ref_cache"), **values}
    config = load_config(DPOConfig, values=values)
    return DPO(config, model=model if model is not None else build_tiny_model(tokenizer),
               tokenizer=tokenizer)


def attached(algo: DPO, accelerator) -> DPO:
    algo.wrapped = algo.wrap(algo.model)
    algo.attach(algo.wrapped, accelerator)
    return algo


def first_micro(algo: DPO):
    step_batch = next(algo.step_batches(0))
    return step_batch, step_batch.micro_batches[0]


def perturb_lora(model) -> None:
    """Give a fresh (B = 0) adapter random weights, so the policy differs from the base."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)


def test_chosen_and_rejected_share_the_masked_prompt(tmp_path, pairs_file, tiny_tokenizer):
    algo = make(tmp_path, pairs_file, tiny_tokenizer)
    for pair in algo.train_pairs:
        starts = []
        for side in (pair.chosen, pair.rejected):
            first = next(i for i, t in enumerate(side.labels) if t != IGNORE_INDEX)
            assert all(t == IGNORE_INDEX for t in side.labels[:first])  # the prompt
            labelled = [i for i, t in enumerate(side.labels) if t != IGNORE_INDEX]
            assert labelled == list(range(first, labelled[-1] + 1))  # one contiguous response
            assert all(side.labels[i] == side.input_ids[i] for i in labelled)
            starts.append(first)
        assert starts[0] == starts[1]
        assert pair.chosen.input_ids[: starts[0]] == pair.rejected.input_ids[: starts[0]]
    pair = algo.train_pairs[0]
    response = [t for t in pair.chosen.labels if t != IGNORE_INDEX]
    assert tiny_tokenizer.decode(response) == "The answer is 5.<|im_end|>"


def test_concatenated_forward_equals_two_passes(tmp_path, pairs_file, tiny_tokenizer,
                                                accelerator):
    algo = attached(make(tmp_path, pairs_file, tiny_tokenizer, reference="copy",
                         loss_type=["sigmoid", "ipo"], sft_weight=0.5), accelerator)
    with torch.no_grad():  # policy != reference
        for p in algo.model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    pairs = algo.train_pairs
    batch = collate_pairs(pairs, algo.pad_id)  # [2B, T]: chosen rows, then rejected rows
    with torch.no_grad():
        joint, stats = algo.pair_losses(algo.wrapped, batch)
        sides = {}
        for name in ("chosen", "rejected"):
            half = slice(0, len(pairs)) if name == "chosen" else slice(len(pairs), None)
            only = {k: v[half] for k, v in batch.items() if k in ("input_ids", "labels",
                                                                  "attention_mask")}
            width = int(only["attention_mask"].sum(-1).max())  # own padding only
            only = {k: v[:, :width] for k, v in only.items()}
            sides[name] = (response_logps(algo.wrapped, only),
                           response_logps(algo.wrap(algo.ref_model), only)[0])
    (pc, lc), rc = sides["chosen"]
    (pr, lr), rr = sides["rejected"]
    expected = combined_dpo_loss(pc, pr, rc, rr, beta=0.1, loss_types=["sigmoid", "ipo"],
                                 chosen_lengths=lc, rejected_lengths=lr)
    separate = expected.losses + 0.5 * (-pc / lc)
    torch.testing.assert_close(joint, separate, atol=1e-5, rtol=0)
    assert not torch.allclose(stats["rewards/margins"], torch.zeros(len(pairs)))


def test_reference_modes_agree_on_first_loss(tmp_path, pairs_file, tiny_tokenizer, accelerator):
    """policy = base + a random LoRA delta, reference = base, computed four ways."""
    losses = {}
    lora = dict(use_lora=True, lora_r=4, lora_target_modules=["q_proj", "v_proj"])
    adapter = attached(make(tmp_path, pairs_file, tiny_tokenizer, reference="adapter", **lora),
                       accelerator)
    perturb_lora(adapter.model)
    merged = copy.deepcopy(adapter.model).merge_and_unload().state_dict()
    for mode in ("copy", "precomputed"):
        algo = attached(make(tmp_path / mode, pairs_file, tiny_tokenizer, reference=mode),
                        accelerator)
        algo.model.load_state_dict(merged)  # the same policy, as a plain model
        losses[mode] = algo
    pre_lora = attached(make(tmp_path / "pl", pairs_file, tiny_tokenizer,
                             reference="precomputed", **lora), accelerator)
    perturb_lora(pre_lora.model)
    losses["adapter"], losses["precomputed+adapter"] = adapter, pre_lora
    values = {}
    for mode, algo in losses.items():
        step_batch, micro = first_micro(algo)
        with torch.no_grad():
            values[mode] = algo.loss(algo.wrapped, micro, step_batch)[0]
    assert abs(float(values["copy"]) - math.log(2)) > 1e-3  # the reference differs from policy
    for mode, value in values.items():
        torch.testing.assert_close(value, values["copy"], atol=1e-5, rtol=0, msg=mode)


def test_precompute_caches_frees_and_reuses(tmp_path, pairs_file, tiny_tokenizer, accelerator,
                                            monkeypatch):
    refs: list[weakref.ref] = []
    original = DPO.load_reference

    def tracked(self):
        model = original(self)
        refs.append(weakref.ref(model))
        return model

    monkeypatch.setattr(DPO, "load_reference", tracked)
    first = attached(make(tmp_path, pairs_file, tiny_tokenizer, reference="precomputed",
                          eval_data=str(pairs_file)), accelerator)
    files = sorted((tmp_path / "ref_cache").glob("*.safetensors"))
    assert len(files) == 1  # train and eval are the same pairs -> the same key
    gc.collect()
    assert len(refs) == 1 and refs[0]() is None and first.ref_model is None
    values = [p.ref_logps for p in first.train_pairs]
    stamp = files[0].stat().st_mtime_ns

    def refuse(self):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(DPO, "load_reference", refuse)
    again = attached(make(tmp_path, pairs_file, tiny_tokenizer, reference="precomputed"),
                     accelerator)
    assert [p.ref_logps for p in again.train_pairs] == values
    assert files[0].stat().st_mtime_ns == stamp
    _, micro = first_micro(again)
    assert micro["ref_logps"].shape == (2 * len(PAIRS),)

    monkeypatch.setattr(DPO, "load_reference", tracked)  # other weights -> another key
    other = make(tmp_path, pairs_file, tiny_tokenizer, build_tiny_model(tiny_tokenizer, seed=5),
                 reference="precomputed")
    attached(other, accelerator)
    assert len(refs) == 2 and len(list((tmp_path / "ref_cache").glob("*.safetensors"))) == 2


def test_reference_free(tmp_path, pairs_file, tiny_tokenizer, accelerator):
    algo = attached(make(tmp_path, pairs_file, tiny_tokenizer, reference="none", beta=0.5),
                    accelerator)
    assert algo.ref_model is None
    _, micro = first_micro(algo)
    with torch.no_grad():
        losses, stats = algo.pair_losses(algo.wrapped, micro)
    pc, pr = stats["logps/chosen"], stats["logps/rejected"]
    torch.testing.assert_close(losses, -F.logsigmoid(0.5 * (pc - pr)), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats["rewards/chosen"], 0.5 * pc)


def test_gradient_accumulation_is_exact(tmp_path, pairs_file, tiny_tokenizer, accelerator):
    results = []
    for batch, accumulation in ((4, 1), (1, 4)):
        algo = attached(make(tmp_path / f"{batch}", pairs_file, tiny_tokenizer,
                             per_device_batch_size=batch, gradient_accumulation_steps=accumulation,
                             loss_type=["sigmoid", "ipo"], sft_weight=0.3), accelerator)
        with torch.no_grad():
            for p in algo.model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
                       * 0.02)
        step_batch = next(algo.step_batches(0))
        sums = StepMetrics()
        for micro in step_batch.micro_batches:
            share, m = algo.loss(algo.wrapped, micro, step_batch)
            share.backward()
            sums.add(m, loss_share=float(share.detach()))
        metrics = sums.reduce()
        total = metrics.pop("loss")
        grads = torch.cat([p.grad.reshape(-1) for p in algo.model.parameters()
                           if p.grad is not None])
        results.append((total, grads, metrics))
    (l1, g1, m1), (l4, g4, m4) = results
    assert abs(l1 - l4) < 1e-5
    torch.testing.assert_close(g1, g4, atol=1e-6, rtol=1e-4)
    assert m1.keys() == m4.keys() and "nll" in m1
    for key in m1:
        assert m1[key] == pytest.approx(m4[key], abs=1e-5), key


def test_a_few_steps_raise_the_margin(tmp_path, pairs_file, tiny_tokenizer):
    from posttrain.train.loop import train

    algo = make(tmp_path, pairs_file, tiny_tokenizer, learning_rate=3e-3, max_steps=6,
                lr_scheduler="constant", per_device_batch_size=2)
    train(algo)
    logged = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text()
              .splitlines()]
    assert logged[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    assert logged[-1]["rewards/margins"] > 0.2 and logged[-1]["rewards/accuracy"] == 1.0
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("row, message", [
    ({"prompt": "hi", "chosen": "hello"}, r"missing field\(s\) \['rejected'\]"),
    ({"prompt": "hi", "chosen": "same", "rejected": "same"}, "identical"),
    ({"prompt": "hi", "chosen": "  ", "rejected": "no"}, "`chosen` is empty"),
    ({"prompt": "hi", "chosen": "a", "rejected": "b", "margin": "big"}, "`margin` must be"),
])
def test_bad_rows_raise_clear_errors(tmp_path, tiny_tokenizer, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], row])
    with pytest.raises(DataError, match=message) as err:
        make(tmp_path, path, tiny_tokenizer)
    assert "bad.jsonl, line 2" in str(err.value)


def test_config_errors():
    with pytest.raises(ConfigError, match="use_lora=true"):
        load_config(DPOConfig, values={"train_data": "x.jsonl", "reference": "adapter"})
    with pytest.raises(ConfigError, match="one weight per loss_type"):
        load_config(DPOConfig, values={"train_data": "x.jsonl", "loss_type": ["sigmoid", "ipo"],
                                       "loss_weights": [1.0]})
    with pytest.raises(ConfigError, match="loss_type"):
        load_config(DPOConfig, values={"train_data": "x.jsonl", "loss_type": "dpo"})


def test_cli_help_config_and_runs(tmp_path, pairs_file, capsys):
    from posttrain.cli import main

    assert main(["dpo", "--help-config"]) == 0
    assert "reference (" in capsys.readouterr().out
    common = [f"train_data={pairs_file}", "max_steps=2", "per_device_batch_size=2",
              "progress=false", f"ref_cache_dir={tmp_path / 'cache'}"]
    assert main(["dpo", "model=random:tiny", f"output_dir={tmp_path / 'full'}",
                 "reference=precomputed", f"eval_data={pairs_file}", *common]) == 0
    assert "eval/rewards/accuracy" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    assert main(["dpo", "model=random:tiny", f"output_dir={tmp_path / 'lora'}",
                 "use_lora=true", "lora_r=4", *common]) == 0  # reference auto -> adapter
    assert (tmp_path / "lora" / "adapter_config.json").exists()
    assert main(["dpo", "model=random:tiny", "reference=adapter", *common]) == 2
    assert "use_lora=true" in capsys.readouterr().err
