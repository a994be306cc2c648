"""Smoke tests of the RL benchmarks: each one's child entry point (``worker``) runs in-process on
``random:tiny`` for a round or two with tiny lengths, and its printed table has the expected
columns. Numbers are not checked: on random weights they only show that the plumbing works."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = {"model": "random:tiny", "prompts_per_step": 2, "num_generations": 2,
        "max_new_tokens": 4, "threads": 1}


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def grpo_bench():
    return load_benchmark("grpo")


@pytest.fixture(scope="module")
def compare_bench():
    return load_benchmark("rl_compare")


def header_columns(text: str, first_column: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(first_column))
    return [c.strip() for c in line.split(" | ")]


def test_grpo_benchmark_child_and_table(grpo_bench, capsys):
    from posttrain.train import loop

    checkpoint = loop._checkpoint
    result = grpo_bench.worker({**TINY, "steps": 1, "micro_batch": 0, "lora": False})
    assert loop._checkpoint is checkpoint  # the benchmark's no-checkpoint patch is undone
    assert result["timed_steps"] == 1 and result["completions"] == 4
    assert result["step_s"] > 0 and result["peak_mb"] > 0
    grpo_bench.print_report([result])
    out = capsys.readouterr().out
    assert header_columns(out, "model") == [
        "model", "lora", "compl x max tok", "compl/s", "gen tok/s", "s/step",
        "gen/rew/score/train/other s", "split %", "mean len", "trunc %", "peak MB"]
    assert "random:tiny" in out and "rarely sample EOS" in out


def test_rl_compare_children_and_table(compare_bench, capsys):
    spec = {**TINY, "seed": 0, "rounds": 1, "minutes": None, "eval_samples": 2,
            "eval_every": 1, "set": []}
    results, configs = [], {}
    for name in ("grpo", "rloo", "ppo"):
        configs[name] = compare_bench.build_config(name, spec, "unused")
        result = compare_bench.worker({**spec, "algorithm": name})
        assert result["rounds"] == 1
        assert result["steps"] == result["steps_per_round"] == 1  # each recipe: 1 step per round
        assert [p[2] for p in result["points"]] == [0, result["steps"]]  # start and end evals
        results.append(result)
    assert configs["rloo"].advantage_estimator == "rloo"
    compare_bench.print_report(results, configs, spec)
    out = capsys.readouterr().out
    assert header_columns(out, "algorithm") == [
        "algorithm", "rounds", "steps", "train s", "eval acc start -> end", "best", "peak MB",
        "s/step", "s/round"]
    assert "kl_estimator: grpo=k3, rloo=k3, ppo=k3" not in out  # only differences are listed
    assert "advantage_estimator: grpo=grpo, rloo=rloo, ppo=gae" in out
    assert "accuracy vs training seconds" in out


def test_rl_compare_wall_clock_budget_stops_at_a_round_boundary(compare_bench):
    spec = {**TINY, "algorithm": "grpo", "seed": 0, "rounds": None, "minutes": 1e-5,
            "eval_samples": 1, "eval_every": 100, "set": ["learning_rate=0.0"]}
    result = compare_bench.worker(spec)
    assert result["rounds"] == 1  # any round outlasts 0.6 ms: stop before the second rollout
    assert [p[2] for p in result["points"]] == [0, 1]  # and the final eval still runs


def test_grpo_benchmark_command_line_runs_a_child_process(grpo_bench, capsys):
    code = grpo_bench.main(["--models", "random:tiny", "--steps", "1", "--prompts-per-step", "1",
                            "--num-generations", "2", "--max-new-tokens", "4", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert header_columns(out, "model")[:3] == ["model", "lora", "compl x max tok"]
    assert "random:tiny | False | 2 x 4" in out


def test_rl_compare_command_line_runs_a_child_process(compare_bench, capsys, tmp_path):
    plot = tmp_path / "curve.png"
    code = compare_bench.main(["--model", "random:tiny", "--algorithms", "ppo", "--steps", "1",
                               "--eval-samples", "1", "--prompts-per-step", "1",
                               "--num-generations", "2", "--max-new-tokens", "4",
                               "--threads", "1", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split(" | ")[0].strip() for line in out.splitlines() if " | " in line]
    assert rows == ["algorithm", "ppo"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.stat().st_size > 0


@pytest.mark.parametrize("kind", ["sft", "dpo", "grpo:hf"])
def test_gpu_check_workloads_run_on_cpu(kind, tmp_path):
    """The GPU check's workloads, at dry-run size on random:tiny (the paged backend's own
    tests live in test_rollout_backends.py)."""
    from posttrain.train import loop

    gpu_check = load_benchmark("gpu_check")
    checkpoint = loop._checkpoint
    result = gpu_check.run(kind, "dry", tmp_path)
    assert loop._checkpoint is checkpoint
    assert result["steps"] >= 1 and result["s/step"] > 0 and result["peak GB"] > 0
    key = {"sft": "tokens/s", "dpo": "pairs/s", "grpo:hf": "completions/s"}[kind]
    assert result[key] > 0
    if kind == "sft":
        assert result["TFLOP/s"] > 0 and result["MFU %"] == "n/a"  # no GPU peak on CPU


# --- compare_trl.py: the posttrain side and the checks (TRL itself lives in its own venv) -----


@pytest.fixture(scope="module")
def trl_bench():
    return load_benchmark("compare_trl")


@pytest.mark.parametrize("workload", ["sft", "dpo", "grpo"])
def test_compare_trl_posttrain_worker_counts_what_it_trains(trl_bench, workload, tmp_path):
    import argparse
    import json

    from posttrain.hub import resolve_model

    args = argparse.Namespace(sft_batch=2, sft_steps=3, dpo_batch=2, dpo_steps=2, seq_len=48,
                              prompts=2, generations=2, new_tokens=4, grpo_steps=2, beta=0.04)
    spec = {**trl_bench.workload_spec(workload, args), "workload": workload, "threads": 1,
            "model": resolve_model("random:tiny"), "model_name": "random:tiny", "seed": 0,
            "output_dir": str(tmp_path / "out")}
    rows = spec["batch_size"] * (spec["steps"] + 1)
    spec["data"] = str(trl_bench.write_data(tmp_path, workload, rows, spec.pop("words")))
    result = trl_bench.posttrain_worker(spec)
    assert len(result["step_seconds"]) == len(result["losses"]) == spec["steps"]
    assert len(result["tokens"]) == spec["steps"] and min(result["tokens"]) > 0
    if workload == "sft":  # the response tokens of the file's first rows, counted independently
        from transformers import AutoTokenizer

        from posttrain.data.formats import to_sft_example
        from posttrain.data.tokenize import IGNORE_INDEX, tokenize_sft

        tokenizer = AutoTokenizer.from_pretrained(spec["model"])
        first = [json.loads(x) for x in Path(spec["data"]).read_text().splitlines()[:2]]
        labels = [tokenize_sft(tokenizer, to_sft_example(r, "row"), 48).labels for r in first]
        assert result["tokens"][0] == sum(int(t != IGNORE_INDEX) for x in labels for t in x[1:])
    assert trl_bench.throughput(workload, spec, result) > 0


def test_compare_trl_checks_say_what_differs(trl_bench):
    assert trl_bench.tokens_check("sft", [5, 6], [5, 6], 2) == "equal"
    assert trl_bench.tokens_check("dpo", [5, 6], [9, 10], 2).startswith("TRL +1/response")
    assert trl_bench.tokens_check("sft", [5, 6], [7, 8], 2).startswith("TRL +1/response")
    assert trl_bench.tokens_check("sft", [5, 6], [6, 7], 2).startswith("DIFFER")
    assert trl_bench.tokens_check("grpo", [5, 6], [7, 8], 2) == "11 vs 15"
    assert trl_bench.loss_check("sft", [1.0, 2.0], [1.5, 2.0]) == "5.00e-01"
    assert trl_bench.loss_check("grpo", [1.0], [1.0]) == "-"
    with pytest.raises(SystemExit, match="cannot import trl"):
        trl_bench.find_trl_python(__import__("sys").executable)  # this venv has no TRL


def test_logprob_memory_command_runs_every_mode():
    """Through its command line, each mode in its own process as in a real run."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(BENCHMARKS / "logprob_memory.py"), "--tokens", "16",
                          "--vocab", "512", "--chunk-rows", "4"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("full", "chunked"))]
    assert [r[0].strip() for r in rows] == ["full", "chunked", "chunked"]
    assert [r[1].strip() for r in rows] == ["-", "131072", "4"]  # default, then --chunk-rows
