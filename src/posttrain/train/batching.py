"""Which examples go into which optimiser step: deterministic, resumable.

Epoch ``e`` visits the examples in the order ``randperm(n)`` seeded with ``seed + e``; step
batches are consecutive slices of ``step_size`` examples (the last one of an epoch may be
smaller). Because the order is a pure function of (seed, epoch), resuming at step ``s`` only has
to skip ``s`` slices: no data-loader state needs saving.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


def steps_per_epoch(num_examples: int, step_size: int) -> int:
    return math.ceil(num_examples / step_size)


def total_steps(num_examples: int, step_size: int, num_epochs: float, max_steps: int) -> int:
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(steps_per_epoch(num_examples, step_size) * num_epochs))


def step_indices(
    num_examples: int, step_size: int, seed: int, start_step: int = 0, shuffle: bool = True
) -> Iterator[list[int]]:
    """Example indices for each optimiser step, forever (epoch after epoch), from start_step."""
    per_epoch = steps_per_epoch(num_examples, step_size)
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        if shuffle:
            generator = torch.Generator().manual_seed(seed + epoch)
            order = torch.randperm(num_examples, generator=generator).tolist()
        else:
            order = list(range(num_examples))
        for step in range(offset, per_epoch):
            yield order[step * step_size : (step + 1) * step_size]
        epoch, offset = epoch + 1, 0


def split_micro(items: list, micro_size: int) -> list[list]:
    return [items[i : i + micro_size] for i in range(0, len(items), micro_size)]
