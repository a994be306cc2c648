"""Advantages, returns and value-function pieces for online RL.

Two families:

- critic-free, from one scalar reward per completion sampled in groups of G per prompt (GRPO,
  RLOO, REINFORCE++): ``group_advantages``, ``zero_std_groups``, ``rloo_advantages``,
  ``reinforce_pp_advantages``, ``reinforce_pp_baseline_advantages``;
- PPO with a learned critic: ``sequence_rewards_to_tokens`` (KL-shaped per-token rewards),
  ``gae``, ``clipped_value_loss``, ``explained_variance`` and the KL coefficient controllers.

Group layout: rewards [N] hold N / G contiguous groups, rows i*G .. i*G + G - 1 belong to prompt
i (this is how the sampler repeats each prompt G times). Token tensors are [B, T] with a 0/1
``mask`` of real completion tokens, right-padded (each row's valid tokens come first).

Advantages and returns are targets, not things to differentiate through: call these under
``torch.no_grad()`` (or on detached tensors).
"""

from __future__ import annotations

import torch

from posttrain.ops.stats import masked_mean, masked_var, masked_whiten

ADVANTAGE_SCALES = ("group", "batch", "none")


def _grouped(rewards: torch.Tensor, group_size: int, where: str) -> torch.Tensor:
    """[N] -> [N / G, G], with a clear error when the layout is wrong."""
    if rewards.dim() != 1:
        raise ValueError(f"{where}: rewards must be 1-D [N], got shape {tuple(rewards.shape)}.")
    if group_size < 2:
        raise ValueError(
            f"{where}: group_size must be >= 2 (got {group_size}); a single completion per "
            "prompt has no group to compare against. Sample several completions per prompt."
        )
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"{where}: {rewards.numel()} rewards is not a multiple of group_size={group_size}; "
            "rewards must hold whole groups of completions laid out contiguously per prompt."
        )
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO outcome advantages (Shao et al. 2024, "DeepSeekMath", sec. 4.1.2), [N] -> [N]:

        A_i = (r_i - mean(r_group)) / (std + eps)

    - ``scale="group"``: std over the completion's own group (the paper);
    - ``scale="batch"``: std of all N rewards, a steadier scale when groups are small;
    - ``scale="none"``: no division (Liu et al. 2025, Dr. GRPO: dividing by the group std
      up-weights prompts that are almost always solved or almost never solved).

    std is the unbiased (Bessel, n - 1) estimate, torch.std's default. A group whose rewards are
    all equal gets A = 0 everywhere (see ``zero_std_groups``), never a division by zero.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(
            f"group_advantages: unknown scale {scale!r}; choose one of {list(ADVANTAGE_SCALES)}."
        )
    grouped = _grouped(rewards, group_size, "group_advantages")  # [N/G, G]
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # [N/G, G]
    if scale == "group":
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)  # std: [N/G, 1]
    elif scale == "batch":
        centered = centered / (rewards.std() + eps)  # std: scalar over all N rewards
    return centered.reshape(-1)  # [N]


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] -> bool [N / G]: groups whose G rewards are all equal (their GRPO/RLOO advantages are
    0, so they carry no learning signal; DAPO's dynamic sampling drops or resamples them)."""
    grouped = _grouped(rewards, group_size, "zero_std_groups")  # [N/G, G]
    return grouped.max(dim=1).values == grouped.min(dim=1).values


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024, eq. 5):

        A_i = r_i - (sum_j r_j - r_i) / (G - 1)

    The baseline is the mean reward of the *other* G - 1 completions of the same prompt, so it
    is independent of sample i and the estimator stays unbiased. [N] -> [N].
    """
    grouped = _grouped(rewards, group_size, "rloo_advantages")  # [N/G, G]
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # [N/G, G]
    return (grouped - others_mean).reshape(-1)


def _check_token_shapes(where: str, mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    if mask.dim() != 2:
        raise ValueError(f"{where}: mask must be [B, T], got shape {tuple(mask.shape)}.")
    for name, tensor in tensors.items():
        if tensor.shape != mask.shape:
            raise ValueError(
                f"{where}: {name} has shape {tuple(tensor.shape)} but mask has "
                f"{tuple(mask.shape)}; both must be [B, T] over the same completion tokens."
            )


def _discounted_returns(token_rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1}, right to left along T. [B, T] -> [B, T]."""
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])  # [B]
    for t in reversed(range(token_rewards.shape[1])):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns


def reinforce_pp_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """REINFORCE++ advantages (Hu 2025): the discounted return-to-go of each token,

        G_t = sum_{s >= t} gamma^(s - t) r_s,

    whitened over all valid tokens of the batch (global normalisation in place of a critic or
    a per-prompt baseline). token_rewards, mask: [B, T] -> [B, T], 0 at padding. Rewards at
    padded positions are ignored.
    """
    _check_token_shapes("reinforce_pp_advantages", mask, token_rewards=token_rewards)
    mask = mask.to(token_rewards.dtype)
    returns = _discounted_returns(token_rewards * mask, gamma)  # [B, T]
    return masked_whiten(returns, mask)


def reinforce_pp_baseline_advantages(
    rewards: torch.Tensor, group_size: int, mask: torch.Tensor
) -> torch.Tensor:
    """REINFORCE++-baseline advantages (Hu 2025), [N] rewards + [N, T] mask -> [N, T]:

        A_i = r_i - mean(r_group(i)),  then broadcast to every valid token of completion i and
        whitened over all valid tokens of the batch.

    The group mean removes the prompt's difficulty (as in GRPO) without dividing by a group std;
    the batch-wide whitening sets the scale. Whitening statistics are taken over tokens, as for
    ``reinforce_pp_advantages``, so a long completion counts once per token.
    """
    grouped = _grouped(rewards, group_size, "reinforce_pp_baseline_advantages")  # [N/G, G]
    if mask.dim() != 2 or mask.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"reinforce_pp_baseline_advantages: mask must be [N, T] with N={rewards.shape[0]} "
            f"rows (one per reward), got shape {tuple(mask.shape)}."
        )
    centered = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)  # [N]
    mask = mask.to(rewards.dtype)
    return masked_whiten(centered[:, None] * mask, mask)  # [N, T]


def sequence_rewards_to_tokens(
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """PPO per-token rewards with a KL penalty (Ziegler et al. 2019, eq. 2; Ouyang et al. 2022,
    eq. 2):

        r_t = -kl_coef * kl_t  +  [t is the completion's last token] * score

    The reward model scores the whole completion, so its score is paid on the last valid token;
    the KL penalty is paid on every token where it is incurred. scores: [B]; mask, kl: [B, T]
    -> [B, T], 0 at padding. A row with no valid token gets no reward at all.
    """
    if scores.shape != mask.shape[:1]:
        raise ValueError(
            f"sequence_rewards_to_tokens: scores has shape {tuple(scores.shape)} but mask has "
            f"{tuple(mask.shape)}; give one score per row ([B])."
        )
    mask = mask.to(scores.dtype)
    if kl is None:
        if kl_coef != 0.0:
            raise ValueError(
                f"sequence_rewards_to_tokens: kl_coef={kl_coef} but no kl was given; pass the "
                "per-token KL estimate ([B, T], see ops.policy.kl_estimate) or set kl_coef=0."
            )
        rewards = torch.zeros_like(mask)  # [B, T]
    else:
        _check_token_shapes("sequence_rewards_to_tokens", mask, kl=kl)
        rewards = -kl_coef * kl * mask  # [B, T]
    positions = torch.arange(mask.shape[1], device=mask.device)  # [T]
    last = (positions * (mask > 0)).argmax(dim=1)  # [B] index of the last valid token
    has_tokens = (mask > 0).any(dim=1)  # [B]
    rows = torch.arange(mask.shape[0], device=mask.device)  # [B]
    rewards = rewards.clone()
    rewards[rows, last] += scores * has_tokens.to(scores.dtype)
    return rewards


def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015, eqs. 11-16):

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V   (the value-function targets, TD(lambda) returns)

    Each row ends after its last valid token: V and A beyond it are 0, so whatever the critic
    outputs at padded positions never leaks into the real tokens. gamma = lam = 1 gives
    A_t = (sum of future rewards) - V_t (Monte-Carlo); lam = 0 gives the one-step TD error.

    token_rewards, values, mask: [B, T] (right-padded) -> (advantages, returns), [B, T] each,
    0 at padding. Advantages are not whitened here; use ``ops.stats.masked_whiten``.
    """
    _check_token_shapes("gae", mask, token_rewards=token_rewards, values=values)
    mask = mask.to(values.dtype)
    values = values * mask  # [B, T] V = 0 from the end of each row on
    rewards = token_rewards * mask  # [B, T]
    advantages = torch.zeros_like(values)  # [B, T]
    next_value = torch.zeros_like(values[:, 0])  # [B]
    next_advantage = torch.zeros_like(values[:, 0])  # [B]
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # [B]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]  # [B]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped value loss (as in the PPO reference implementation, Schulman et al. 2017):

        V_clip = clip(V, V_old - c, V_old + c)
        l_t    = 0.5 * max((V - R)^2, (V_clip - R)^2)

    The max is pessimistic: the critic cannot lower its loss by moving more than c away from the
    values it predicted at rollout time. values, old_values, returns, mask: [B, T] ->
    (per_token_loss [B, T], 0 at padding; clip_fraction, the share of valid tokens where the
    clipped term is the larger one, a detached scalar).
    """
    _check_token_shapes(
        "clipped_value_loss", mask, values=values, old_values=old_values, returns=returns
    )
    mask = mask.to(values.dtype)
    clipped = torch.clamp(values, old_values - clip, old_values + clip)  # [B, T]
    unclipped_loss = (values - returns) ** 2  # [B, T]
    clipped_loss = (clipped - returns) ** 2  # [B, T]
    per_token_loss = 0.5 * torch.max(unclipped_loss, clipped_loss) * mask  # [B, T]
    clip_fraction = masked_mean((clipped_loss > unclipped_loss).to(values.dtype), mask)
    return per_token_loss, clip_fraction.detach()


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over valid tokens (a critic diagnostic, detached scalar):
    1 is a perfect critic, 0 is no better than predicting the mean, < 0 is worse. NaN when the
    returns have no variance (the ratio is undefined)."""
    _check_token_shapes("explained_variance", mask, values=values, returns=returns)
    mask = mask.to(values.dtype)
    with torch.no_grad():
        var_returns = masked_var(returns, mask)
        if var_returns == 0:
            return torch.tensor(float("nan"), dtype=values.dtype, device=values.device)
        return 1.0 - masked_var(returns - values, mask) / var_returns


class FixedKLController:
    """A constant KL coefficient, with the same interface as ``AdaptiveKLController``."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, sec. 2.2): steer the measured KL(pi||pi_ref)
    towards ``target``:

        e_t    = clip(KL_t / target - 1, -0.2, 0.2)
        beta  <- beta * (1 + K_beta * e_t),  K_beta = n_steps / horizon

    KL above target raises the penalty, below lowers it; the clip bounds each update.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(
                f"AdaptiveKLController: target and horizon must be > 0 (got target={target}, "
                f"horizon={horizon}); e.g. target=6.0, horizon=10000."
            )
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move ``value`` after a rollout of ``n_steps`` samples whose mean KL was current_kl."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
