"""Reward-model training (posttrain.algorithms.reward): learning a separable toy task, the
last-real-token pooling (also with pad == eos), agreement with transformers' own pooling,
save/reload, LoRA with a trainable head, margins, and the reward/score CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import write_jsonl

from posttrain.algorithms.pairs import collate_pairs
from posttrain.algorithms.reward import (
    LastTokenScores,
    RewardConfig,
    RewardModelTrainer,
    load_trained_reward_model,
)
from posttrain.config import load_config
from posttrain.data.tokenize import render
from posttrain.tiny import build_tiny_model, build_tiny_tokenizer


def toy_pairs(numbers: range) -> list[dict]:
    """chosen: a sum; rejected: a refusal (separable by content alone)."""
    return [{"prompt": f"What is {a} + {a + 1}?", "chosen": f"The answer is {2 * a + 1}.",
             "rejected": "I do not know, sorry."} for a in numbers]


def seq_cls_model(tokenizer, seed: int = 0):
    """The tiny Qwen2 backbone with a 1-output score head (random)."""
    from transformers import Qwen2ForSequenceClassification

    config = build_tiny_model(tokenizer, seed=seed).config
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    return Qwen2ForSequenceClassification(config).eval()


def batch_of(tokenizer, conversations: list[list[dict]], strip_newline: bool = False):
    """Right-padded input_ids / attention_mask; optionally drop the template's final newline so
    each sequence ends with eos."""
    ids = []
    for messages in conversations:
        text = render(tokenizer, messages)
        ids.append(tokenizer(text.rstrip("\n") if strip_newline else text,
                             add_special_tokens=False)["input_ids"])
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
    return input_ids, mask


SHORT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
LONG = [{"role": "user", "content": "Tell me a story about a dragon."},
        {"role": "assistant", "content": "Once upon a time there was a red dragon."}]


def test_learns_a_separable_task_and_reloads(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from posttrain.train.loop import train

    train_file = write_jsonl(tmp_path / "train.jsonl", toy_pairs(range(0, 12)))
    eval_file = write_jsonl(tmp_path / "eval.jsonl", toy_pairs(range(13, 19)))
    config = load_config(RewardConfig, values={
        "model": str(tiny_model_dir), "train_data": str(train_file), "eval_data": str(eval_file),
        "output_dir": str(tmp_path / "rm"), "per_device_batch_size": 4, "learning_rate": 2e-3,
        "max_steps": 9, "lr_scheduler": "constant", "eval_steps": 100, "progress": False})
    trainer = RewardModelTrainer(config)
    trainer.attach(None, type("A", (), {"device": torch.device("cpu")})())
    before = trainer.evaluate(trainer.wrap(trainer.model))
    metrics = train(trainer)
    logged = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().split("\n")
              if x and "loss" in json.loads(x)]  # training steps, not the final eval line
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert metrics["eval/loss"] < before["loss"]
    assert metrics["eval/accuracy"] > 0.75  # held-out pairs; chance is 0.5
    assert metrics["eval/margin"] > before["margin"]
    assert {"eval/margin", "eval/rewards/chosen_std", "rewards/rejected_mean"} <= metrics.keys()

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    tokenizer = trainer.tokenizer
    input_ids, mask = batch_of(tokenizer, [SHORT, LONG])  # pad != eos here
    with torch.no_grad():
        ours = LastTokenScores(trainer.model.eval())(input_ids, mask)
        theirs = reloaded(input_ids=input_ids, attention_mask=mask).logits.squeeze(-1)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    from posttrain.rewards.reward_model import RewardModelScorer  # what RL and `score` use

    scorer = RewardModelScorer(str(tmp_path / "rm"), batch_size=1)
    as_reward = scorer.score([SHORT[:1], LONG[:1]], [SHORT[1]["content"], LONG[1]["content"]])
    assert as_reward == pytest.approx(ours.tolist(), abs=1e-5)


def test_pooling_matches_transformers_when_pad_differs_from_eos(tiny_tokenizer):
    model = seq_cls_model(tiny_tokenizer)
    input_ids, mask = batch_of(tiny_tokenizer, [SHORT, LONG])
    assert (mask == 0).any()  # the short row is padded
    with torch.no_grad():
        theirs = model(input_ids=input_ids, attention_mask=mask).logits.squeeze(-1)
        ours = LastTokenScores(model)(input_ids, mask)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_last_real_token_score_ignores_padding_also_when_pad_is_eos():
    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    model = seq_cls_model(tokenizer)
    scorer = LastTokenScores(model)
    with torch.no_grad():
        for strip in (False, True):  # True: sequences end with eos (== pad)
            alone = scorer(*batch_of(tokenizer, [SHORT], strip))
            padded = scorer(*batch_of(tokenizer, [SHORT, LONG, LONG], strip))
            torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=0)
        # The caveat documented in reward.py: transformers' own pooling skips a final eos when
        # pad == eos (it takes the rightmost non-pad token), so it scores a different token.
        input_ids, mask = batch_of(tokenizer, [SHORT], strip_newline=True)
        hf = model(input_ids=input_ids, attention_mask=mask).logits.squeeze(-1)
    assert not torch.allclose(hf, alone, atol=1e-4)


def test_margins_and_centring_enter_the_loss(tmp_path, tiny_tokenizer):
    rows = toy_pairs(range(2))
    rows[0]["margin"] = 2.0
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    for use_margins in (True, False):
        config = load_config(RewardConfig, values={
            "train_data": str(path), "output_dir": str(tmp_path), "use_margins": use_margins,
            "center_rewards_coefficient": 0.01})
        trainer = RewardModelTrainer(config, seq_cls_model(tiny_tokenizer), tiny_tokenizer)
        batch = collate_pairs(trainer.train_pairs, trainer.pad_id)
        assert batch["margin"].tolist() == [2.0, 0.0]
        with torch.no_grad():
            losses, _ = trainer.pair_losses(trainer.wrap(trainer.model), batch)
            scores = trainer.wrap(trainer.model)(batch["input_ids"], batch["attention_mask"])
        c, r = scores[:2], scores[2:]
        m = batch["margin"] if use_margins else 0.0
        expected = -F.logsigmoid(c - r - m) + 0.01 * (c + r) ** 2
        torch.testing.assert_close(losses, expected, atol=1e-6, rtol=0)


def test_lora_trains_the_score_head_and_merges(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from posttrain.train.loop import train

    path = write_jsonl(tmp_path / "t.jsonl", toy_pairs(range(4)))
    config = load_config(RewardConfig, values={
        "model": str(tiny_model_dir), "train_data": str(path), "output_dir": str(tmp_path / "o"),
        "use_lora": True, "lora_r": 4, "merge_lora": True, "max_steps": 2,
        "learning_rate": 1e-2, "per_device_batch_size": 4, "progress": False})
    trainer = RewardModelTrainer(config)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and any("lora_A" in n for n in trainable)
    head = [p for n, p in trainer.model.named_parameters() if "score" in n and p.requires_grad]
    start = head[0].detach().clone()
    train(trainer)
    assert not torch.equal(head[0].detach(), start)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "o" / "merged").eval()
    input_ids, mask = batch_of(trainer.tokenizer, [SHORT, LONG])
    with torch.no_grad():
        ours = LastTokenScores(trainer.model.eval())(input_ids, mask)
        theirs = merged(input_ids=input_ids, attention_mask=mask).logits.squeeze(-1)
        adapter = load_trained_reward_model(str(tmp_path / "o"))  # base + adapter + head
        from_adapter = LastTokenScores(adapter)(input_ids, mask)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    torch.testing.assert_close(from_adapter, ours, atol=1e-4, rtol=0)


def test_cli_reward_and_score(tmp_path, capsys):
    from posttrain.cli import main

    kinds = ["a", "a", "b", "b"]
    pairs = write_jsonl(tmp_path / "pairs.jsonl",
                        [{**row, "kind": k} for row, k in zip(toy_pairs(range(4)), kinds)])
    out = tmp_path / "rm"
    assert main(["reward", "--help-config"]) == 0
    assert "center_rewards_coefficient" in capsys.readouterr().out
    assert main(["reward", "model=random:tiny", f"train_data={pairs}", f"output_dir={out}",
                 "max_steps=2", "per_device_batch_size=2", "progress=false"]) == 0
    capsys.readouterr()
    assert main(["score", "--model", str(out), "--data", str(pairs),
                 "--output", str(tmp_path / "s.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["rows"] == 4 and 0.0 <= summary["pair_accuracy"] <= 1.0
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert {"chosen_score", "rejected_score"} <= rows[0].keys()
    for kind in "ab":  # per-kind accuracy agrees with the written scores
        right = [r["chosen_score"] > r["rejected_score"] for r in rows if r["kind"] == kind]
        assert summary[f"pair_accuracy/{kind}"] == pytest.approx(sum(right) / len(right))
    completions = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "hi", "completion": "hello"}])
    assert main(["score", "--model", str(out), "--data", str(completions)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["rows"] == 1
    mixed = write_jsonl(tmp_path / "x.jsonl", [*toy_pairs(range(1)), {"prompt": "a",
                                                                      "completion": "b"}])
    assert main(["score", "--model", str(out), "--data", str(mixed)]) == 2
    assert "mixes preference rows" in capsys.readouterr().err


def test_console_line_shows_eval_metrics(tmp_path, capsys):
    """An eval row prints the eval/ versions of the algorithm's console keys (it printed
    `step 29: ` with nothing after it before)."""
    from posttrain.train.logging import MetricsLogger

    logger = MetricsLogger(tmp_path, total_steps=2, report_to=[], run_name="t", config={},
                           show_progress=False, console_keys=("loss", "accuracy"))
    logger.log(2, {"eval/loss": 0.25, "eval/accuracy": 0.75, "eval/margin": 1.0})
    out = capsys.readouterr().err  # rich console on stderr
    assert "eval/loss=0.2500" in out and "eval/accuracy=0.7500" in out
    assert "margin" not in out
