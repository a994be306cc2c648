"""Learning curve of a run: an eval metric against step and against training wall time.

    python scripts/learning_curve.py outputs/grpo-smollm2-arithmetic/metrics.jsonl \
        --key eval/rewards/math/mean --plot curve.png

Training wall time is the sum of each step's `time/prepare_s` (generation, rewards, scoring)
and `time/train_s`, so the time spent evaluating is not counted; total wall time (with the
evaluations) is printed too. Prints a markdown table; `--plot` also writes a PNG (matplotlib).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curve(records: list[dict], key: str) -> list[dict]:
    points, train_s = [], 0.0
    for record in records:
        train_s += record.get("time/prepare_s", 0.0) + record.get("time/train_s", 0.0)
        if key in record:
            points.append({"step": record["step"], "train_min": train_s / 60,
                           "total_min": record["elapsed_s"] / 60, key: record[key]})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("metrics", type=Path, help="metrics.jsonl of a run")
    parser.add_argument("--key", default="eval/rewards/math/mean")
    parser.add_argument("--plot", type=Path, help="write a PNG here")
    args = parser.parse_args()
    records = [json.loads(line) for line in args.metrics.read_text().splitlines() if line]
    points = curve(records, args.key)
    if not points:
        raise SystemExit(f"{args.metrics}: no record has {args.key!r}")
    print(f"| step | training wall time (min) | total wall time (min) | {args.key} |")
    print("| --- | --- | --- | --- |")
    for p in points:
        print(f"| {p['step']} | {p['train_min']:.1f} | {p['total_min']:.1f} | {p[args.key]:.3f} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
        by_step.plot([p["step"] for p in points], [p[args.key] for p in points], "o-")
        by_step.set_xlabel("optimiser step")
        by_step.set_ylabel(args.key)
        by_time.plot([p["train_min"] for p in points], [p[args.key] for p in points], "o-")
        by_time.set_xlabel("training wall time (min)")
        for axis in (by_step, by_time):
            axis.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
