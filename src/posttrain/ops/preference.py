"""Preference losses: DPO and its variants, and the Bradley-Terry reward-model loss.

All inputs are per-pair numbers (one per chosen/rejected pair), never per-token tensors: the DPO
family only needs the *summed* log-probability of each completion, log pi(y|x) = sum_t log
pi(y_t | x, y_<t), which the trainer computes once with ``ops.logprobs`` and ``ops.stats``.

Notation (shared by every docstring below), for one pair (x, y_w, y_l):

    pc, pr   = log pi_theta(y_w | x), log pi_theta(y_l | x)    policy, chosen / rejected
    rc, rr   = log pi_ref(y_w | x),   log pi_ref(y_l | x)      frozen reference model
    delta    = (pc - rc) - (pr - rr)                           difference of the log-ratios

Rows are independent; the caller averages ``losses`` over the batch (or across micro-batches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "cdpo", "ipo", "hinge", "robust")


@dataclass
class PreferenceLosses:
    """Per-pair DPO losses and the implicit rewards used for logging.

    losses:           [B] the loss of each pair (differentiable); average it yourself.
    chosen_rewards:   [B] beta * (pc - rc), detached.
    rejected_rewards: [B] beta * (pr - rr), detached.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def reward_margins(self) -> torch.Tensor:
        """[B] chosen_rewards - rejected_rewards (> 0 when the policy prefers the chosen)."""
        return self.chosen_rewards - self.rejected_rewards

    @property
    def reward_accuracies(self) -> torch.Tensor:
        """[B] 1.0 where the implicit reward ranks the chosen completion strictly higher."""
        return (self.chosen_rewards > self.rejected_rewards).float()


def _check_same_shape(name_to_tensor: dict[str, torch.Tensor | None], where: str) -> None:
    shapes = {name: tuple(t.shape) for name, t in name_to_tensor.items() if t is not None}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name}={shape}" for name, shape in shapes.items())
        raise ValueError(
            f"{where}: all per-pair inputs must have the same shape [B], got {listed}. "
            "Pass one summed log-prob (or score) per pair."
        )


def dpo_losses(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> PreferenceLosses:
    """Direct-preference losses for a batch of pairs.

    Inputs are summed completion log-probs, each [B]. ``ref_*=None`` means reference-free
    (log pi_ref taken as 0, i.e. a uniform reference), useful when no reference model is kept.

    loss_type:
      - ``"sigmoid"`` (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7):
            L = -log sigma(beta * delta)
        With ``label_smoothing = eps > 0`` this becomes conservative DPO (cDPO; Mitchell 2023),
        which assumes each preference label is flipped with probability eps:
            L = -(1 - eps) log sigma(beta * delta) - eps log sigma(-beta * delta)
        Its gradient vanishes at sigma(beta delta) = 1 - eps instead of pushing delta to +inf.
      - ``"cdpo"``: the same as ``"sigmoid"`` (a name for users who look for cDPO).
      - ``"ipo"`` (Azar et al. 2023, "A General Theoretical Paradigm...", eq. 17):
            L = (delta_avg - 1 / (2 beta))^2,
            delta_avg = (pc - rc) / |y_w| - (pr - rr) / |y_l|
        IPO regresses the (per-token averaged) log-ratio gap onto a finite target, so it does
        not over-fit deterministic preferences. Needs ``chosen_lengths`` / ``rejected_lengths``
        ([B], number of completion tokens); here beta plays the role of the paper's tau.
      - ``"hinge"`` (Zhao et al. 2023, SLiC-HF, calibration loss with delta = 1 / beta):
            L = max(0, 1 - beta * delta)
      - ``"robust"`` (Chowdhury et al. 2024, "Provably Robust DPO", the unbiased rDPO loss):
            L = ((1 - eps) * l(beta delta) - eps * l(-beta delta)) / (1 - 2 eps),
            l(z) = -log sigma(z),  eps = label_smoothing in [0, 0.5)
        Unlike cDPO this is an unbiased estimate of the clean-label loss under flip rate eps.

    ``label_smoothing`` is the assumed label-flip rate; only ``sigmoid``/``cdpo``/``robust`` use
    it, so a non-zero value with ``ipo``/``hinge`` is an error rather than silently ignored.

    The implicit rewards (Rafailov et al. 2023, sec. 5) beta * (log pi - log pi_ref) of the
    summed log-probs are returned detached for every loss type, so logs stay comparable.
    """
    _check_same_shape(
        {
            "chosen_logps": chosen_logps,
            "rejected_logps": rejected_logps,
            "ref_chosen_logps": ref_chosen_logps,
            "ref_rejected_logps": ref_rejected_logps,
            "chosen_lengths": chosen_lengths,
            "rejected_lengths": rejected_lengths,
        },
        "dpo_losses",
    )
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(
            f"dpo_losses: unknown loss_type {loss_type!r}; choose one of {list(DPO_LOSS_TYPES)}."
        )
    if beta <= 0:
        raise ValueError(f"dpo_losses: beta must be > 0 (got {beta}); 0.1 is a common default.")
    eps = float(label_smoothing)
    if loss_type in ("ipo", "hinge") and eps != 0.0:
        raise ValueError(
            f"dpo_losses: label_smoothing={eps} has no meaning for loss_type={loss_type!r}; "
            "set it to 0, or use loss_type 'sigmoid' (cDPO) or 'robust' (rDPO)."
        )
    if loss_type == "robust" and not 0.0 <= eps < 0.5:
        raise ValueError(
            f"dpo_losses: loss_type='robust' needs 0 <= label_smoothing < 0.5 (got {eps}): "
            "the loss divides by 1 - 2 * label_smoothing."
        )
    if loss_type in ("sigmoid", "cdpo") and not 0.0 <= eps <= 0.5:
        raise ValueError(
            f"dpo_losses: label_smoothing must be in [0, 0.5] (got {eps}); it is the assumed "
            "probability that a preference label is flipped."
        )

    zero = torch.zeros_like(chosen_logps)
    ref_chosen = zero if ref_chosen_logps is None else ref_chosen_logps  # [B]
    ref_rejected = zero if ref_rejected_logps is None else ref_rejected_logps  # [B]
    chosen_logratios = chosen_logps - ref_chosen  # [B] pc - rc
    rejected_logratios = rejected_logps - ref_rejected  # [B] pr - rr
    delta = chosen_logratios - rejected_logratios  # [B]

    if loss_type in ("sigmoid", "cdpo", "robust"):
        loss_if_right = -F.logsigmoid(beta * delta)  # [B] l(beta delta): the label is right
        loss_if_flipped = -F.logsigmoid(-beta * delta)  # [B] l(-beta delta): it is flipped
        if loss_type == "robust":
            losses = ((1.0 - eps) * loss_if_right - eps * loss_if_flipped) / (1.0 - 2.0 * eps)
        else:
            losses = (1.0 - eps) * loss_if_right + eps * loss_if_flipped
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * delta)
    else:  # ipo
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(
                "dpo_losses: loss_type='ipo' averages the log-ratios per token, so it needs "
                "chosen_lengths and rejected_lengths ([B] completion token counts); pass "
                "mask.sum(-1) of each completion's loss mask."
            )
        delta_avg = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / (
            rejected_lengths.clamp(min=1)
        )  # [B]
        losses = (delta_avg - 1.0 / (2.0 * beta)) ** 2

    return PreferenceLosses(
        losses=losses,
        chosen_rewards=(beta * chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
    )


def combined_dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float,
    loss_types: list[str],
    loss_weights: list[float] | None = None,
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> PreferenceLosses:
    """sum_k w_k * L_k per pair, for several ``dpo_losses`` types on the same log-probs.

    ``loss_weights`` defaults to 1.0 for every type. ``label_smoothing`` is passed to the types
    that use it (sigmoid, cdpo, robust) and not to ipo/hinge. The rewards are identical for all
    types, so they are returned once.
    """
    if not loss_types:
        raise ValueError(
            "combined_dpo_loss: loss_types is empty; give at least one, e.g. ['sigmoid']."
        )
    weights = [1.0] * len(loss_types) if loss_weights is None else list(loss_weights)
    if len(weights) != len(loss_types):
        raise ValueError(
            f"combined_dpo_loss: {len(loss_types)} loss_types {loss_types} but {len(weights)} "
            f"loss_weights {weights}; give one weight per type (or none for all 1.0)."
        )
    total: torch.Tensor | None = None
    parts: PreferenceLosses | None = None
    for loss_type, weight in zip(loss_types, weights):
        smoothing = label_smoothing if loss_type in ("sigmoid", "cdpo", "robust") else 0.0
        parts = dpo_losses(
            chosen_logps,
            rejected_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            beta=beta,
            loss_type=loss_type,
            label_smoothing=smoothing,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
        )
        term = weight * parts.losses  # [B]
        total = term if total is None else total + term
    assert total is not None and parts is not None
    return PreferenceLosses(total, parts.chosen_rewards, parts.rejected_rewards)


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float = 0.0,
) -> torch.Tensor:
    """Pairwise reward-model loss under the Bradley-Terry model, per pair ([B] -> [B]).

        L = -log sigma(r_c - r_r - m) + c * (r_c + r_r)^2

    - Bradley & Terry (1952); Ouyang et al. 2022 (InstructGPT) eq. 1: P(y_w > y_l) =
      sigma(r_c - r_r), trained by maximum likelihood.
    - m (``margin``, [B]): Touvron et al. 2023 (Llama 2) sec. 3.2.2 ask for a larger score gap on
      pairs the annotators rated as clearly better; m = 0 recovers the plain loss.
    - c (``center_rewards_coefficient``): Eisenstein et al. 2023 ("Helping or Herding?")
      auxiliary term that keeps scores centred on 0, since BT is blind to a constant shift.

    ``F.logsigmoid`` is used instead of log(sigmoid(.)) so large negative gaps don't give -inf.
    """
    _check_same_shape(
        {"chosen_scores": chosen_scores, "rejected_scores": rejected_scores, "margin": margin},
        "bradley_terry_loss",
    )
    gap = chosen_scores - rejected_scores  # [B]
    if margin is not None:
        gap = gap - margin
    losses = -F.logsigmoid(gap)  # [B]
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (chosen_scores + rejected_scores) ** 2
    return losses
