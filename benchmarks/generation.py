"""Rollout throughput: ``HFGenerator`` vs ``model.generate(num_return_sequences=n)``.

Random-weight models, so no download: ``--model tiny`` is ``posttrain.tiny`` (2-layer Qwen2),
``--model smollm2`` is a LlamaForCausalLM with SmolLM2-135M's shape. Random models almost never
sample eos, so every row would run to ``--max-new-tokens``; ``--stop-fraction`` makes that fraction
of the vocabulary stop tokens (for both backends) to get the uneven lengths real rollouts have.

    python benchmarks/generation.py --model smollm2 --prompts 8 --n 8 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import time

import torch

from posttrain.rollout.base import SamplingParams
from posttrain.rollout.hf import HFGenerator
from posttrain.tiny import build_tiny_model, build_tiny_tokenizer


def build_model(name: str, tokenizer):
    if name == "tiny":
        return build_tiny_model(tokenizer)
    from transformers import LlamaForCausalLM

    from posttrain.hub import smollm2_135m_config

    # SmolLM2-135M's shape (vocabulary 49,152), random weights
    config = smollm2_135m_config(vocab_size=49152, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def completion_lengths(completions: torch.Tensor, stop_ids: list[int]) -> list[int]:
    """Tokens up to and including the first stop token (what a rollout keeps) per row."""
    stops = torch.isin(completions, torch.tensor(stop_ids))  # [R, C]
    lengths = []
    for row in stops:
        hits = row.nonzero()
        lengths.append(int(hits[0]) + 1 if len(hits) else row.numel())
    return lengths


def run_hf_generate(model, prompts, params, stop_ids, pad_id) -> tuple[float, int]:
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    torch.manual_seed(params.seed or 0)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
        ).cpu()
    seconds = time.perf_counter() - start
    return seconds, sum(completion_lengths(out[:, width:], stop_ids))


def run_ours(model, tokenizer, prompts, params, compact_fraction: float) -> tuple[float, int]:
    generator = HFGenerator(model, tokenizer, compact_fraction=compact_fraction)
    start = time.perf_counter()
    rollout = generator.generate(prompts, params)
    seconds = time.perf_counter() - start
    return seconds, sum(len(c) for c in rollout.completion_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--prompts", type=int, default=8, help="unique prompts")
    parser.add_argument("--prompt-len", type=int, default=40, help="mean prompt length (+-25%%)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--stop-fraction", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-generate", action="store_true", help="only time HFGenerator")
    parser.add_argument("--generate-first", action="store_true", help="time model.generate first")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of one run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = build_tiny_tokenizer()
    model = build_model(args.model, tokenizer).to(args.device, getattr(torch, args.dtype))
    vocab = model.config.vocab_size
    rng = torch.Generator().manual_seed(0)
    low, high = max(1, int(args.prompt_len * 0.75)), int(args.prompt_len * 1.25) + 1
    prompts = [
        torch.randint(
            3, vocab, (int(torch.randint(low, high, (1,), generator=rng)),), generator=rng
        ).tolist()
        for _ in range(args.prompts)
    ]
    n_stop = max(1, int(args.stop_fraction * vocab))
    stop_ids = sorted(torch.randperm(vocab, generator=rng)[:n_stop].tolist())
    if args.stop_fraction == 0.0:
        stop_ids = [vocab - 1]
    params = SamplingParams(
        n=args.n, max_new_tokens=args.max_new_tokens, stop_token_ids=stop_ids, seed=0
    )
    pad_id = 0

    runs = {
        "HFGenerator (compact 0.25)": lambda: run_ours(model, tokenizer, prompts, params, 0.25),
        "HFGenerator (compact 0)": lambda: run_ours(model, tokenizer, prompts, params, 0.0),
        "HFGenerator (no compact)": lambda: run_ours(model, tokenizer, prompts, params, 2.0),
    }
    if not args.skip_generate:
        runs["model.generate"] = lambda: run_hf_generate(model, prompts, params, stop_ids, pad_id)
        if args.generate_first:
            runs = {"model.generate": runs.pop("model.generate"), **runs}
    print(
        f"model={args.model} prompts={args.prompts} n={args.n} prompt_len~{args.prompt_len} "
        f"max_new_tokens={args.max_new_tokens} stop_fraction={args.stop_fraction} "
        f"threads={torch.get_num_threads()} device={args.device} dtype={args.dtype}"
    )
    print(f"{'backend':<30} {'seconds':>9} {'tokens':>8} {'tokens/s':>9}")
    warm = SamplingParams(n=2, max_new_tokens=2, stop_token_ids=stop_ids, seed=0)
    run_ours(model, tokenizer, prompts[:2], warm, 0.25)  # first calls pay one-off setup costs
    if not args.skip_generate:
        run_hf_generate(model, prompts[:2], warm, stop_ids, pad_id)
    for name, fn in runs.items():
        best = min((fn() for _ in range(args.repeats)), key=lambda r: r[0])
        print(f"{name:<30} {best[0]:>9.2f} {best[1]:>8d} {best[1] / best[0]:>9.1f}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if args.device.startswith("cuda"):
            activities.append(ProfilerActivity.CUDA)
        for name, fn in runs.items():
            if "no compact" in name or "0.25" in name:
                continue
            with profile(activities=activities) as prof:
                fn()
            print(f"--- profile: {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
