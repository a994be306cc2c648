"""Per-token log-probabilities of target tokens, without a full float32 log-softmax.

log p(y_t | y_<t) = z_t[y_t] - logsumexp(z_t)

A [B, T, V] float32 log-softmax for Qwen's vocabulary (V = 151,936) costs 0.6 MB per token; we
only need one number per token. ``selective_log_softmax`` gathers the target logit and subtracts a
logsumexp computed in row chunks, so the peak extra memory is one chunk, not the whole tensor.
"""

from __future__ import annotations

import torch

# Rows (tokens) per logsumexp chunk: 1024 x 151,936 fp32 = 0.6 GB worst case; small enough for
# a consumer GPU, large enough that the kernel launch cost stays negligible.
LOGSUMEXP_CHUNK_ROWS = 1024


def selective_log_softmax(
    logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int = LOGSUMEXP_CHUNK_ROWS
) -> torch.Tensor:
    """log_softmax(logits)[..., target] for each position.

    logits: [..., V] (any float dtype; computed in float32), targets: [...] (long).
    Returns float32 [...]. Gradients flow to ``logits``.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])  # [N, V]
    flat_targets = targets.reshape(-1)  # [N]
    out = []
    for start in range(0, flat_logits.shape[0], chunk_rows):
        chunk = flat_logits[start : start + chunk_rows].float()  # [n, V]
        target_logit = chunk.gather(-1, flat_targets[start : start + chunk_rows, None]).squeeze(-1)
        out.append(target_logit - torch.logsumexp(chunk, dim=-1))
    if not out:
        return flat_logits.new_zeros(targets.shape, dtype=torch.float32)
    return torch.cat(out).reshape(targets.shape)


def entropy_from_logits(logits: torch.Tensor, chunk_rows: int = LOGSUMEXP_CHUNK_ROWS) -> torch.Tensor:
    """H(p) = logsumexp(z) - sum_v softmax(z)_v z_v per position, chunked; float32 [...]."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    for start in range(0, flat.shape[0], chunk_rows):
        chunk = flat[start : start + chunk_rows].float()
        probs = torch.softmax(chunk, dim=-1)
        out.append(torch.logsumexp(chunk, dim=-1) - (probs * chunk).sum(-1))
    if not out:
        return flat.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.cat(out).reshape(logits.shape[:-1])
