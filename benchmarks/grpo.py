"""GRPO throughput, time split and peak memory on a fixed arithmetic workload.

    python benchmarks/grpo.py        # random:tiny, smollm2-135m-instruct, Qwen2.5-0.5B's shape
    python benchmarks/grpo.py --models random:tiny --steps 2 --max-new-tokens 16 --threads 1

The workload is ``recipes/smollm2-135m/grpo_arithmetic.yaml`` (math reward, beta 0, one optimiser
step per round) with the model and the round's shape from the flags, prompts from
``recipes/data/arithmetic/train.jsonl`` in a fixed order (seed 0), no evaluation and no
checkpoints. ``skip_zero_std_groups`` is turned off, so every round trains all its completions
whatever the rewards were: the work per step depends on the sampled lengths only.

Each model runs in its own process (so peak memory is that run's). Numbers come from the loop's
own per-step timings in metrics.jsonl, skipping the first (warm-up) step:

- compl/s: completions per step / mean step time (step = prepare + train; prepare = rollout,
  rewards and scoring, done lazily when the loop asks for the next step batch);
- gen tok/s: generated tokens / generation seconds (the rollout alone);
- s/step split: generation / reward / scoring / training / other seconds per step (other =
  prompt encoding and micro-batch building); split %: the same as shares of the step time.
  Scoring is ~0 here: with one optimiser step per round and beta 0 no old or reference
  log-probs are needed;
- peak MB: peak GPU memory allocated on CUDA, else the process's peak resident set (the
  math reward's helper process is not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import peak_memory_mb, run_workers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2-135m" / "grpo_arithmetic.yaml"
TRAIN_DATA = ROOT / "recipes" / "data" / "arithmetic" / "train.jsonl"
DEFAULT_MODELS = ["random:tiny", "smollm2-135m-instruct", "random:qwen2.5-0.5b-smallvocab"]
RANDOM_NOTE = (
    "Random-weight models (random:*) rarely sample EOS, so their completions run to "
    "max_new_tokens: a trained model stops earlier, and its per-step cost follows its own "
    "lengths."
)


@contextlib.contextmanager
def no_checkpoints():
    """The loop always writes a final checkpoint (weights + optimiser state: ~6 GB for a 0.5B
    full fine-tune); a benchmark times training, not writing, so skip it while inside."""
    from posttrain.train import loop

    saved = loop._checkpoint
    loop._checkpoint = lambda *args, **kwargs: None
    try:
        yield
    finally:
        loop._checkpoint = saved


def read_metrics(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def worker(spec: dict) -> dict:
    """One configuration (the child process's job): train steps + 1 GRPO steps, summarise."""
    import torch

    from posttrain.algorithms.grpo import GRPO, GRPOConfig
    from posttrain.config import load_config
    from posttrain.train.loop import train

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    completions = spec["prompts_per_step"] * spec["num_generations"]
    with tempfile.TemporaryDirectory(prefix="posttrain-bench-grpo-") as tmp:
        config = load_config(GRPOConfig, RECIPE, values={
            "model": spec["model"], "train_data": str(TRAIN_DATA), "output_dir": f"{tmp}/out",
            "eval_data": None, "eval_on_start": False, "eval_steps": 0, "save_steps": 0,
            "prompts_per_step": spec["prompts_per_step"],
            "num_generations": spec["num_generations"],
            "max_new_tokens": spec["max_new_tokens"],
            "per_device_batch_size": spec.get("micro_batch") or completions,
            "max_steps": spec["steps"] + 1, "seed": 0, "skip_zero_std_groups": False,
            "use_lora": spec.get("lora", False), "dtype": spec.get("dtype", "auto"),
            "logging_steps": 1, "progress": False,
        })
        algorithm = GRPO(config)
        algorithm.save = lambda output_dir, state_dicts=None: None  # time training, not writing weights
        dtype = str(next(algorithm.model.parameters()).dtype).removeprefix("torch.")
        with no_checkpoints():
            train(algorithm)
        records = read_metrics(config.output_dir)
    timed = [r for r in records if r["step"] > 1 and "time/train_s" in r] or records[-1:]
    steps = len(timed)

    def per_step(key: str) -> float:
        return sum(r.get(key, 0.0) for r in timed) / steps

    gen, reward, scoring = (per_step(f"time/{k}_s") for k in ("generation", "reward", "scoring"))
    train_s, prepare = per_step("time/train_s"), per_step("time/prepare_s")
    step_s = prepare + train_s
    other = max(0.0, prepare - gen - reward - scoring)
    tokens = per_step("completion_length") * completions  # generated tokens per step
    return {
        "model": spec["model"], "lora": config.use_lora, "dtype": dtype,
        "completions": completions, "max_new_tokens": config.max_new_tokens,
        "micro_batch": config.per_device_batch_size, "timed_steps": steps,
        "step_s": step_s, "split_s": [gen, reward, scoring, train_s, other],
        "completions_per_s": completions / step_s if step_s else float("nan"),
        "gen_tokens_per_s": tokens / gen if gen else float("nan"),
        "completion_length": per_step("completion_length"),
        "frac_truncated": per_step("frac_truncated"),
        "reward_mean": per_step("rewards/total/mean"),
        "peak_mb": peak_memory_mb(),
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def table_rows(results: list[dict]) -> list[dict]:
    """One printed row per configuration (columns are checked by tests/test_benchmarks.py)."""
    rows = []
    for r in results:
        split = r["split_s"]
        shares = [100 * s / r["step_s"] if r["step_s"] else 0.0 for s in split]
        rows.append({
            "model": r["model"],
            "lora": r["lora"],
            "compl x max tok": f"{r['completions']} x {r['max_new_tokens']}",
            "compl/s": f"{r['completions_per_s']:.2f}",
            "gen tok/s": f"{r['gen_tokens_per_s']:.1f}",
            "s/step": f"{r['step_s']:.2f}",
            "gen/rew/score/train/other s": "/".join(f"{s:.3f}" for s in split),
            "split %": "/".join(f"{p:.0f}" for p in shares),
            "mean len": f"{r['completion_length']:.1f}",
            "trunc %": f"{100 * r['frac_truncated']:.0f}",
            "peak MB": f"{r['peak_mb']:.0f}",
        })
    return rows


def print_report(results: list[dict], file=None) -> None:
    from common import print_table

    file = file or sys.stdout  # looked up per call (pytest's capsys swaps sys.stdout)
    print_table(table_rows(results), file=file)
    if results:
        r = results[0]
        print(f"\n{r['timed_steps']} timed steps after 1 warm-up; device {r['device']}, "
              f"{r['threads']} torch threads, micro-batch {r['micro_batch']}, "
              f"dtype {r['dtype']}. Split: generation/reward/scoring/training/other.", file=file)
    if any(r["model"].startswith("random:") for r in results):
        print(RANDOM_NOTE + " (Hence their trunc % near 100.)", file=file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                        help="aliases, folders or hub ids")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after 1 warm-up)")
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=8,
                        help="completions per forward/backward (0 = the whole round)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # child process: one configuration
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    specs = [(model, {"model": model, "steps": args.steps,
                      "prompts_per_step": args.prompts_per_step,
                      "num_generations": args.num_generations,
                      "max_new_tokens": args.max_new_tokens, "micro_batch": args.micro_batch,
                      "threads": args.threads, "dtype": args.dtype, "lora": args.lora})
             for model in args.models]
    results, failed = run_workers(__file__, specs, env)
    sys.stderr.flush()
    print_report(results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
