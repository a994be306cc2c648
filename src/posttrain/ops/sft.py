"""Supervised fine-tuning loss: negative log-likelihood of the response tokens.

    L = - sum_{t in response} log p_theta(y_t | y_<t) / N

Two normalisers N, both documented because they weight examples differently:

* ``"token"`` (default): N = number of response tokens in the whole optimisation step. Every
  token counts equally, so long responses weigh more (what HF/TRL do by default).
* ``"sequence"``: mean over examples of each example's per-token mean. Every example counts
  equally, whatever its length.

For gradient accumulation the normaliser is counted over the *whole* step (all micro-batches):
each micro-batch returns its share, and the shares add up to the loss of the full batch, so 4
micro-batches of 1 give exactly the gradient of 1 batch of 4.
"""

from __future__ import annotations

import torch


def sft_loss(
    token_logprobs: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, T] 1 on response tokens
    reduction: str = "token",
    step_tokens: float | None = None,
    step_sequences: float | None = None,
    sequence_ids: torch.Tensor | None = None,  # [B, T] example index (packing), else row index
) -> torch.Tensor:
    """This micro-batch's share of the step's masked NLL (see module docstring).

    ``step_tokens`` / ``step_sequences``: totals over the whole optimisation step; default to
    this micro-batch's own (no accumulation).
    """
    mask = mask.to(token_logprobs.dtype)
    nll = -token_logprobs * mask  # [B, T]
    if reduction == "token":
        total = mask.sum() if step_tokens is None else step_tokens
        return nll.sum() / max(float(total), 1.0)
    if reduction == "sequence":
        if sequence_ids is None:
            per_sequence = nll.sum(-1) / mask.sum(-1).clamp(min=1.0)  # [B]
            count = (mask.sum(-1) > 0).sum()
        else:  # several examples per row (packing): average within each example id
            ids = sequence_ids.reshape(-1)
            size = int(ids.max()) + 1
            sums = torch.zeros(size, dtype=nll.dtype).index_add(0, ids, nll.reshape(-1))
            counts = torch.zeros(size, dtype=nll.dtype).index_add(0, ids, mask.reshape(-1))
            per_sequence = sums / counts.clamp(min=1.0)
            count = (counts > 0).sum()
        total = count if step_sequences is None else step_sequences
        return per_sequence.sum() / max(float(total), 1.0)
    raise ValueError(f"reduction must be 'token' or 'sequence', got {reduction!r}")
