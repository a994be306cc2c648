"""DPO throughput and peak memory for each reference mode (copy, adapter, precomputed, none).

Random-weight models from ``posttrain.hub`` aliases, synthetic pairs, no download:

    python benchmarks/dpo.py --models random:tiny
    python benchmarks/dpo.py --models random:tiny random:qwen2.5-0.5b-smallvocab --steps 3

Each (model, mode) runs in a fresh subprocess, so one run's memory never shows in another's.
Numbers per run:

- setup_s: loading the reference, or precomputing its log-probs (fresh cache each run);
- pairs/s: pairs per step / the median step time, first step (warm-up) excluded; the
  median keeps a busy shared machine's stalls out of the figure;
- peak MB: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set
  (Linux ``VmHWM``; ``resource.ru_maxrss`` where /proc is missing). "setup" is the peak up to
  the end of attach (reference loaded / precomputed), "train" the peak of the training steps
  alone (the high-water mark is reset after setup via /proc/self/clear_refs), which is where
  precomputed and adapter modes save the reference's memory.

``adapter`` always trains LoRA; the others train all weights unless ``--lora`` is given.
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import reset_peak_rss, rss_mb  # noqa: E402

MODES = ("copy", "adapter", "precomputed", "none")
WORDS = ("the cat sat on a mat while red dragon flew over quick brown fox jumps lazy dog "
         "answer question please thanks hello story time once upon there was Paris").split()


def synthetic_pairs(n: int, prompt_words: int, response_words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [{"prompt": text(prompt_words), "chosen": text(response_words),
             "rejected": text(response_words)} for _ in range(n)]


def worker(spec: dict) -> dict:
    import torch
    from accelerate import Accelerator

    from posttrain.algorithms.dpo import DPO, DPOConfig
    from posttrain.train.optim import build_optimizer

    torch.manual_seed(0)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cuda = spec["device"] == "cuda" or (spec["device"] == "auto" and torch.cuda.is_available())
    tmp = Path(tempfile.mkdtemp(prefix="posttrain-bench-"))
    data = tmp / "pairs.jsonl"
    rows = synthetic_pairs(spec["pairs"], spec["prompt_words"], spec["response_words"])
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mode = spec["mode"]
    config = DPOConfig(
        model=spec["model"], train_data=str(data), output_dir=str(tmp / "out"),
        per_device_batch_size=spec["batch_size"], max_steps=spec["steps"], reference=mode,
        use_lora=spec["lora"] or mode == "adapter", ref_cache_dir=str(tmp / "cache"),
        max_length=spec["max_length"], progress=False, dtype=spec["dtype"],
        gradient_checkpointing=spec["gradient_checkpointing"],
        mixed_precision="bf16" if cuda and spec["dtype"] != "float32" else "no",
    )
    config.validate()
    accelerator = Accelerator(cpu=not cuda, mixed_precision=config.mixed_precision)
    algo = DPO(config)
    wrapped = algo.wrap(algo.model)
    optimizer = build_optimizer(algo.model, config)
    wrapped, optimizer = accelerator.prepare(wrapped, optimizer)
    start = time.perf_counter()
    algo.attach(wrapped, accelerator)
    setup_s = time.perf_counter() - start
    if cuda:
        setup_peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        setup_peak = rss_mb()
        split = reset_peak_rss()
    algo.model.train()
    times, pairs_per_step = [], 0
    for _, step_batch in zip(range(spec["steps"]), algo.step_batches(0)):
        t = time.perf_counter()
        for micro in step_batch.micro_batches:
            share, _ = algo.loss(wrapped, micro, step_batch)
            accelerator.backward(share)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        pairs_per_step = step_batch.totals["pairs"]
    timed = times[1:] or times
    train_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb()
    return {
        "model": spec["model"], "mode": mode, "lora": config.use_lora,
        "device": "cuda" if cuda else "cpu", "setup_s": setup_s,
        "pairs_per_s": pairs_per_step / statistics.median(timed),
        "setup_peak_mb": setup_peak,
        "train_peak_mb": train_peak if cuda or split else float("nan"),
        "tokens_per_pair": sum(len(p.chosen.input_ids) + len(p.rejected.input_ids)
                               for p in algo.train_pairs) / len(algo.train_pairs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["random:tiny"],
                        help="aliases or folders (e.g. random:qwen2.5-0.5b-smallvocab)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--pairs", type=int, default=32, help="synthetic pairs in the data")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step (one micro)")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps (first = warm-up)")
    parser.add_argument("--prompt-words", type=int, default=24)
    parser.add_argument("--response-words", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lora", action="store_true", help="train LoRA in every mode")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = []
    for model in args.models:
        for mode in args.modes:
            spec = {"model": model, "mode": mode, "pairs": args.pairs,
                    "batch_size": args.batch_size, "steps": args.steps,
                    "prompt_words": args.prompt_words, "response_words": args.response_words,
                    "max_length": args.max_length, "lora": args.lora, "dtype": args.dtype,
                    "gradient_checkpointing": args.gradient_checkpointing,
                    "device": args.device, "threads": args.threads}
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                                  capture_output=True, text=True, env=env)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"{model} {mode}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            results.append(json.loads(lines[-1][len("RESULT "):]))
            print(f"done: {model} {mode}", file=sys.stderr, flush=True)
    header = (f"{'model':<32} {'mode':<12} {'lora':<5} {'device':<6} {'tok/pair':>8} "
              f"{'setup_s':>8} {'pairs/s':>8} {'setup peak MB':>14} {'train peak MB':>14}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['model']:<32} {r['mode']:<12} {r['lora']!s:<5} {r['device']:<6} "
              f"{r['tokens_per_pair']:>8.0f} {r['setup_s']:>8.2f} {r['pairs_per_s']:>8.3g} "
              f"{r['setup_peak_mb']:>14.0f} {r['train_peak_mb']:>14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
