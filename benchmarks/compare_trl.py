"""posttrain vs TRL on identical work: paired throughput and peak-memory ratios.

    POSTTRAIN_TRL_PYTHON=/path/to/trl-venv/bin/python python benchmarks/compare_trl.py
    python benchmarks/compare_trl.py --trl-python ~/trl-venv/bin/python \\
        --models random:qwen2.5-0.5b-smallvocab --workloads sft dpo grpo --repeats 3
    python benchmarks/compare_trl.py --smoke          # random:tiny, a few steps (CI's check)

TRL runs in its own virtual environment (``python -m venv``; ``pip install torch==2.13.0
trl==1.16.0 datasets``), never as a dependency of posttrain; ``--trl-python`` or
``POSTTRAIN_TRL_PYTHON`` names its interpreter. For each model (``random:tiny``, the
Qwen2.5-0.5B shape with a 3,072-token vocabulary, the same shape with the real 151,936-token
tokenizer, SmolLM2-135M-Instruct) and workload:

- both sides load the same model folder (resolved once) and read the same JSON-lines file in
  file order (TRL's shuffling sampler is replaced by a sequential one), with the same
  hyper-parameters: fp32, AdamW (betas 0.9/0.999, eps 1e-8, no weight decay), constant LR, no
  warm-up, gradient clipping at 1.0, no gradient checkpointing, no padding-free/packing;
- the runs are interleaved A B A B (posttrain, TRL, posttrain, TRL, ...), each in a fresh
  process (its peak resident set is its own), with the machine's 1-minute load average noted;
- the trained-token counts of every step are compared (SFT: response tokens in the loss; DPO:
  chosen + rejected response tokens; GRPO: completion tokens, which depend on sampling and so
  are only reported); a mismatch is printed as such, never hidden;
- throughput = work per step / median steady step time (the first step, warm-up, excluded):
  SFT trained (response) tokens/s, DPO pairs/s, GRPO completions/s (generation included on both sides);
  ratios are paired (repeat r of posttrain over repeat r of TRL), then the median is taken;
- SFT and DPO print the largest per-step loss difference: both sides train the same tokens from
  the same weights, so step 1 agrees to float rounding and later steps stay close.

``--targets`` prints each ratio against the targets of issue 14 (SFT >= 1.4x, DPO >= 1.5x,
GRPO >= 2x, peak memory <= 0.8x). Results also go to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODELS = ["random:tiny", "random:qwen2.5-0.5b-smallvocab", "random:qwen2.5-0.5b",
          "smollm2-135m-instruct"]
WORKLOADS = ("sft", "dpo", "grpo")
TARGETS = {"sft": 1.4, "dpo": 1.5, "grpo": 2.0, "memory": 0.8}
WORDS = ("the cat sat on a mat while red dragon flew over quick brown fox jumps lazy dog answer "
         "question please thanks hello story time once upon there was Paris").split()


# --- the shared work ------------------------------------------------------------------------


def write_data(folder: Path, workload: str, rows: int, words: int, seed: int = 0) -> Path:
    """Conversational rows both libraries read the same way (TRL's prompt-completion format)."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    def user(k: int) -> list[dict]:
        return [{"role": "user", "content": text(k)}]

    def assistant(k: int) -> list[dict]:
        return [{"role": "assistant", "content": text(k)}]

    path = folder / f"{workload}.jsonl"
    with path.open("w") as handle:
        for _ in range(rows):
            if workload == "sft":
                row = {"prompt": user(words), "completion": assistant(words)}
            elif workload == "dpo":
                row = {"prompt": user(words), "chosen": assistant(words),
                       "rejected": assistant(words)}
            else:
                row = {"prompt": user(words)}
            handle.write(json.dumps(row) + "\n")
    return path


def workload_spec(workload: str, args: argparse.Namespace) -> dict:
    """Hyper-parameters of one workload (the same dict drives both sides)."""
    if workload == "sft":
        return {"batch_size": args.sft_batch, "steps": args.sft_steps, "max_length": args.seq_len,
                "learning_rate": 1e-5, "words": args.seq_len // 4}
    if workload == "dpo":
        return {"batch_size": args.dpo_batch, "steps": args.dpo_steps,
                "max_length": args.seq_len, "learning_rate": 1e-6, "beta": 0.1,
                "words": args.seq_len // 8}
    return {"batch_size": args.prompts, "steps": args.grpo_steps, "prompts_per_step": args.prompts,
            "num_generations": args.generations, "max_new_tokens": args.new_tokens,
            "beta": args.beta, "learning_rate": 1e-6, "words": 12}


def posttrain_config(spec: dict) -> tuple[dict, dict]:
    """posttrain's config (and trainer keyword arguments) for one workload's spec."""
    from trl_worker import length_reward

    workload = spec["workload"]
    config = {
        "model": spec["model"], "train_data": spec["data"], "output_dir": spec["output_dir"],
        "per_device_batch_size": spec["batch_size"], "max_steps": spec["steps"],
        "learning_rate": spec["learning_rate"], "lr_scheduler": "constant", "warmup_steps": 0,
        "weight_decay": 0.0, "max_grad_norm": 1.0, "gradient_checkpointing": False,
        "shuffle": False, "progress": False, "seed": spec["seed"], "logging_steps": 1,
        "dtype": "float32",
    }
    kwargs = {}
    if workload == "sft":
        config["max_length"] = spec["max_length"]
    elif workload == "dpo":
        config.update(max_length=spec["max_length"], beta=spec["beta"], loss_type="sigmoid",
                      reference="copy")
    else:
        config.update(prompts_per_step=spec["prompts_per_step"],
                      num_generations=spec["num_generations"],
                      per_device_batch_size=spec["prompts_per_step"] * spec["num_generations"],
                      max_new_tokens=spec["max_new_tokens"], beta=spec["beta"],
                      loss_type="grpo", scale_rewards="group", temperature=1.0, top_p=1.0,
                      top_k=0, num_iterations=1, mask_truncated_completions=False)
        kwargs["reward_functions"] = [length_reward]
    return config, kwargs


def posttrain_worker(spec: dict) -> dict:
    """The posttrain side: the same work through the public API."""
    import time

    import torch
    from trl_worker import Profiler

    import posttrain
    from common import peak_memory_mb
    from posttrain.data.tokenize import IGNORE_INDEX

    torch.set_num_threads(spec["threads"])
    workload = spec["workload"]
    config, kwargs = posttrain_config(spec)
    trainer = posttrain.trainer(workload, config, **kwargs)
    trainer.save = lambda *a, **k: None  # time training, not writing weights
    tokens: list[int] = []
    inputs: list[tuple[int, int]] = []
    plain_loss = trainer.loss

    def counting_loss(wrapped, batch, step_batch):
        if workload == "grpo":
            tokens.append(int(step_batch.totals["tokens"]))
        else:
            tokens.append(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()))
            inputs.append(batch["input_ids"].shape)  # [B, T] as computed (padding included)
        return plain_loss(wrapped, batch, step_batch)

    trainer.loss = counting_loss
    records: list[dict] = []
    profiler = Profiler(spec.get("profile"))

    class Record(posttrain.Callback):
        def on_step_end(self, step, metrics):
            records.append({**metrics, "wall": time.perf_counter()})
            profiler.after_step(step)

    trainer.train(callbacks=[Record()])
    profiler.finish()
    step_seconds = [r["time/train_s"] + (r["time/prepare_s"] if workload == "grpo" else 0.0)
                    for r in records]
    return {"step_seconds": step_seconds, "losses": [r["loss"] for r in records],
            "tokens": tokens, "peak_mb": peak_memory_mb(), "threads": torch.get_num_threads(),
            "step_flops": [model_flops(trainer.model, b, t) for b, t in inputs]}


def model_flops(model, batch: int, length: int) -> float:
    """Training FLOPs of one [batch, length] forward + backward: 6 N per token (N the matmul
    weights, the output layer included) + 12 L d T per token for attention (Kaplan et al. 2020,
    Table 1, times 3 for the backward)."""
    config = model.config
    head = model.get_output_embeddings().weight.numel()
    matmul = sum(p.numel() for name, p in model.named_parameters()
                 if p.ndim == 2 and "embed_tokens" not in name and "lm_head" not in name)
    per_token = 6 * (matmul + head) + 12 * config.num_hidden_layers * config.hidden_size * length
    return float(per_token * batch * length)


def matmul_peak_gflops(threads: int, seconds: float = 3.0) -> float:
    """This machine's fp32 matmul rate (4096^3, ``threads`` threads): the MFU denominator."""
    import time

    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    a @ b
    start, runs = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * 4096**3 * runs / (time.perf_counter() - start) / 1e9


# --- running and pairing ----------------------------------------------------------------------


def load_average() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def run_side(side: str, spec: dict, trl_python: str) -> dict | None:
    if side == "posttrain":
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    else:
        cmd = [trl_python, str(HERE / "trl_worker.py"), json.dumps(spec)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(spec["threads"]), "TRANSFORMERS_VERBOSITY": "error"}
    load = load_average()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"{side} {spec['workload']} {spec['model_name']}: failed\n{proc.stderr[-3000:]}",
              file=sys.stderr)
        return None
    result = json.loads(lines[-1][len("RESULT "):])
    result["load"] = load
    return result


def work_per_step(workload: str, spec: dict, result: dict) -> float:
    if workload == "sft":  # trained (response) tokens; equal on both sides, checked
        return statistics.mean(result["tokens"])
    if workload == "dpo":
        return spec["batch_size"]
    return spec["prompts_per_step"] * spec["num_generations"]


def throughput(workload: str, spec: dict, result: dict) -> float:
    """Work units per second over the steady steps (median step time, first step excluded)."""
    steady = result["step_seconds"][1:] or result["step_seconds"]
    return work_per_step(workload, spec, result) / statistics.median(steady)


def compare(model_name: str, model_dir: str, workload: str, args, folder: Path) -> dict | None:
    spec = {**workload_spec(workload, args), "workload": workload, "model": model_dir,
            "model_name": model_name, "threads": args.threads, "seed": 0}
    rows = spec["batch_size"] * (spec["steps"] + 1)
    spec["data"] = str(write_data(folder, workload, rows, spec.pop("words")))
    runs: dict[str, list[dict]] = {"posttrain": [], "trl": []}
    for repeat in range(args.repeats):
        for side in ("posttrain", "trl"):  # A B A B
            spec["output_dir"] = str(folder / f"{side}-{workload}-{repeat}")
            if args.profile:
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                spec["profile"] = str(Path(args.profile).resolve()
                                      / f"{model_name.replace(':', '_')}-{workload}-{side}.txt")
            result = run_side(side, spec, args.trl_python)
            if result is None:
                return None
            runs[side].append(result)
            print(f"  {model_name} {workload} {side} #{repeat + 1}: "
                  f"{throughput(workload, spec, result):.2f}/s, {result['peak_mb']:.0f} MB, "
                  f"load {result['load']:.2f}", file=sys.stderr, flush=True)
    speed = [throughput(workload, spec, a) / throughput(workload, spec, b)
             for a, b in zip(runs["posttrain"], runs["trl"])]
    memory = [a["peak_mb"] / b["peak_mb"] for a, b in zip(runs["posttrain"], runs["trl"])]
    ours, theirs = runs["posttrain"][0], runs["trl"][0]
    row = {
        "model": model_name, "workload": workload,
        "unit": {"sft": "trained tokens/s", "dpo": "pairs/s", "grpo": "completions/s"}[workload],
        "posttrain": round(statistics.median(throughput(workload, spec, r)
                                             for r in runs["posttrain"]), 3),
        "trl": round(statistics.median(throughput(workload, spec, r) for r in runs["trl"]), 3),
        "speed ratio": round(statistics.median(speed), 2),
        "peak MB": round(statistics.median(r["peak_mb"] for r in runs["posttrain"])),
        "trl peak MB": round(statistics.median(r["peak_mb"] for r in runs["trl"])),
        "memory ratio": round(statistics.median(memory), 2),
        "tokens": tokens_check(workload, ours["tokens"], theirs["tokens"], spec["batch_size"]),
        "max |loss diff|": loss_check(workload, ours["losses"], theirs["losses"]),
        "load": round(statistics.median(r["load"] for side in runs.values() for r in side), 2),
    }
    if workload == "sft" and args.peak_gflops:  # steady steps: FLOPs / seconds / peak
        mfu = [statistics.median(f / s for f, s in zip(r["step_flops"][1:], r["step_seconds"][1:]))
               / (args.peak_gflops * 1e9) for r in runs["posttrain"]]
        row["posttrain MFU"] = f"{statistics.median(mfu):.0%} of {args.peak_gflops:.0f} GFLOP/s"
    return row


def tokens_check(workload: str, ours: list[int], theirs: list[int], batch: int) -> str:
    if workload == "grpo":  # sampled: reported, not required to match
        return f"{sum(ours)} vs {sum(theirs)}"
    if ours == theirs:
        return "equal"
    responses = batch * (2 if workload == "dpo" else 1)
    if len(ours) == len(theirs) and all(b - a == responses for a, b in zip(ours, theirs)):
        # TRL's prompt-completion format also trains the template's newline after the
        # end-of-turn token (posttrain stops at the end-of-turn token): one more token per
        # response, nothing else differs (the Qwen template; SmolLM2's gives equal counts).
        return "TRL +1/response (newline after end-of-turn)"
    return f"DIFFER {ours} vs {theirs}"


def loss_check(workload: str, ours: list[float], theirs: list[float]) -> str:
    if workload == "grpo" or not ours or len(ours) != len(theirs):
        return "-"
    return f"{max(abs(a - b) for a, b in zip(ours, theirs)):.2e}"


def find_trl_python(given: str | None) -> str:
    path = given or os.environ.get("POSTTRAIN_TRL_PYTHON")
    if not path:
        raise SystemExit("compare_trl.py: say where TRL's interpreter is: --trl-python PATH or "
                         "POSTTRAIN_TRL_PYTHON=PATH (a venv with torch==2.13.0 trl==1.16.0 "
                         "datasets; see the docstring).")
    check = subprocess.run([path, "-c", "import trl, datasets; print(trl.__version__)"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"compare_trl.py: {path} cannot import trl and datasets:\n"
                         f"{check.stderr[-1000:]}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--trl-python", help="TRL's interpreter (or POSTTRAIN_TRL_PYTHON)")
    parser.add_argument("--models", nargs="+", default=["random:qwen2.5-0.5b-smallvocab"],
                        help=f"model aliases or folders (all four: {' '.join(MODELS)})")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs (A B A B ...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256, help="max_length of SFT and DPO")
    parser.add_argument("--sft-batch", type=int, default=2)
    parser.add_argument("--sft-steps", type=int, default=4)
    parser.add_argument("--dpo-batch", type=int, default=2)
    parser.add_argument("--dpo-steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4, help="GRPO prompts per step")
    parser.add_argument("--generations", type=int, default=4, help="GRPO completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--grpo-steps", type=int, default=3)
    parser.add_argument("--beta", type=float, default=0.04, help="GRPO KL coefficient")
    parser.add_argument("--smoke", action="store_true",
                        help="random:tiny, 2-3 steps, 1 repeat: checks that both sides run")
    parser.add_argument("--targets", action="store_true", help="print each ratio vs issue 14's")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--profile", metavar="DIR",
                        help="write torch.profiler tables of the steady steps of every run here "
                             "(slower runs: profile separately from timing)")
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(posttrain_worker(json.loads(args.worker))), flush=True)
        return
    if args.smoke:
        args.models, args.repeats, args.seq_len = ["random:tiny"], 1, 64
        args.sft_steps = args.dpo_steps = args.grpo_steps = 3
        args.new_tokens = 8
    args.trl_python = find_trl_python(args.trl_python)
    args.peak_gflops = matmul_peak_gflops(args.threads) if "sft" in args.workloads else 0.0
    if args.peak_gflops:
        print(f"fp32 matmul peak (4096^3, {args.threads} threads): {args.peak_gflops:.0f} "
              "GFLOP/s", file=sys.stderr)
    from common import print_table
    from posttrain.hub import resolve_model

    rows, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models:
            model_dir = resolve_model(model_name)  # built once, read by both sides
            for workload in args.workloads:
                row = compare(model_name, model_dir, workload, args, Path(tmp))
                if row is None:
                    failed += 1
                    continue
                rows.append(row)
    print(f"# posttrain / TRL, {args.threads} threads, medians of {args.repeats} paired runs")
    print_table(rows)
    if args.targets:
        for row in rows:
            target = TARGETS[row["workload"]]
            print(f"{row['model']} {row['workload']}: speed {row['speed ratio']}x "
                  f"(target >= {target}x: {'met' if row['speed ratio'] >= target else 'NOT met'})"
                  f", memory {row['memory ratio']}x (target <= {TARGETS['memory']}x: "
                  f"{'met' if row['memory ratio'] <= TARGETS['memory'] else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    bad_tokens = [r for r in rows if r["tokens"].startswith("DIFFER")]
    sys.exit(1 if failed or bad_tokens else 0)


if __name__ == "__main__":
    main()
