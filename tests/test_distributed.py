"""Several processes for real: ``torchrun`` / ``accelerate launch`` with 2 (and 3) CPU processes
(gloo) on the tiny random model, against one process doing the same work.

The contract (src/posttrain/train/distributed.py): effective batch = per_device_batch_size x
gradient_accumulation_steps x processes, so N processes with accumulation a take exactly the
steps of 1 process with accumulation N x a: the same logged losses and the same final weights.
Online RL rounds are world-size invariant by construction (prompts dealt out, rollouts gathered,
per-prompt seeds). Every launch has a timeout, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file

from posttrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 300  # seconds; a hang ends the launch and fails the test


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """SFT rows (15 and a ragged 5), preference pairs, prompts and a reward file."""
    folder = tmp_path_factory.mktemp("dist-data")
    sft = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                         {"role": "assistant", "content": f"The answer is {a + b}."}]}
           for a in range(5) for b in range(3)]
    write_jsonl(folder / "sft.jsonl", sft)
    write_jsonl(folder / "sft5.jsonl", sft[:5])
    write_jsonl(folder / "sft_eval.jsonl", sft[5:8])
    pairs = [{"prompt": f"What is {a} + {b}?", "chosen": f"It is {a + b}.",
              "rejected": f"It is {a + b + 1}."} for a in range(4) for b in range(3)]
    write_jsonl(folder / "pairs.jsonl", pairs)
    write_jsonl(folder / "pairs5.jsonl", pairs[:5])
    write_jsonl(folder / "pairs_eval.jsonl", pairs[5:8])
    prompts = [{"prompt": f"Say a number, please {i}", "answer": str(i)} for i in range(16)]
    write_jsonl(folder / "prompts.jsonl", prompts)
    write_jsonl(folder / "prompts_eval.jsonl", prompts[:3])
    (folder / "rw.py").write_text(
        "def length_mod(prompts, completions, completion_ids, **_):\n"
        "    return [float(sum(ids) % 7) for ids in completion_ids]\n")
    return folder


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT / "tests") + os.pathsep + out.get("PYTHONPATH", ""))
    return out


def launch(argv: list[str], cwd: Path, extra_env: dict[str, str] | None = None,
           expect: int = 0) -> subprocess.CompletedProcess:
    run = subprocess.run(argv, cwd=cwd, env={**env(), **(extra_env or {})},
                         capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    errors = "\n".join(line for line in run.stderr.splitlines() if "Error" in line)
    assert run.returncode == expect, f"exit {run.returncode}\n{run.stdout}\n{errors}\n{run.stderr[-3000:]}"
    return run


def torchrun(nproc: int, args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    cli = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "posttrain.cli"]
    return launch(cli + args, cwd, **kwargs)


def accelerate_launch(config: str, args: list[str], cwd: Path, **kwargs):
    cli = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate" / config), "--num_processes", "2",
           "--main_process_port", "0", "-m", "posttrain.cli"]
    return launch(cli + args, cwd, **kwargs)


def one_process(args: list[str], cwd: Path) -> None:
    here = Path.cwd()
    os.chdir(cwd)
    try:
        assert main(args) == 0
    finally:
        os.chdir(here)


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").open()) if "loss" in r]


def assert_same_weights(a: Path, b: Path, files=("model.safetensors",), atol=1e-5) -> None:
    for name in files:
        left, right = load_file(a / name), load_file(b / name)
        assert sorted(left) == sorted(right), name
        for key in left:
            gap = float((left[key] - right[key]).abs().max())
            assert gap <= atol, f"{name}: {key} differs by {gap}"


COMMON = ["model=random:tiny", "progress=false", "lr_scheduler=constant"]
# algorithm -> (arguments, accumulation for 2 processes, for 1 process, files compared)
CASES = {
    "sft": (["train_data=sft.jsonl", "per_device_batch_size=2", "max_steps=3",
             "learning_rate=1e-3"], 1, 2, ("model.safetensors",)),
    "dpo": (["train_data=pairs.jsonl", "per_device_batch_size=1", "max_steps=3",
             "learning_rate=1e-3", "sft_weight=0.5"], 2, 4, ("model.safetensors",)),
    "reward": (["train_data=pairs.jsonl", "per_device_batch_size=2", "max_steps=3",
                "learning_rate=1e-3"], 1, 2, ("model.safetensors",)),
    # RL: one round (its steps_per_round steps). Rounds sample with the same seeds however many
    # processes, but after an update the weights agree only up to the order of the gradient
    # sums (~1e-6), and on the tiny model's near-uniform distributions that can change a
    # sampled token in the next round; within a round the rollout is shared, so it is exact.
    "grpo": (["train_data=prompts.jsonl", "rewards=[rw.py:length_mod]", "prompts_per_step=3",
              "num_generations=4", "per_device_batch_size=3", "max_new_tokens=8",
              "max_steps=2", "learning_rate=1e-2", "beta=0.1", "num_iterations=2"],
             None, None, ("model.safetensors",)),
    "ppo": (["train_data=prompts.jsonl", "rewards=[rw.py:length_mod]", "prompts_per_step=3",
             "num_generations=2", "per_device_batch_size=2", "max_new_tokens=8", "max_steps=2",
             "learning_rate=1e-3", "ppo_epochs=2", "kl_stop=0.5"],
            None, None, ("model.safetensors", "value_model/model.safetensors")),
}


# Adam divides by sqrt(v) + eps, so for a weight whose gradient is near 0 the update moves by up
# to lr / eps per unit of gradient: with GRPO's lr 1e-2, a summation-order difference of 1e-11
# in such a gradient (2 processes vs 1) shows as ~1e-5 in the weight (seen on an AMD EPYC host:
# 2.7e-5, with the losses equal to 1e-5). 1e-4 is 1% of one step's update; a wrong gradient
# moves weights by the whole update.
WEIGHT_ATOL = {"grpo": 1e-4}


@pytest.mark.parametrize("algorithm", list(CASES))
def test_two_processes_equal_one_with_twice_the_accumulation(algorithm, data, tmp_path):
    args, accumulation_2, accumulation_1, files = CASES[algorithm]
    work = tmp_path / "work"
    shutil.copytree(data, work)
    two, one = work / "two", work / "one"
    acc2 = [f"gradient_accumulation_steps={accumulation_2}"] if accumulation_2 else []
    acc1 = [f"gradient_accumulation_steps={accumulation_1}"] if accumulation_1 else []
    run = torchrun(2, [algorithm, *COMMON, *args, *acc2, f"output_dir={two}"], work)
    one_process([algorithm, *COMMON, *args, *acc1, f"output_dir={one}"], work)
    assert run.stdout.count("model saved to") == 1  # one summary, not one per process
    assert "2 processes" in run.stderr
    assert len(losses(two)) == len(losses(one)) > 0
    assert losses(two) == pytest.approx(losses(one), rel=1e-5, abs=1e-6)  # the whole step's
    assert_same_weights(two, one, files, atol=WEIGHT_ATOL.get(algorithm, 1e-5))


def matrix_runs(out: Path, data: Path) -> list[dict]:
    """Ragged steps, fewer micro-batches or prompts than processes, uneven eval sets."""
    base = {"model": "random:tiny", "progress": False, "learning_rate": 1e-3}
    runs = []
    for micro in (1, 2, 3):
        for accumulation in (1, 2):
            runs.append({"name": f"sft-m{micro}-a{accumulation}", "algorithm": "sft", "values": {
                **base, "train_data": str(data / "sft5.jsonl"),
                "eval_data": str(data / "sft_eval.jsonl"), "per_device_batch_size": micro,
                "gradient_accumulation_steps": accumulation}})
    for micro, accumulation, reference in ((1, 1, "copy"), (2, 2, "copy"), (3, 1, "precomputed")):
        runs.append({"name": f"dpo-m{micro}-a{accumulation}", "algorithm": "dpo", "values": {
            **base, "train_data": str(data / "pairs5.jsonl"),
            "eval_data": str(data / "pairs_eval.jsonl"), "per_device_batch_size": micro,
            "gradient_accumulation_steps": accumulation, "reference": reference,
            "ref_cache_dir": str(out / "ref-cache")}})
    runs.append({"name": "reward-m2", "algorithm": "reward", "values": {
        **base, "train_data": str(data / "pairs5.jsonl"),
        "eval_data": str(data / "pairs_eval.jsonl"), "per_device_batch_size": 2}})
    rl = {**base, "train_data": str(data / "prompts.jsonl"),
          "eval_data": str(data / "prompts_eval.jsonl"), "eval_batch_size": 1,
          "rewards": [str(data / "rw.py") + ":length_mod"], "max_new_tokens": 4,
          "num_generations": 2, "max_steps": 2}
    for prompts, micro, minis in ((1, 1, 1), (3, 2, 2), (5, 4, 1)):
        runs.append({"name": f"grpo-p{prompts}-m{micro}-mb{minis}", "algorithm": "grpo",
                     "values": {**rl, "prompts_per_step": prompts, "per_device_batch_size": micro,
                                "mini_batches": minis, "beta": 0.1}})
    runs.append({"name": "ppo-p1", "algorithm": "ppo", "values": {
        **rl, "prompts_per_step": 1, "per_device_batch_size": 1, "ppo_epochs": 2}})
    for run in runs:
        run["values"]["output_dir"] = str(out / run["name"])
    return runs


@pytest.mark.parametrize("nproc", [2, 3])
def test_no_process_waits_forever(nproc, data, tmp_path):
    runs = matrix_runs(tmp_path, data)
    spec, summary = tmp_path / "runs.json", tmp_path / "summary.json"
    spec.write_text(json.dumps(runs))
    launch([sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", str(ROOT / "tests" / "distributed_runs.py"),
            str(spec), str(summary)], tmp_path)
    results = json.loads(summary.read_text())
    assert set(results) == {run["name"] for run in runs}
    for name, result in results.items():
        assert result["steps"] == list(range(1, result["expected"] + 1)), name
        assert result["saved"], name
    # the sft runs covered more processes than micro-batches (5 rows, 3 x 2 x nproc per step)
    assert results["sft-m3-a2"]["expected"] == 1


def test_checkpoints_resume_across_world_sizes(data, tmp_path):
    """2 processes -> 1 and 1 -> 2, each ending where an uninterrupted run ends; a resume that
    would change the effective batch is refused with the fix."""
    work = tmp_path / "work"
    shutil.copytree(data, work)
    args = [*COMMON, "train_data=sft.jsonl", "per_device_batch_size=2", "learning_rate=1e-3",
            "save_final_checkpoint=true"]
    one_process(["sft", *args, "gradient_accumulation_steps=2", "max_steps=4",
                 f"output_dir={work / 'whole'}"], work)
    # 2 -> 1
    torchrun(2, ["sft", *args, "max_steps=2", f"output_dir={work / 'a'}"], work)
    # (max_steps differs from the first part: allow_config_change)
    args_more = [*args, "max_steps=4", "allow_config_change=true"]
    refused = torchrun(1, ["sft", *args_more, f"output_dir={work / 'a'}", "--resume"],
                       work, expect=1)  # torchrun: a worker exited 2
    assert "examples per optimiser step" in refused.stderr and "double it" in refused.stderr
    one_process(["sft", *args_more, "gradient_accumulation_steps=2",
                 f"output_dir={work / 'a'}", "--resume"], work)
    # 1 -> 2
    one_process(["sft", *args, "gradient_accumulation_steps=2", "max_steps=2",
                 f"output_dir={work / 'b'}"], work)
    torchrun(2, ["sft", *args_more, f"output_dir={work / 'b'}", "--resume"], work)
    for resumed in ("a", "b"):
        assert losses(work / resumed) == pytest.approx(losses(work / "whole"), rel=1e-5)
        assert_same_weights(work / resumed, work / "whole")


def test_ddp_config_launches_two_cpu_processes(data, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(data, work)
    run = accelerate_launch("ddp.yaml", ["sft", *COMMON, "train_data=sft.jsonl",
                                         "per_device_batch_size=2", "max_steps=2",
                                         "output_dir=out"], work)
    assert "2 processes (DistributedType.MULTI_CPU)" in run.stderr
    assert run.stdout.count("model saved to") == 1


FSDP_CASES = {
    "sft": (CASES["sft"][0], ["gradient_accumulation_steps=2"], ("model.safetensors",)),
    "grpo": (CASES["grpo"][0], [], ("model.safetensors",)),
    "ppo": (CASES["ppo"][0], [], CASES["ppo"][3]),
    "dpo": (["train_data=pairs.jsonl", "per_device_batch_size=2", "max_steps=3",
             "learning_rate=1e-3", "use_lora=true", "lora_r=4", "lora_dropout=0",
             "reference=adapter"], ["gradient_accumulation_steps=2"],
            ("adapter_model.safetensors",)),
}


@pytest.mark.parametrize("algorithm", list(FSDP_CASES))
def test_fsdp2_on_cpu_matches_one_process_and_saves_a_plain_folder(algorithm, data, tmp_path):
    """accelerate's FSDP2 path, forced onto gloo: sharded training, generation with gathered
    weights (GRPO, PPO), the LoRA reference through the sharded model (DPO), and a full state
    dict saved as a plain Hugging Face folder (tied weights stay tied)."""
    args, one_extra, files = FSDP_CASES[algorithm]
    work = tmp_path / "work"
    shutil.copytree(data, work)
    run = accelerate_launch("fsdp.yaml", [algorithm, *COMMON, *args, "output_dir=sharded",
                                          "save_final_checkpoint=true"], work,
                            extra_env={"POSTTRAIN_FSDP_ON_CPU": "1"})
    assert "DistributedType.FSDP" in run.stderr
    one_process([algorithm, *COMMON, *args, *one_extra, f"output_dir={work / 'one'}"], work)
    # (GRPO's loss sits near 0 by construction: compared absolutely)
    assert losses(work / "sharded") == pytest.approx(losses(work / "one"), rel=1e-5, abs=1e-5)
    assert_same_weights(work / "sharded", work / "one", files,
                        atol=WEIGHT_ATOL.get(algorithm, 1e-5))
    if algorithm == "sft":  # a plain folder, and a sharded checkpoint resumes on 1 process
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(work / "sharded")
        one_process([algorithm, *COMMON, *args, *one_extra, "max_steps=4",
                     "allow_config_change=true", f"output_dir={work / 'sharded'}", "--resume"],
                    work)
        assert len(losses(work / "sharded")) == 4


def test_fsdp_on_cpu_without_the_flag_is_refused_before_loading(data, tmp_path):
    run = accelerate_launch("fsdp.yaml", ["sft", *COMMON, "train_data=sft.jsonl",
                                          "output_dir=out"], tmp_path, expect=1)
    assert "silently run plain DDP" in run.stderr
    assert not (tmp_path / "out").exists()


def test_deepspeed_without_cuda_is_refused(monkeypatch):
    from posttrain.errors import ConfigError
    from posttrain.train.sharding import check_launch

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="ZeRO-2/3 need CUDA"):
        check_launch()
