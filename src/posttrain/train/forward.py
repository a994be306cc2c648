"""The one forward pass every algorithm needs: log p(token) for chosen target tokens.

``TokenLogprobs`` wraps a causal LM. Its forward runs the decoder, then applies the output
layer in chunks of rows under activation checkpointing, keeping only one number per token. The
[B, T, V] logits tensor never exists in full, in the forward or the backward pass; for Qwen's
151,936-token vocabulary that is the largest tensor of a training step.

The wrapper is an ``nn.Module`` so that ``accelerate`` (DDP/FSDP) wraps *it*: gradients are
synchronised because the forward goes through the wrapper, not around it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from posttrain.ops.logprobs import entropy_from_logits, selective_log_softmax
from posttrain.train.sharding import no_split_modules

# Logits per chunk of rows: 256 MiB of float32 (441 rows for Qwen's 151,936-token vocabulary;
# 131,072 for a 512-token one, i.e. no chunking). A chunk's backward holds a few tensors of this
# size (logits, exp, their gradient), so at T = 1024 the log-prob step needs 0.67x the memory of
# full [T, V] logits (docs/performance.md). Smaller chunks save little more and cost time: each
# chunk's backward makes its own [V, H] weight gradient.
CHUNK_BYTES = 256 << 20


def chunk_rows_for(vocab_size: int) -> int:
    return max(16, CHUNK_BYTES // (4 * max(vocab_size, 1)))


def _head_logprobs(
    hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    logits = head(hidden)  # [n, V]
    if temperature != 1.0:
        logits = logits / temperature
    return selective_log_softmax(logits, targets)


class TokenLogprobs(nn.Module):
    """forward(input_ids, targets, ...) -> log-probs of ``targets`` [B, T'] (float32).

    ``targets`` are the next tokens to score, aligned to the LAST ``T'`` positions before the
    end (so for training on a whole sequence pass ``input_ids[:, 1:]`` and the model's positions
    ``0..T-2`` are used; for RL pass the completion tokens only and the prompt's hidden states
    are never sent through the output layer).
    """

    def __init__(self, model: nn.Module, chunk_rows: int | None = None):
        super().__init__()
        self.model = model
        config = model.config
        vocab = getattr(config, "vocab_size", None) or 151_936  # unknown: assume large
        self.chunk_rows = chunk_rows or chunk_rows_for(vocab)
        self._no_split_modules = no_split_modules(model)  # FSDP auto-wrap reads the root's
        # Heads with soft-capping or scaling are computed the plain way (full logits).
        self.plain_head = bool(
            getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None)
        )

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        targets: torch.Tensor,  # [B, T'] with T' <= T - 1
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        temperature: float = 1.0,
        return_entropy: bool = False,
        score_mask: torch.Tensor | None = None,  # [B, T'] bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``score_mask`` (optional): only these positions go through the output layer, the
        others come back as 0. SFT passes its loss mask: the prompt's positions are never
        trained, and with Qwen's 151,936-token vocabulary the output layer is a quarter of the
        model's FLOPs per position."""
        num_targets = targets.shape[1]
        # positions whose next token is a target: T-1-T' .. T-2
        start = input_ids.shape[1] - 1 - num_targets
        if self.plain_head:
            logits = self.model(
                input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids, use_cache=False,
            ).logits[:, start:-1] / temperature
            entropy = entropy_from_logits(logits.detach()) if return_entropy else None
            logprobs = selective_log_softmax(logits, targets)
            if score_mask is not None:
                logprobs = logprobs.masked_fill(~score_mask, 0.0)
                entropy = None if entropy is None else entropy.masked_fill(~score_mask, 0.0)
            return logprobs, entropy

        hidden = self.model.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask,
            position_ids=position_ids, use_cache=False,
        ).last_hidden_state[:, start:-1]  # [B, T', H]
        head = self.model.get_output_embeddings()
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # [B*T', H]
        flat_targets = targets.reshape(-1)
        scored = None
        if score_mask is not None:
            scored = score_mask.reshape(-1).nonzero().squeeze(-1)  # [n] flat positions
            flat_hidden, flat_targets = flat_hidden[scored], flat_targets[scored]
        pieces, entropies = [], []
        for lo in range(0, flat_hidden.shape[0], self.chunk_rows):
            h, t = flat_hidden[lo : lo + self.chunk_rows], flat_targets[lo : lo + self.chunk_rows]
            if torch.is_grad_enabled() and h.requires_grad:
                pieces.append(
                    checkpoint(_head_logprobs, h, head, t, temperature, use_reentrant=False)
                )
            else:
                pieces.append(_head_logprobs(h, head, t, temperature))
            if return_entropy:
                with torch.no_grad():
                    entropies.append(entropy_from_logits(head(h.detach()) / temperature))
        logprobs = _unflatten(pieces, scored, targets)
        entropy = _unflatten(entropies, scored, targets) if return_entropy else None
        return logprobs, entropy


def _unflatten(pieces: list[torch.Tensor], scored: torch.Tensor | None,
               targets: torch.Tensor) -> torch.Tensor:
    """Chunks of per-position values back to [B, T']; unscored positions are 0."""
    values = torch.cat(pieces) if pieces else targets.new_zeros(0, dtype=torch.float32)
    if scored is None:
        return values.reshape(targets.shape)
    full = values.new_zeros(targets.numel())
    return full.index_put((scored,), values).reshape(targets.shape)
