"""Peak memory of the log-prob step with and without chunking, Qwen's real vocabulary.

    python benchmarks/logprob_memory.py                      # T = 1024, V = 151,936, fp32
    python benchmarks/logprob_memory.py --tokens 2048 --layers 2

One decoder layer of Qwen2.5-0.5B's shape (hidden 896, tied 151,936 x 896 embedding/output
layer; the other 23 layers do not change the comparison, their activations are the same on both
sides) scores T target tokens, forward and backward, each way in its own process:

- ``full``: ``model(...).logits`` ([B, T, V] float32), then log-softmax and gather: what a plain
  implementation (and TRL on a CPU, where its chunked kernel is not used) does;
- ``chunked``: posttrain's ``TokenLogprobs``: the output layer applied to a chunk of rows at a
  time under activation checkpointing, one number per token kept (rows per chunk: the default,
  256 MiB of logits, then each ``--chunk-rows``).

Printed: the peak resident set of the step above the process's resident set just before it
(the model, its gradients' first allocation excluded by a warm-up step on 8 tokens), and the
step's seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def worker(mode: str, tokens: int, layers: int, vocab: int, chunk_rows: int = 0) -> dict:
    import torch
    from transformers import Qwen2ForCausalLM

    from common import reset_peak_rss, rss_mb
    from posttrain.hub import qwen25_05b_config
    from posttrain.train.forward import TokenLogprobs

    torch.manual_seed(0)
    torch.set_num_threads(2)
    config = qwen25_05b_config(vocab, eos_token_id=0, pad_token_id=0)
    config.num_hidden_layers = layers
    model = Qwen2ForCausalLM(config).float()
    scorer = TokenLogprobs(model, chunk_rows=chunk_rows or None)

    def step(length: int) -> float:
        input_ids = torch.randint(0, vocab, (1, length + 1))
        targets = input_ids[:, 1:]
        start = time.perf_counter()
        if mode == "full":
            logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1]  # [1, T, V]
            logprobs = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])
        else:
            logprobs, _ = scorer(input_ids, targets)
        logprobs.sum().backward()
        return time.perf_counter() - start

    step(8)  # gradients allocated once, outside the measurement
    model.zero_grad(set_to_none=False)
    before = rss_mb("VmRSS")
    reset_peak_rss()
    seconds = step(tokens)
    return {"mode": mode, "chunk rows": scorer.chunk_rows if mode == "chunked" else "-",
            "extra_peak_mb": round(rss_mb("VmHWM") - before),
            "seconds": round(seconds, 2), "tokens": tokens, "vocab": vocab}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--chunk-rows", type=int, nargs="*", default=[1024, 128])
    parser.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.tokens, args.layers, args.vocab,
                                            args.rows)))
        return
    from common import print_table

    rows = []
    for mode, rows_per_chunk in [("full", 0), ("chunked", 0)] + [("chunked", r)
                                                                 for r in args.chunk_rows]:
        cmd = [sys.executable, __file__, "--worker", mode, "--tokens", str(args.tokens),
               "--layers", str(args.layers), "--vocab", str(args.vocab),
               "--rows", str(rows_per_chunk)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.split("RESULT ", 1)[1]))
    for row in rows:
        row["vs full"] = round(row["extra_peak_mb"] / max(rows[0]["extra_peak_mb"], 1), 3)
    print(f"# log-prob step, T = {args.tokens}, V = {args.vocab}, {args.layers} layer(s), fp32")
    print_table(rows)


if __name__ == "__main__":
    main()
