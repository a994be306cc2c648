"""Every recipe under recipes/ loads, points at data that exists and at models that resolve.

A recipe's algorithm comes from its file name: ``sft_*.yaml`` / ``sft.yaml`` -> ``posttrain sft``,
likewise dpo, grpo, ppo, rloo, and ``reward*.yaml`` -> ``posttrain reward``. A recipe whose
algorithm has no trainer registered in ``posttrain.cli.TRAINERS`` yet is an expected failure, so
the recipe can land before its trainer does.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from posttrain.cli import TRAINERS
from posttrain.config import load_config
from posttrain.hub import ALIASES

ROOT = Path(__file__).resolve().parents[1]
# training recipes; recipes/accelerate/ holds launcher configs (tests/test_distributed.py) and
# pipeline.yaml files chain recipes (checked by tests/test_pipeline.py with --dry-run)
RECIPES = sorted(p for p in ROOT.glob("recipes/**/*.yaml")
                 if "accelerate" not in p.parts and p.name != "pipeline.yaml")
ALGORITHMS = ("sft", "dpo", "reward", "grpo", "ppo", "rloo")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")


def algorithm_of(path: Path) -> str:
    stem = path.stem
    for name in ALGORITHMS:
        if stem == name or stem.startswith(name + "_") or (name == "reward" and
                                                           stem.startswith("reward")):
            return name
    raise AssertionError(
        f"{path.relative_to(ROOT)}: cannot tell the algorithm from the file name; name recipes "
        f"<algorithm>.yaml or <algorithm>_<what>.yaml with one of {', '.join(ALGORITHMS)}."
    )


def load_recipe(path: Path):
    algorithm = algorithm_of(path)
    if algorithm not in TRAINERS:
        pytest.xfail(f"no `{algorithm}` trainer registered in posttrain.cli.TRAINERS yet")
    module_name, config_name, _, _ = TRAINERS[algorithm]
    config_cls = getattr(importlib.import_module(module_name), config_name)
    return load_config(config_cls, path)


def test_there_are_recipes():
    assert any(p.parent.name == "smollm2-135m" for p in RECIPES), RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_loads_and_its_files_and_models_exist(path: Path):
    config = load_recipe(path)
    values = dataclasses.asdict(config)
    where = path.relative_to(ROOT)
    for key, value in values.items():
        texts = value if isinstance(value, list) else [value]
        for text in texts:
            if not isinstance(text, str) or text.startswith("hf:"):
                continue
            file_part = text.split(":", 1)[0] if ".py:" in text else text  # reward functions
            if file_part.endswith(DATA_SUFFIXES + (".py",)):
                assert (ROOT / file_part).is_file(), f"{where}: {key}={text!r} does not exist"
        is_model_key = key in ("model", "tokenizer") or key.endswith("_model")
        if is_model_key and isinstance(value, str) and value:
            assert value in ALIASES or HUB_ID.match(value) or (ROOT / value).is_dir(), (
                f"{where}: {key}={value!r} is neither a model alias ({', '.join(ALIASES)}), "
                "a hub id (owner/name) nor a folder"
            )


@pytest.mark.slow
def test_smollm2_sft_recipe_two_steps_then_evaluate(tmp_path):
    """The first recipe of the README really trains, saves, reloads and answers."""
    from posttrain.algorithms.sft import SFT, SFTConfig
    from posttrain.evaluation import evaluate_arithmetic
    from posttrain.models import load_tokenizer, load_trained
    from posttrain.tasks import get_task
    from posttrain.train.loop import train

    out = tmp_path / "sft"
    recipe = ROOT / "recipes/smollm2-135m/sft_arithmetic.yaml"
    config = load_config(SFTConfig, recipe, [
        "max_steps=2", "max_samples=8", "per_device_batch_size=2", "gradient_accumulation_steps=2",
        "eval_data=null", "progress=false", f"output_dir={out}",
        f"train_data={ROOT / 'recipes/data/arithmetic-sft/train.jsonl'}",
    ])
    metrics = train(SFT(config))
    assert metrics["loss"] > 0
    assert (out / "model.safetensors").is_file()
    model, tokenizer = load_trained(out), load_tokenizer(str(out))
    rows = get_task("arithmetic").test()[:4]
    result = evaluate_arithmetic(model, tokenizer, rows, batch_size=4, max_new_tokens=48)
    assert result["n"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    assert all(r["completion"] for r in result["records"])  # a real model says something
