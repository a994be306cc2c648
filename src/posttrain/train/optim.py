"""AdamW and the learning-rate schedule (linear warm-up, then constant / linear / cosine)."""

from __future__ import annotations

import math

import torch
from torch import nn

from posttrain.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases and norm weights (1-D
    tensors), the usual practice since decaying them only hurts. Parameter groups that a model
    declares through ``param_groups()`` (e.g. a critic with its own learning rate) are kept."""
    if hasattr(model, "param_groups"):
        groups = model.param_groups(config)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    split = []
    for group in groups:
        params = group["params"]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        extra = {k: v for k, v in group.items() if k != "params"}
        if decay:
            split.append({"params": decay, "weight_decay": config.weight_decay, **extra})
        if no_decay:
            split.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return torch.optim.AdamW(
        split, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
        fused=fused_supported(p for group in split for p in group["params"]),
    )


def fused_supported(params) -> bool:
    """The fused AdamW kernel (one pass over each tensor) for floating-point parameters on the
    CPU or a CUDA device. Without it, PyTorch on the CPU steps parameter by parameter with a
    temporary per operation: on Qwen2.5-0.5B's shape that was 1.9 s of a 12 s SFT step
    (docs/performance.md). Same update, different float rounding only."""
    params = list(params)
    return bool(params) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    if config.warmup_steps > 0:
        return config.warmup_steps
    return math.ceil(config.warmup_ratio * total_steps)


def lr_multiplier(step: int, total_steps: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warm-up from
    1/(warmup+1), then decay to 0 at ``total_steps`` (cosine: 0.5 (1 + cos(pi * progress)))."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(progress, 1.0)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    warmup = warmup_steps(config, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(step, total_steps, warmup, config.lr_scheduler),
    )
