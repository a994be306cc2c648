"""Worker for tests/test_distributed.py: run many short trainings in one multi-process launch.

    torchrun --standalone --nproc_per_node 2 tests/distributed_runs.py runs.json summary.json

``runs.json`` is a list of ``{"name", "algorithm", "values"}``; each is trained through the Python
API in turn, in the same process group (one launch instead of one per run). Process 0 writes
``summary.json``: per run, the steps that reached metrics.jsonl and the total steps expected.
A hang is caught by the test's timeout.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import torch

from posttrain.cli import TRAINERS
from posttrain.config import load_config
from posttrain.train.distributed import ranks
from posttrain.train.loop import train


def main(runs_file: str, summary_file: str) -> None:
    torch.set_num_threads(1)
    summary = {}
    for run in json.loads(Path(runs_file).read_text()):
        module_name, config_name, algorithm_name, _ = TRAINERS[run["algorithm"]]
        module = importlib.import_module(module_name)
        config = load_config(getattr(module, config_name), values=run["values"])
        algorithm = getattr(module, algorithm_name)(config)
        expected = algorithm.total_steps()
        train(algorithm)
        out = Path(config.output_dir)
        steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()
                 if "loss" in json.loads(line)]
        summary[run["name"]] = {"steps": steps, "expected": expected,
                                "saved": (out / "posttrain_config.yaml").is_file()}
    if ranks().is_main:
        Path(summary_file).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
