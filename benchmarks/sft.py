"""SFT throughput and peak memory on a fixed synthetic workload.

    python benchmarks/sft.py                       # random:tiny and the Qwen2.5-0.5B shape
    python benchmarks/sft.py --models random:tiny --steps 20 --seq-len 256 --lora

Each model runs in its own process (so peak memory is that run's). Throughput comes from the
loop's own per-step timings in metrics.jsonl, skipping the first (warm-up) step: input tokens/s
counts prompt + response tokens, trained tokens/s only the response tokens in the loss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

DEFAULT_MODELS = ["random:tiny", "random:qwen2.5-0.5b-smallvocab"]
WORDS = "the a of to and in is it you that he was for on are as with his they at be this".split()


def make_data(path: Path, rows: int, seq_len: int) -> None:
    """Rows of up to seq_len tokens, half prompt, half response (longer rows are truncated)."""
    half = max(4, seq_len // 4)  # words per side; with the template, ~seq_len tokens
    with path.open("w") as handle:
        for i in range(rows):
            words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(2 * half)]
            row = {"prompt": " ".join(words[:half]), "completion": " ".join(words[half:])}
            handle.write(json.dumps(row) + "\n")


def run_one(args: argparse.Namespace) -> dict:
    import torch

    from common import peak_memory_mb
    from posttrain.algorithms.sft import SFT, SFTConfig
    from posttrain.config import load_config
    from posttrain.train.loop import train

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        make_data(data, args.batch_size * (args.steps + 1), args.seq_len)
        config = load_config(SFTConfig, values={
            "model": args.model, "train_data": str(data), "output_dir": f"{tmp}/out",
            "per_device_batch_size": args.batch_size, "max_steps": args.steps + 1,
            "max_length": args.seq_len, "progress": False, "use_lora": args.lora,
            "gradient_checkpointing": args.gradient_checkpointing,
        })
        algorithm = SFT(config)
        algorithm.save = lambda output_dir, state_dicts=None: None  # time training, not writing weights
        train(algorithm)
        records = [json.loads(x) for x in Path(config.output_dir, "metrics.jsonl").open()]
    timed = [r for r in records if r["step"] > 1 and "time/train_s" in r]
    seconds = sum(r["time/train_s"] for r in timed)
    return {
        "model": args.model,
        "lora": args.lora,
        "batch x seq": f"{args.batch_size} x {args.seq_len}",
        "input tok/s": round(sum(r["input_tokens"] for r in timed) / seconds, 1),
        "trained tok/s": round(sum(r["tokens"] for r in timed) / seconds, 1),
        "s/step": round(seconds / len(timed), 3),
        "peak MB": round(peak_memory_mb()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 1 warm-up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    if args.model:  # child process: one configuration
        print(json.dumps(run_one(args)))
        return
    from common import print_table

    rows = []
    passthrough = [a for a in sys.argv[1:]]
    if "--models" in passthrough:  # drop the list: each child gets --model
        i = passthrough.index("--models")
        j = i + 1
        while j < len(passthrough) and not passthrough[j].startswith("--"):
            j += 1
        passthrough = passthrough[:i] + passthrough[j:]
    for model in args.models:
        cmd = [sys.executable, __file__, "--model", model, *passthrough]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"{model}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print_table(rows)


if __name__ == "__main__":
    main()
