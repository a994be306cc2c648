"""Kill training with SIGKILL at random moments, resume, and compare with an uninterrupted run.

    python scripts/kill_test.py                       # SFT, DPO, GRPO, PPO; 3 kills each
    python scripts/kill_test.py --algorithms sft --kills 5 --seed 1

For each algorithm, on ``random:tiny`` with a checkpoint every step: one uninterrupted run, then
the same run killed (SIGKILL, no chance to clean up) at a random moment ``--kills`` times and
resumed with ``--resume`` after each kill, until it finishes. The final weights must be
bit-identical to the uninterrupted run's. Prints one row per algorithm (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_data(folder: Path) -> dict[str, Path]:
    sft = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                         {"role": "assistant", "content": f"The answer is {a + b}."}]}
           for a in range(4) for b in range(4)]
    pairs = [{"prompt": f"What is {a} + {b}?", "chosen": f"{a + b}", "rejected": f"{a + b + 1}"}
             for a in range(4) for b in range(4)]
    prompts = [{"prompt": f"Say a number, please {i}", "answer": str(i)} for i in range(16)]
    files = {"sft": sft, "dpo": pairs, "grpo": prompts, "ppo": prompts}
    paths = {}
    for name, rows in files.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "rw.py").write_text("def length_mod(prompts, completions, completion_ids, **_):\n"
                                  "    return [float(sum(ids) % 7) for ids in completion_ids]\n")
    return paths


def arguments(algorithm: str, data: dict[str, Path], out: Path) -> list[str]:
    common = ["model=random:tiny", f"train_data={data[algorithm]}", f"output_dir={out}",
              "progress=false", "save_steps=1", "save_total_limit=2", "learning_rate=1e-3"]
    extra = {
        "sft": ["per_device_batch_size=2", "max_steps=12"],
        "dpo": ["per_device_batch_size=2", "max_steps=12"],
        "grpo": ["rewards=[rw.py:length_mod]", "prompts_per_step=2", "num_generations=4",
                 "max_new_tokens=8", "max_steps=10", "beta=0.1"],
        "ppo": ["rewards=[rw.py:length_mod]", "prompts_per_step=2", "num_generations=2",
                "max_new_tokens=8", "max_steps=10", "ppo_epochs=1"],
    }[algorithm]
    return [algorithm, *common, *extra]


def run(argv: list[str], cwd: Path, kill_after: float | None) -> int | None:
    """Exit status, or None when killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=kill_after)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr.read().decode()[-2000:])
        return proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return {name: load_file(path) for name in ("model.safetensors",
                                               "value_model/model.safetensors")
            if (path := out / name).exists()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=["sft", "dpo", "grpo", "ppo"])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chooser = random.Random(args.seed)
    rows, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_data(work)
        for algorithm in args.algorithms:
            start = time.monotonic()
            straight = work / f"{algorithm}-straight"
            assert run(arguments(algorithm, data, straight), work, None) == 0
            duration = time.monotonic() - start
            killed = work / f"{algorithm}-killed"
            kills, mid_training, argv = 0, 0, arguments(algorithm, data, killed)
            while True:
                delay = chooser.uniform(0.3, max(0.6, duration)) if kills < args.kills else None
                status = run(argv + (["--resume"] if (killed / "checkpoints").exists() else []),
                             work, delay)
                if status is None:
                    kills += 1
                    mid_training += (killed / "metrics.jsonl").exists()  # after a step ran
                    continue
                if status != 0:
                    raise SystemExit(f"{algorithm}: a resumed run failed with status {status}")
                break
            a, b = weights(straight), weights(killed)
            identical = a.keys() == b.keys() and all(
                a[f].keys() == b[f].keys() and all(bool((a[f][k] == b[f][k]).all()) for k in a[f])
                for f in a)
            failed += not identical
            rows.append((algorithm, kills, mid_training,
                         "bit-identical" if identical else "DIFFERENT"))
    print("| algorithm | SIGKILLs | of them after training had started | final weights vs "
          "uninterrupted |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
