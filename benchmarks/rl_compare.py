"""GRPO vs RLOO vs PPO on one task, one base model, one seed and one budget.

    python benchmarks/rl_compare.py                              # SmolLM2-135M, 20 rounds each
    python benchmarks/rl_compare.py --minutes 15 --plot rl.png   # 15 training minutes each
    python benchmarks/rl_compare.py --model random:tiny --steps 2 --eval-samples 4 \\
        --eval-every 1 --max-new-tokens 8 --threads 1                           # smoke run

Task: arithmetic questions (recipes/data/arithmetic), the math reward (1 when the final answer is
right); eval = greedy accuracy on the first ``--eval-samples`` test questions, before training,
every ``--eval-every`` rounds and at the end.

Configs are what users run: GRPO and RLOO start from ``recipes/smollm2-135m/grpo_arithmetic.yaml``
(loaded by ``posttrain rloo``), PPO from ``ppo_arithmetic.yaml``. Shared overrides:
model, seed, data, eval, ``prompts_per_step`` x ``num_generations`` (all three sample as many
completions per round, for the same prompts in the same order) and ``max_new_tokens``. What stays each
recipe's own is printed before the table; for PPO that is, above all, a critic (a second model
with its own optimiser state) and a reference model for its KL-shaped reward (``kl_coef``), its
own learning rate and its KL estimator for the shaped reward. ``--set key=value`` overrides a
key in every config that has it.

Budget, in *rounds* (one rollout of prompts_per_step x num_generations completions plus its
optimiser steps), so every algorithm sees the same prompts and samples as many completions:

- ``--steps N``: N rounds each (one optimiser step per round in all three recipes);
- ``--minutes M``: a clean stop at the first round boundary after M minutes of training (eval
  excluded; the overshoot is less than one round): the round generator simply ends, and the loop
  runs its final eval as usual. With both, whichever comes first.

GRPO and RLOO keep their recipe's ``skip_zero_std_groups: true``: a group whose completions all
got the same reward has zero advantage, so its forward/backward is skipped, and a round where all
groups are flat costs little more than its rollout (on a random model, whose reward is always 0,
they train nothing at all). PPO trains every completion (its critic learns from all of them).

Reported: "train s" = the sum of the loop's step times (time/prepare_s + time/train_s: rollout,
rewards, scoring, updates), without evaluation; eval points are placed on that clock. Each
algorithm runs in its own process (peak MB is its own; CPU: the peak resident set, which also
covers evaluation). No checkpoints or weights are written.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from grpo import RANDOM_NOTE, no_checkpoints, read_metrics  # noqa: E402

from common import peak_memory_mb, run_workers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "recipes" / "data" / "arithmetic"
RECIPES = {
    "grpo": ROOT / "recipes" / "smollm2-135m" / "grpo_arithmetic.yaml",
    "rloo": ROOT / "recipes" / "smollm2-135m" / "grpo_arithmetic.yaml",
    "ppo": ROOT / "recipes" / "smollm2-135m" / "ppo_arithmetic.yaml",
}
EVAL_KEYS = ("eval/rewards/math/mean", "eval/rewards/total/mean")
UNBOUNDED_STEPS = 10**6  # --minutes alone: the budget stops the run, not max_steps
PPO_ONLY = ("kl_coef", "kl_penalty", "vf_coef", "value_learning_rate", "gamma", "lam",
            "whiten_advantages")


def trainer(name: str) -> tuple[type, type]:
    """(config class, algorithm class) of ``posttrain <name>``."""
    from posttrain.cli import TRAINERS

    module_name, config_name, class_name, _ = TRAINERS[name]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, class_name)


def build_config(name: str, spec: dict, output_dir: str):
    """The recipe's config with the shared overrides; max_steps and eval_steps count rounds."""
    from posttrain.config import config_fields, load_config

    config_cls, _ = trainer(name)
    values = {
        "model": spec["model"], "seed": spec["seed"], "output_dir": output_dir,
        "train_data": str(DATA / "train.jsonl"), "eval_data": str(DATA / "test.jsonl"),
        "eval_max_samples": spec["eval_samples"], "eval_on_start": True,
        "prompts_per_step": spec["prompts_per_step"], "num_generations": spec["num_generations"],
        "max_new_tokens": spec["max_new_tokens"], "progress": False, "logging_steps": 1,
        "save_steps": 0,
    }
    fields = config_fields(config_cls)
    overrides = [item for item in spec.get("set", []) if item.split("=", 1)[0] in fields]
    probe = load_config(config_cls, RECIPES[name], overrides, values)
    per_round = probe.num_iterations * probe.mini_batches
    values["max_steps"] = spec["rounds"] * per_round if spec.get("rounds") else UNBOUNDED_STEPS
    values["eval_steps"] = spec["eval_every"] * per_round
    return load_config(config_cls, RECIPES[name], overrides, values)


def stop_after(algorithm, seconds: float, steps_per_round: int) -> None:
    """Make ``algorithm.step_batches`` end at the first round boundary once ``seconds`` of
    training (evaluation excluded) have passed: the loop then stops cleanly and evaluates."""
    spent_in_eval = [0.0]
    evaluate, step_batches = algorithm.evaluate, algorithm.step_batches

    def timed_evaluate(wrapped):
        start = time.perf_counter()
        try:
            return evaluate(wrapped)
        finally:
            spent_in_eval[0] += time.perf_counter() - start

    def budgeted(start_step: int):
        start, eval_before = time.perf_counter(), spent_in_eval[0]
        batches = step_batches(start_step)
        for i in itertools.count():
            training = time.perf_counter() - start - (spent_in_eval[0] - eval_before)
            if i and i % steps_per_round == 0 and training >= seconds:
                return  # before the next round's rollout is sampled
            batch = next(batches, None)
            if batch is None:
                return
            yield batch

    algorithm.evaluate, algorithm.step_batches = timed_evaluate, budgeted


def summarise(name: str, records: list[dict], steps_per_round: int) -> dict:
    """Rounds, steps, training seconds and (train seconds, accuracy, step) eval points."""
    steps = [r for r in records if "time/train_s" in r]
    step_s = {r["step"]: r.get("time/prepare_s", 0.0) + r["time/train_s"] for r in steps}
    points = []
    for r in records:
        key = next((k for k in EVAL_KEYS if k in r), None)
        if key is not None:
            wall = sum(s for step, s in step_s.items() if step <= r["step"])
            points.append([round(wall, 2), r[key], r["step"]])
    return {
        "algorithm": name, "steps": len(steps), "steps_per_round": steps_per_round,
        "rounds": sum(1 for r in steps if "time/generation_s" in r),
        "train_s": sum(step_s.values()), "points": points,
        "eval_s": sum(r.get("time/eval_s", 0.0) for r in records),
    }


def worker(spec: dict) -> dict:
    """One algorithm (the child process's job): train it under the budget, summarise."""
    import torch

    from posttrain.train.loop import train

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    name = spec["algorithm"]
    with tempfile.TemporaryDirectory(prefix=f"posttrain-rl-compare-{name}-") as tmp:
        config = build_config(name, spec, f"{tmp}/out")
        algorithm = trainer(name)[1](config)
        algorithm.save = lambda output_dir, state_dicts=None: None  # time training, not writing weights
        per_round = config.num_iterations * config.mini_batches
        if spec.get("minutes"):
            stop_after(algorithm, 60 * spec["minutes"], per_round)
        with no_checkpoints():
            train(algorithm)
        result = summarise(name, read_metrics(config.output_dir), per_round)
    return {**result, "peak_mb": peak_memory_mb(), "model": spec["model"]}


def table_rows(results: list[dict]) -> list[dict]:
    """One printed row per algorithm (columns are checked by tests/test_benchmarks.py)."""
    rows = []
    for r in results:
        accuracies = [p[1] for p in r["points"]]
        start_end = f"{accuracies[0]:.3f} -> {accuracies[-1]:.3f}" if accuracies else "-"
        rows.append({
            "algorithm": r["algorithm"],
            "rounds": r["rounds"],
            "steps": r["steps"],
            "train s": f"{r['train_s']:.1f}",
            "eval acc start -> end": start_end,
            "best": f"{max(accuracies):.3f}" if accuracies else "-",
            "peak MB": f"{r['peak_mb']:.0f}",
            "s/step": f"{r['train_s'] / max(r['steps'], 1):.2f}",
            "s/round": f"{r['train_s'] / max(r['rounds'], 1):.2f}",
        })
    return rows


def curve_lines(results: list[dict]) -> list[str]:
    """Accuracy against training seconds, one compact line per algorithm."""
    return [f"{r['algorithm']:<5} " + "  ".join(f"{p[0]:.1f}s:{p[1]:.3f}" for p in r["points"])
            for r in results]


def config_differences(configs: dict) -> list[str]:
    """Keys whose values differ between the algorithms' configs (output_dir aside), and the
    PPO-only settings that matter most."""
    dicts = {name: dataclasses.asdict(c) for name, c in configs.items()}
    derived = {"output_dir", "max_steps", "eval_steps"}  # the last two: rounds x steps/round
    shared = set.intersection(*(set(d) for d in dicts.values())) - derived
    lines = []
    for key in sorted(shared):
        values = [d[key] for d in dicts.values()]
        if any(v != values[0] for v in values):
            lines.append(f"  {key}: " + ", ".join(f"{n}={d[key]}" for n, d in dicts.items()))
    if "ppo" in dicts:
        lines.append("  ppo only: " + ", ".join(f"{k}={dicts['ppo'][k]}" for k in PPO_ONLY))
    return lines


def plot(results: list[dict], path: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed (pip install 'posttrain[plots]'); no plot.",
              file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot([p[0] / 60 for p in r["points"]], [p[1] for p in r["points"]], marker="o",
                label=r["algorithm"])
    ax.set_xlabel("training wall time, minutes (evaluation excluded)")
    ax.set_ylabel("greedy eval accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")


def print_report(results: list[dict], configs: dict, spec: dict, file=None) -> None:
    from common import print_table

    file = file or sys.stdout  # looked up per call (pytest's capsys swaps sys.stdout)
    budget = [f"{spec['rounds']} rounds"] if spec.get("rounds") else []
    budget += [f"{spec['minutes']} training minutes"] if spec.get("minutes") else []
    print(f"model {spec['model']}, seed {spec['seed']}, budget {' or '.join(budget)} per "
          f"algorithm; round = {spec['prompts_per_step']} prompts x {spec['num_generations']} "
          f"completions of <= {spec['max_new_tokens']} tokens; eval: greedy on the first "
          f"{spec['eval_samples']} test questions every {spec['eval_every']} rounds.", file=file)
    if configs:
        print("Settings that differ (each recipe's own):", file=file)
        print("\n".join(config_differences(configs)), file=file)
    print(file=file)
    print_table(table_rows(results), file=file)
    print("\naccuracy vs training seconds (eval excluded):", file=file)
    print("\n".join(curve_lines(results)), file=file)
    if spec["model"].startswith("random:"):
        print(RANDOM_NOTE + " Their accuracy stays ~0: such a run checks the plumbing only.",
              file=file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--algorithms", nargs="+", default=["grpo", "rloo", "ppo"],
                        choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=None,
                        help="rounds per algorithm (default 20 unless --minutes is given)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training minutes per algorithm (eval excluded)")
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=5, help="rounds between evals")
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key in every config that has it (repeatable)")
    parser.add_argument("--plot", metavar="FILE", help="write accuracy vs time (matplotlib)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # child process: one algorithm
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    spec = {"model": args.model, "seed": args.seed, "minutes": args.minutes,
            "rounds": args.steps if args.steps or args.minutes else 20,
            "eval_samples": args.eval_samples, "eval_every": args.eval_every,
            "prompts_per_step": args.prompts_per_step, "num_generations": args.num_generations,
            "max_new_tokens": args.max_new_tokens, "threads": args.threads, "set": args.set}
    from posttrain.config import config_fields

    known = set().union(*(config_fields(trainer(n)[0]) for n in args.algorithms))
    unknown = [item for item in args.set if item.split("=", 1)[0] not in known]
    if unknown:
        parser.error(f"--set {unknown[0]}: no such key in the {'/'.join(args.algorithms)} "
                     "configs (`posttrain grpo --help-config` lists them)")
    configs = {name: build_config(name, spec, "unused") for name in args.algorithms}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results, failed = run_workers(
        __file__, [(name, {**spec, "algorithm": name}) for name in args.algorithms], env)
    print_report(results, configs, spec)
    if args.plot and results:
        plot(results, args.plot, f"{args.model}: arithmetic, math reward")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
