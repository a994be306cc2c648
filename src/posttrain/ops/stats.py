"""Masked reductions over token tensors.

Every RL and preference formula averages over *real* tokens only (response tokens, not padding),
so these helpers take a 0/1 (or bool) ``mask`` of the same shape as ``values``.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_i m_i * x_i (over ``dim``, or everything)."""
    values = values * mask
    return values.sum() if dim is None else values.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_i m_i x_i / max(sum_i m_i, 1): the mean over unmasked entries (0 when none are)."""
    mask = mask.to(values.dtype)
    total = masked_sum(values, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return total / count.clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over unmasked entries; Bessel-corrected (n - 1) when ``unbiased``."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    squared = masked_sum((values - mean) ** 2, mask)
    count = mask.sum()
    if unbiased:
        count = count - 1
    return squared / count.clamp(min=1.0)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over unmasked entries; the mean is added back if not
    ``shift_mean`` (reward whitening keeps the sign of the rewards, advantage whitening does not)."""
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask
