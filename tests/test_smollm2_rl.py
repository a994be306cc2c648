"""Slow tier: one or two real steps of the reward, GRPO and PPO recipes on SmolLM2-135M.

The recipes themselves (hyper-parameters, data, reward) are what runs, with overrides that only
shrink the run. SFT and DPO have their own slow tests (test_recipes.py, test_identity_pairs.py).
"""

from __future__ import annotations

import json

import pytest

from posttrain.cli import main

pytestmark = pytest.mark.slow


def run(command: str, recipe: str, tmp_path, *overrides: str) -> list[dict]:
    out = tmp_path / command
    code = main([command, "--config", recipe, f"output_dir={out}", "progress=false",
                 *overrides])
    assert code == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_recipe_steps(tmp_path):
    records = run("grpo", "recipes/smollm2-135m/grpo_arithmetic.yaml", tmp_path,
                  "max_steps=2", "prompts_per_step=2", "num_generations=4", "max_new_tokens=24",
                  "eval_max_samples=4", "eval_on_start=false", "save_steps=0")
    steps = [r for r in records if "rewards/math/mean" in r]
    assert len(steps) == 2 and all(0.0 <= r["rewards/math/mean"] <= 1.0 for r in steps)
    assert 0.0 <= records[-1]["eval/rewards/math/mean"] <= 1.0


def test_ppo_recipe_steps(tmp_path):
    records = run("ppo", "recipes/smollm2-135m/ppo_arithmetic.yaml", tmp_path,
                  "max_steps=2", "prompts_per_step=2", "max_new_tokens=24",
                  "eval_max_samples=4", "eval_on_start=false", "eval_steps=0")
    first = next(r for r in records if "value_loss" in r)
    assert first["value_loss"] >= 0 and "explained_variance" in first
    assert (tmp_path / "ppo" / "value_model" / "config.json").exists()


def test_reward_recipe_steps(tmp_path):
    records = run("reward", "recipes/smollm2-135m/reward.yaml", tmp_path,
                  "max_steps=2", "max_samples=16", "per_device_batch_size=4",
                  "gradient_accumulation_steps=1", "eval_steps=0")
    assert "loss" in records[0] and records[-1].get("eval/accuracy") is not None
