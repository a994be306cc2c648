"""Policy-gradient pieces shared by PPO, GRPO, RLOO and REINFORCE++.

Everything is per token: [B, T] tensors aligned with the completion tokens, and a 0/1 ``mask``
marking real completion tokens (padding, and prompt tokens if present, are 0). The three steps:

1. ``kl_estimate``: a per-token estimate of KL(pi_theta || pi_ref), as a penalty or for logging;
2. ``clipped_surrogate``: the PPO clipped objective per token;
3. ``aggregate_token_loss``: reduce [B, T] to the scalar that is back-propagated, with the
   normalisation of each paper (GRPO, DAPO, Dr. GRPO, BNPO) and correct under gradient
   accumulation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from posttrain.ops.stats import masked_sum

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("grpo", "dapo", "dr_grpo", "bnpo")


def kl_estimate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3"
) -> torch.Tensor:
    """Per-token Monte-Carlo estimators of KL(pi || pi_ref) from tokens sampled from pi.

    Schulman (2020), "Approximating KL Divergence". With log r = ref_logp - logp (r = pi_ref/pi):

        k1 = -log r = logp - ref_logp          unbiased, high variance, can be negative
        k2 = 0.5 * (log r)^2                   biased, low variance, >= 0
        k3 = (r - 1) - log r                   unbiased, low variance, >= 0 (r - 1 >= log r)

    k3 is what GRPO (Shao et al. 2024, eq. 4) adds to its loss. All three are 0 where the two
    log-probs agree. logprobs, ref_logprobs: [B, T] -> [B, T] (unmasked; mask when reducing).
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"kl_estimate: logprobs {tuple(logprobs.shape)} and ref_logprobs "
            f"{tuple(ref_logprobs.shape)} must have the same shape [B, T]."
        )
    log_ratio = ref_logprobs - logprobs  # [B, T] log r
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(
        f"kl_estimate: unknown estimator {estimator!r}; choose one of {list(KL_ESTIMATORS)}."
    )


class SurrogateLoss(NamedTuple):
    """What ``clipped_surrogate`` returns (unpacks like a 3-tuple).

    per_token_loss:  [B, T] -min(ratio * A, clip(ratio) * A)
    is_clipped_low:  [B, T] bool, the lower clip binds (ratio < 1 - eps_low and A < 0)
    is_clipped_high: [B, T] bool, the upper clip binds (ratio > 1 + eps_high and A > 0)
    """

    per_token_loss: torch.Tensor
    is_clipped_low: torch.Tensor
    is_clipped_high: torch.Tensor


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
) -> SurrogateLoss:
    """PPO clipped surrogate loss per token (Schulman et al. 2017, eq. 7), to be minimised:

        ratio_t = exp(logp_t - old_logp_t)
        l_t     = -min(ratio_t * A_t, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A_t)

    The min makes the objective a pessimistic bound: once the ratio has moved past the clip range
    in the direction the advantage favours, the gradient is 0 for that token. ``epsilon_high``
    defaults to ``epsilon_low`` (symmetric PPO); a larger value is DAPO's "clip-higher" (Yu et al.
    2025, eq. 10), which leaves low-probability tokens more room to grow.

    logprobs, old_logprobs: [B, T]; advantages: broadcastable to [B, T] ([B, 1] for one advantage
    per sequence as in GRPO/RLOO, [B, T] per token as in PPO with GAE). On the first update of a
    rollout logprobs == old_logprobs, so ratio = 1 and l_t = -A_t.
    """
    if logprobs.shape != old_logprobs.shape:
        raise ValueError(
            f"clipped_surrogate: logprobs {tuple(logprobs.shape)} and old_logprobs "
            f"{tuple(old_logprobs.shape)} must have the same shape [B, T]."
        )
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    if not 0.0 <= epsilon_low < 1.0 or eps_high < 0.0:
        raise ValueError(
            f"clipped_surrogate: need 0 <= epsilon_low < 1 and epsilon_high >= 0 "
            f"(got {epsilon_low}, {eps_high}); 0.2 is the usual value."
        )
    ratio = torch.exp(logprobs - old_logprobs)  # [B, T]
    clipped_ratio = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + eps_high)  # [B, T]
    unclipped_obj = ratio * advantages  # [B, T]
    clipped_obj = clipped_ratio * advantages  # [B, T]
    per_token_loss = -torch.min(unclipped_obj, clipped_obj)  # [B, T]
    is_clipped_low = (ratio < 1.0 - epsilon_low) & (advantages < 0)  # [B, T]
    is_clipped_high = (ratio > 1.0 + eps_high) & (advantages > 0)  # [B, T]
    return SurrogateLoss(per_token_loss, is_clipped_low, is_clipped_high)


def truncated_importance_weights(
    trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance sampling (TIS) for a sampler that is not the trainer's forward
    (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
    Training"; also Espeholt et al. 2018's truncated IS):

        w_t = min( pi_old(a_t | s_t) / pi_sampler(a_t | s_t), C ) = min(exp(old_t - sampler_t), C)

    Tokens were drawn from pi_sampler (vLLM, a paged kernel, a bf16 engine), while the PPO /
    GRPO ratio is taken against the trainer's pi_old; multiplying each token's policy loss by
    w_t (detached) makes the gradient an estimate under pi_old again, and the cap C bounds the
    variance that a token the sampler found much less likely than the trainer would add.

    trainer_logprobs, sampler_logprobs: [B, T] -> weights [B, T] (no gradient). 1 where the
    two agree exactly.
    """
    if trainer_logprobs.shape != sampler_logprobs.shape:
        raise ValueError(
            f"truncated_importance_weights: trainer {tuple(trainer_logprobs.shape)} and sampler "
            f"{tuple(sampler_logprobs.shape)} log-probs must have the same shape [B, T]."
        )
    if not cap >= 1.0:
        raise ValueError(f"truncated_importance_weights: cap must be >= 1 (e.g. 3), got {cap}.")
    log_ratio = (trainer_logprobs - sampler_logprobs).detach()
    return torch.exp(log_ratio).clamp(max=cap)


def aggregate_token_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    *,
    total_sequences: int | torch.Tensor | None = None,
    total_tokens: int | torch.Tensor | None = None,
    max_completion_length: int | None = None,
    num_micro_batches: int = 1,
) -> torch.Tensor:
    """This micro-batch's share of the step loss, so that summing the shares of all micro-batches
    of one optimisation step gives the loss of the whole step batch computed at once (and the
    same gradient). With l_it the per-token loss of completion o_i, over the N step sequences:

      - ``grpo`` (Shao et al. 2024, eq. 3):  (1/N) sum_i (1/|o_i|) sum_t l_it
            share = sum_{i in micro} mean_t(l_i) / total_sequences
        Every sequence weighs the same, so tokens of long completions weigh less.
      - ``dapo`` (Yu et al. 2025, eq. 12, token-level):  sum_i sum_t l_it / sum_i |o_i|
            share = masked_sum / total_tokens
        Every token weighs the same.
      - ``dr_grpo`` (Liu et al. 2025, "Understanding R1-Zero-Like Training"):
            sum_i sum_t l_it / (N * max_completion_length)
            share = masked_sum / (total_sequences * max_completion_length)
        A constant normaliser, so no length bias at all.
      - ``bnpo`` (batch-normalised): each micro-batch is normalised by its *own* token count,
        and micro-batches are averaged: share = masked_sum / local_tokens / num_micro_batches.
        By definition this one is NOT invariant to how the step batch is split.

    ``total_sequences`` / ``total_tokens`` are counts over the whole step batch (every
    micro-batch of the step); when omitted they default to this micro-batch's own counts, which
    is only right when the step has a single micro-batch. ``max_completion_length`` is the
    generation limit (not the padded width T) and is required for ``dr_grpo``. Under data
    parallelism, where gradients are averaged over W processes, count totals per process (or
    multiply the shares by W).

    per_token_loss, mask: [B, T] -> scalar. Rows with no valid token contribute 0.
    """
    if per_token_loss.shape != mask.shape:
        raise ValueError(
            f"aggregate_token_loss: per_token_loss {tuple(per_token_loss.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape [B, T]."
        )
    mask = mask.to(per_token_loss.dtype)
    if total_sequences is None:
        total_sequences = per_token_loss.shape[0]
    if total_tokens is None:
        total_tokens = mask.sum()

    if loss_type == "grpo":
        lengths = mask.sum(dim=-1).clamp(min=1.0)  # [B]
        sequence_means = masked_sum(per_token_loss, mask, dim=-1) / lengths  # [B]
        return sequence_means.sum() / max(total_sequences, 1)
    if loss_type == "dapo":
        return masked_sum(per_token_loss, mask) / max(total_tokens, 1)
    if loss_type == "dr_grpo":
        if max_completion_length is None or max_completion_length <= 0:
            raise ValueError(
                "aggregate_token_loss: loss_type='dr_grpo' divides by a constant "
                "N * max_completion_length; pass max_completion_length (the generation limit, "
                f"e.g. max_new_tokens), got {max_completion_length!r}."
            )
        return masked_sum(per_token_loss, mask) / (max(total_sequences, 1) * max_completion_length)
    if loss_type == "bnpo":
        if num_micro_batches < 1:
            raise ValueError(
                f"aggregate_token_loss: num_micro_batches must be >= 1, got {num_micro_batches}."
            )
        return masked_sum(per_token_loss, mask) / mask.sum().clamp(min=1.0) / num_micro_batches
    raise ValueError(
        f"aggregate_token_loss: unknown loss_type {loss_type!r}; choose one of "
        f"{list(AGGREGATIONS)}."
    )
