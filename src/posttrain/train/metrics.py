"""Step metrics that are exact over micro-batches and processes.

An algorithm's ``loss`` returns its metrics as *statistics*, not means: for each key a float64
tensor ``[sum of values, sum of squared values, count]`` (the count may be a token weight).
The loop adds them over the step's micro-batches and over processes, then divides once, so a
logged mean is the mean over the whole step however the step was split: 1 process x 4
micro-batches, 2 x 2, or unequal micro-batches (a ragged last step). Keys ending in ``_std``
are logged as the standard deviation (population, ddof 0) instead of the mean.
"""

from __future__ import annotations

import math

import torch

from posttrain.train.distributed import all_gather_objects, all_reduce_sum, is_distributed


def stat(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``[sum(w x), sum(w x^2), sum(w)]`` of ``values`` (any shape; ``weights`` broadcast to
    it, e.g. a token mask), as float64 on the CPU."""
    x = values.detach().double()
    w = torch.ones_like(x) if weights is None else weights.detach().double().expand_as(x)
    return torch.stack([(w * x).sum(), (w * x * x).sum(), w.sum()]).cpu()


def stats(values: dict[str, torch.Tensor], weights: torch.Tensor | None = None):
    """``stat`` of every entry (e.g. per-pair values [B] of a preference batch)."""
    return {key: stat(value, weights) for key, value in values.items()}


class StepMetrics:
    """Sums a step's statistics (and loss shares); ``reduce()`` adds them across processes and
    returns means. Also used for evaluation sets split across processes."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.loss: float | None = None

    def add(self, metrics: dict[str, torch.Tensor], real: bool = True,
            loss_share: float | None = None) -> None:
        """A padding micro-batch (``real=False``) adds its keys with zero weight, so every
        process reduces the same keys."""
        scale = 1.0 if real else 0.0
        if loss_share is not None:
            self.loss = (self.loss or 0.0) + loss_share * scale
        for key, value in metrics.items():
            value = torch.as_tensor(value, dtype=torch.float64)
            self.sums[key] = self.sums.get(key, torch.zeros(3, dtype=torch.float64)) + value * scale

    def reduce(self) -> dict[str, float]:
        """Step loss (the sum of every process's shares, when loss shares were added) and the
        mean (or ``_std``) of each metric over the whole step. A collective call: every process
        must call it."""
        keys = sorted(self.sums)
        if is_distributed():  # a key only some processes saw still gets reduced everywhere
            keys = sorted({k for ks in all_gather_objects(keys) for k in ks})
        table = torch.zeros(len(keys) + 1, 3, dtype=torch.float64)
        table[0, 0] = self.loss or 0.0
        for i, key in enumerate(keys):
            if key in self.sums:
                table[i + 1] = self.sums[key]
        table = all_reduce_sum(table)
        out = {"loss": float(table[0, 0])} if self.loss is not None else {}
        for key, (total, squares, count) in zip(keys, table[1:].tolist()):
            if count <= 0:
                continue
            mean = total / count
            out[key] = math.sqrt(max(squares / count - mean * mean, 0.0)) if key.endswith(
                "_std") else mean
        return out


def sharded_means(items: list, compute) -> dict[str, float]:
    """Means (and ``_std``) of ``compute(item)`` statistics over all ``items``, each process
    computing its even share: evaluation sets split across processes, the same numbers as one
    process computing them all. A collective call."""
    from posttrain.train.distributed import my_share, ranks

    here = ranks()
    sums = StepMetrics()
    for slot in my_share(items, here.rank, here.world):
        sums.add(compute(slot.item), real=slot.real)
    return sums.reduce()


def mean_stat(mean: float | torch.Tensor, count: float | torch.Tensor) -> torch.Tensor:
    """The statistic of a mean already taken over ``count`` items (e.g. a masked fraction), so
    that it still averages exactly with other micro-batches' (no ``_std`` from it)."""
    mean, count = float(mean), float(count)
    return torch.tensor([mean * count, 0.0, count], dtype=torch.float64)
