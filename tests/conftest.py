"""Shared fixtures. Everything is offline: HF_HUB_OFFLINE=1 makes any accidental hub access
fail fast, and the model cache lives in a per-session temporary folder unless POSTTRAIN_CACHE
is already set (CI sets it so the converted SmolLM2 model is built once)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
# Tiny models run fastest on one thread (thread start-up costs more than their matmuls), and
# a busy 2-core machine thrashes with more threads than cores. POSTTRAIN_TEST_THREADS overrides.
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("POSTTRAIN_TEST_THREADS", "1")))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    if "POSTTRAIN_CACHE" not in os.environ:
        os.environ["POSTTRAIN_CACHE"] = str(tmp_path_factory.mktemp("posttrain-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from posttrain.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    from posttrain.tiny import build_tiny_model

    return build_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny model folder (tokenizer + weights), for CLI and from_pretrained paths."""
    from posttrain.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny-model"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ARITHMETIC_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4), (6, 1), (8, 3)]


@pytest.fixture
def memorise_data(tmp_path) -> Path:
    rows = [
        {"messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"The answer is {a + b}."},
        ]}
        for a, b in ARITHMETIC_PAIRS
    ]
    return write_jsonl(tmp_path / "train.jsonl", rows)


def stat_mean(statistic) -> float:
    """The mean of a ``train.metrics.stat`` statistic [sum, sum of squares, count]."""
    return float(statistic[0] / statistic[2])
