"""Online-RL math (posttrain.ops.policy, posttrain.ops.advantages) against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.ops.advantages import (
    AdaptiveKLController,
    FixedKLController,
    clipped_value_loss,
    explained_variance,
    gae,
    group_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    sequence_rewards_to_tokens,
    zero_std_groups,
)
from posttrain.ops.policy import aggregate_token_loss, clipped_surrogate, kl_estimate
from posttrain.ops.stats import masked_whiten


def close(actual: torch.Tensor, expected, tol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=tol, rtol=0)


# ----------------------------------------------------------------------------- KL estimators


def kl_case() -> tuple[torch.Tensor, torch.Tensor]:
    # log r = ref - logp = [0, 1, -1, ln 2]
    logp = torch.tensor([[-1.0, -2.0, -1.0, -2.0]])
    ref = torch.tensor([[-1.0, -1.0, -2.0, -2.0 + math.log(2.0)]])
    return logp, ref


def test_kl_estimators_by_hand():
    logp, ref = kl_case()
    # k1 = -log r = [0, -1, 1, -ln 2]
    close(kl_estimate(logp, ref, "k1"), [[0.0, -1.0, 1.0, -0.69314718]])
    # k2 = (log r)^2 / 2 = [0, 0.5, 0.5, 0.48045301 / 2]
    close(kl_estimate(logp, ref, "k2"), [[0.0, 0.5, 0.5, 0.24022651]])
    # k3 = r - 1 - log r = [0, e - 2, 1/e - 1 + 1, 2 - 1 - ln 2]
    close(kl_estimate(logp, ref, "k3"), [[0.0, 0.71828183, 0.36787944, 0.30685282]])


def test_k3_nonnegative_and_zero_when_equal():
    torch.manual_seed(0)
    logp = torch.randn(8, 16)
    ref = torch.randn(8, 16)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert (kl_estimate(logp, ref, "k2") >= 0).all()
    for estimator in ("k1", "k2", "k3"):
        close(kl_estimate(logp, logp, estimator), torch.zeros(8, 16))


def test_k1_k3_are_unbiased_for_exact_kl():
    # E_{v ~ p}[k(v)] = sum_v p_v k(v) must equal KL(p || q) exactly for k1 and k3
    # (sum_v p_v (q_v / p_v - 1) = 1 - 1 = 0, leaving sum_v p_v log(p_v / q_v)).
    torch.manual_seed(1)
    logp = torch.log_softmax(torch.randn(5, dtype=torch.float64), dim=0)
    logq = torch.log_softmax(torch.randn(5, dtype=torch.float64), dim=0)
    exact = (logp.exp() * (logp - logq)).sum()
    for estimator in ("k1", "k3"):
        expectation = (logp.exp() * kl_estimate(logp[None], logq[None], estimator)[0]).sum()
        close(expectation, exact, tol=1e-12)


def test_kl_bad_arguments():
    logp, ref = kl_case()
    with pytest.raises(ValueError, match="unknown estimator"):
        kl_estimate(logp, ref, "k4")
    with pytest.raises(ValueError, match="same shape"):
        kl_estimate(logp, ref[:, :2])


# ----------------------------------------------------------------------------- PPO surrogate


def test_ratio_one_gives_minus_advantage():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    advantages = torch.tensor([[1.0], [-2.0]])  # [B, 1]: one advantage per sequence
    loss, low, high = clipped_surrogate(logp, logp.clone(), advantages)
    close(loss, [[-1.0, -1.0, -1.0], [2.0, 2.0, 2.0]])
    assert low.shape == high.shape == (2, 3)
    assert not low.any() and not high.any()


def test_clipping_cases_by_hand():
    # eps = 0.2, clip range [0.8, 1.2]; ratios r and advantages A per token:
    #   a) r=1.5, A=+1: -min(1.5, 1.2)    = -1.2  upper clip binds  (grad 0)
    #   b) r=1.5, A=-1: -min(-1.5, -1.2)  =  1.5  not clipped       (grad -r A = 1.5)
    #   c) r=0.5, A=-1: -min(-0.5, -0.8)  =  0.8  lower clip binds  (grad 0)
    #   d) r=0.5, A=+1: -min(0.5, 0.8)    = -0.5  not clipped       (grad -0.5)
    #   e) r=1.1, A=+2: -min(2.2, 2.2)    = -2.2  inside the range  (grad -2.2)
    ratios = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1]])
    advantages = torch.tensor([[1.0, -1.0, -1.0, 1.0, 2.0]])
    old = torch.full((1, 5), -2.0)
    logp = (old + ratios.log()).requires_grad_(True)
    loss, low, high = clipped_surrogate(logp, old, advantages, epsilon_low=0.2)
    close(loss.detach(), [[-1.2, 1.5, 0.8, -0.5, -2.2]])
    assert high.tolist() == [[True, False, False, False, False]]
    assert low.tolist() == [[False, False, True, False, False]]
    loss.sum().backward()
    # d(-r A)/d logp = -r A (since dr/dlogp = r)
    close(logp.grad, [[0.0, 1.5, 0.0, -0.5, -2.2]])


def test_clip_higher_is_asymmetric():
    # r = 1.25, A = 1: symmetric eps 0.2 clips to 1.2 -> -1.2;
    # DAPO eps_high = 0.28 leaves it inside [0.8, 1.28] -> -1.25
    old = torch.zeros(1, 1)
    logp = torch.tensor([[math.log(1.25)]])
    a = torch.ones(1, 1)
    close(clipped_surrogate(logp, old, a).per_token_loss, [[-1.2]])
    out = clipped_surrogate(logp, old, a, epsilon_low=0.2, epsilon_high=0.28)
    close(out.per_token_loss, [[-1.25]])
    assert not out.is_clipped_high.any()
    # the low side still uses eps_low: r = 0.75, A = -1 -> clip to 0.8 -> loss 0.8
    logp = torch.tensor([[math.log(0.75)]])
    out = clipped_surrogate(logp, old, -a, epsilon_low=0.2, epsilon_high=0.28)
    close(out.per_token_loss, [[0.8]])
    assert out.is_clipped_low.all()


def test_surrogate_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        clipped_surrogate(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="epsilon_low"):
        clipped_surrogate(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), epsilon_low=1.0)


# ----------------------------------------------------------------------------- loss aggregation

PAD = 100.0  # garbage at padded positions: must never reach the result


def uneven_batch() -> tuple[torch.Tensor, torch.Tensor]:
    # lengths 1, 2, 3, 4
    losses = torch.tensor(
        [
            [1.0, PAD, PAD, PAD],
            [2.0, 4.0, PAD, PAD],
            [1.0, 2.0, 3.0, PAD],
            [1.0, 1.0, 1.0, 1.0],
        ]
    )
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    return losses, mask


def test_aggregation_values_by_hand():
    losses, mask = uneven_batch()
    # per-row sums 1, 6, 6, 4 (total 17); lengths 1, 2, 3, 4 (total 10); means 1, 3, 2, 1
    kwargs = {"total_sequences": 4, "total_tokens": 10, "max_completion_length": 5}
    # grpo: (1 + 3 + 2 + 1) / 4 = 1.75
    close(aggregate_token_loss(losses, mask, "grpo", **kwargs), 1.75)
    # dapo: 17 / 10 = 1.7
    close(aggregate_token_loss(losses, mask, "dapo", **kwargs), 1.7)
    # dr_grpo: 17 / (4 * 5) = 0.85
    close(aggregate_token_loss(losses, mask, "dr_grpo", **kwargs), 0.85)
    # bnpo, one micro-batch: 17 / 10 = 1.7
    close(aggregate_token_loss(losses, mask, "bnpo", num_micro_batches=1), 1.7)
    # totals default to this micro-batch's own counts
    close(aggregate_token_loss(losses, mask, "grpo"), 1.75)
    close(aggregate_token_loss(losses, mask, "dapo"), 1.7)


def split_total(loss_type: str, rows_per_micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the micro-batch shares and the gradient wrt a leaf holding the per-token losses."""
    losses, mask = uneven_batch()
    leaf = losses.clone().requires_grad_(True)
    per_token = leaf**2  # something non-linear so the gradient depends on the values
    n_micro = 4 // rows_per_micro
    total = torch.zeros(())
    for start in range(0, 4, rows_per_micro):
        rows = slice(start, start + rows_per_micro)
        total = total + aggregate_token_loss(
            per_token[rows],
            mask[rows],
            loss_type,
            total_sequences=4,
            total_tokens=int(mask.sum()),
            max_completion_length=5,
            num_micro_batches=n_micro,
        )
    total.backward()
    return total.detach(), leaf.grad


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batch_split_is_invariant(loss_type):
    whole, whole_grad = split_total(loss_type, 4)
    assert whole_grad[0, 1:].abs().sum() == 0  # padding gets no gradient
    for rows_per_micro in (1, 2):
        part, part_grad = split_total(loss_type, rows_per_micro)
        close(part, whole)
        close(part_grad, whole_grad)


def test_bnpo_depends_on_split_by_definition():
    losses, mask = uneven_batch()
    # 1x4: 17 / 10 = 1.7.  2x2: (1 + 6) / 3 / 2 + (6 + 4) / 7 / 2 = 1.16666667 + 0.71428571
    whole = aggregate_token_loss(losses, mask, "bnpo", num_micro_batches=1)
    halves = sum(
        aggregate_token_loss(losses[r], mask[r], "bnpo", num_micro_batches=2)
        for r in (slice(0, 2), slice(2, 4))
    )
    close(whole, 1.7)
    close(halves, 1.88095238)


def test_aggregation_empty_rows_and_errors():
    losses = torch.tensor([[PAD, PAD], [2.0, 4.0]])
    mask = torch.tensor([[0, 0], [1, 1]])
    # grpo: the empty row counts as a sequence with mean 0: (0 + 3) / 2 = 1.5
    close(aggregate_token_loss(losses, mask, "grpo"), 1.5)
    close(aggregate_token_loss(losses[:1], mask[:1], "dapo"), 0.0)
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_token_loss(losses, mask, "dr_grpo")
    with pytest.raises(ValueError, match="unknown loss_type"):
        aggregate_token_loss(losses, mask, "mean")
    with pytest.raises(ValueError, match="same shape"):
        aggregate_token_loss(losses, mask[:, :1], "dapo")


# ----------------------------------------------------------------------------- group advantages

REWARDS = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])  # two groups of G = 3


def test_group_advantages_by_hand():
    # group 1: mean 2, deviations [-1, 0, 1], unbiased std sqrt(2 / 2) = 1
    # group 2: mean 2, deviations [-2, -2, 4], unbiased std sqrt(24 / 2) = sqrt(12) = 3.46410162
    s1, s2 = 1.0 + 1e-4, 12**0.5 + 1e-4
    expected = [-1 / s1, 0.0, 1 / s1, -2 / s2, -2 / s2, 4 / s2]
    close(group_advantages(REWARDS, 3), expected)
    # batch std over all 6: mean 2, squares 1 + 0 + 1 + 4 + 4 + 16 = 26, var 26 / 5 = 5.2
    sb = 5.2**0.5 + 1e-4
    close(group_advantages(REWARDS, 3, scale="batch"), [d / sb for d in [-1, 0, 1, -2, -2, 4]])
    close(group_advantages(REWARDS, 3, scale="none"), [-1.0, 0.0, 1.0, -2.0, -2.0, 4.0])


def test_zero_std_groups():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    assert zero_std_groups(rewards, 3).tolist() == [True, False]
    # all-equal group: A = 0 / (0 + eps) = 0, not NaN; group 2: mean 1/3, std sqrt(1/3)
    adv = group_advantages(rewards, 3)
    close(adv[:3], [0.0, 0.0, 0.0])
    s = (1 / 3) ** 0.5 + 1e-4
    close(adv[3:], [(-1 / 3) / s, (2 / 3) / s, (-1 / 3) / s])


def test_group_layout_errors():
    with pytest.raises(ValueError, match="not a multiple of group_size=4"):
        group_advantages(REWARDS, 4)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        rloo_advantages(REWARDS, 1)
    with pytest.raises(ValueError, match="unknown scale"):
        group_advantages(REWARDS, 3, scale="std")
    with pytest.raises(ValueError, match="1-D"):
        zero_std_groups(REWARDS[None], 3)


def test_rloo_by_hand():
    # group 1: 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5
    # group 2: 0 - (0+6)/2 = -3,   0 - 3 = -3,      6 - (0+0)/2 = 6
    close(rloo_advantages(REWARDS, 3), [-1.5, 0.0, 1.5, -3.0, -3.0, 6.0])
    # identity: A = G / (G - 1) * (r - group mean)
    close(rloo_advantages(REWARDS, 3), 1.5 * group_advantages(REWARDS, 3, scale="none"))


# ----------------------------------------------------------------------------- REINFORCE++


def test_reinforce_pp_returns_then_whitening():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])  # 9.0 is padding
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # gamma 0.5 returns-to-go: row 0 [0.25, 0.5, 1], row 1 [1, 2, -]
    # mean 4.75 / 5 = 0.95; deviations [-0.7, -0.45, 0.05, 0.05, 1.05];
    # squares 0.49 + 0.2025 + 0.0025 + 0.0025 + 1.1025 = 1.8; unbiased var 1.8 / 4 = 0.45
    s = (0.45 + 1e-8) ** 0.5
    expected = [[-0.7 / s, -0.45 / s, 0.05 / s], [0.05 / s, 1.05 / s, 0.0]]
    close(reinforce_pp_advantages(rewards, mask, gamma=0.5), expected, tol=1e-5)


def test_reinforce_pp_baseline():
    rewards = torch.tensor([2.0, 0.0, 1.0, 1.0])  # G = 2: centred [1, -1, 0, 0]
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0]])
    # token values 1, 1, -1, -1, 0, 0: mean 0, unbiased var 4 / 5 = 0.8
    s = (0.8 + 1e-8) ** 0.5
    expected = [[1 / s, 1 / s, 0.0], [-1 / s, -1 / s, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    close(reinforce_pp_baseline_advantages(rewards, 2, mask), expected, tol=1e-5)
    with pytest.raises(ValueError, match="mask must be"):
        reinforce_pp_baseline_advantages(rewards, 2, mask[:2])


# ----------------------------------------------------------------------------- PPO rewards


def test_kl_shaping_lands_on_the_right_tokens():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]])
    kl = torch.full((4, 4), 0.5)
    # -0.1 * 0.5 = -0.05 on valid tokens, score added on each row's last valid token;
    # the empty row gets nothing; row 3 (mask starting late) still ends at index 2
    expected = [
        [-0.05, -0.05, 0.95, 0.0],
        [1.95, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, -0.05, 3.95, 0.0],
    ]
    close(sequence_rewards_to_tokens(scores, mask, kl, kl_coef=0.1), expected)
    no_kl = sequence_rewards_to_tokens(scores, mask)
    close(no_kl, [[0, 0, 1.0, 0], [2.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 4.0, 0]])


def test_kl_shaping_errors():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="no kl was given"):
        sequence_rewards_to_tokens(torch.zeros(2), mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="one score per row"):
        sequence_rewards_to_tokens(torch.zeros(3), mask)
    with pytest.raises(ValueError, match="kl has shape"):
        sequence_rewards_to_tokens(torch.zeros(2), mask, torch.zeros(2, 2), kl_coef=0.1)


# ----------------------------------------------------------------------------- GAE


def test_gae_monte_carlo_when_gamma_lambda_one():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.0, 5.0, PAD, PAD]])
    values = torch.tensor([[0.3, -1.0, 2.0, 0.7], [4.0, 1.0, PAD, PAD]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # returns = sum of future rewards: row 0 [6, 5, 3, 0], row 1 [5, 5, 0, 0]
    close(returns, [[6.0, 5.0, 3.0, 0.0], [5.0, 5.0, 0.0, 0.0]])
    close(advantages, [[5.7, 6.0, 1.0, -0.7], [1.0, 4.0, 0.0, 0.0]])


def test_gae_four_tokens_by_hand():
    # gamma 0.9, lam 0.95 (gamma * lam = 0.855), r = [0, 0, 0, 1], V = [0.5, 0.6, 0.7, 0.8]
    #   delta_3 = 1 + 0.9 * 0   - 0.8 = 0.2
    #   delta_2 = 0 + 0.9 * 0.8 - 0.7 = 0.02
    #   delta_1 = 0 + 0.9 * 0.7 - 0.6 = 0.03
    #   delta_0 = 0 + 0.9 * 0.6 - 0.5 = 0.04
    #   A_3 = 0.2
    #   A_2 = 0.02 + 0.855 * 0.2      = 0.191
    #   A_1 = 0.03 + 0.855 * 0.191    = 0.193305
    #   A_0 = 0.04 + 0.855 * 0.193305 = 0.205275775
    #   returns = A + V = [0.705275775, 0.793305, 0.891, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7, 0.8]], dtype=torch.float64)
    advantages, returns = gae(rewards, values, torch.ones(1, 4), gamma=0.9, lam=0.95)
    close(advantages, [[0.205275775, 0.193305, 0.191, 0.2]], tol=1e-12)
    close(returns, [[0.705275775, 0.793305, 0.891, 1.0]], tol=1e-12)


def test_gae_lambda_zero_is_td_error():
    # lam = 0: A_t = delta_t = r_t + gamma V_{t+1} - V_t; gamma 0.5, r = [1, 2], V = [1, 4]
    #   A_0 = 1 + 0.5 * 4 - 1 = 2, A_1 = 2 + 0 - 4 = -2
    advantages, _ = gae(
        torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 4.0]]), torch.ones(1, 2), 0.5, 0.0
    )
    close(advantages, [[2.0, -2.0]])


def test_gae_uneven_lengths_equal_rows_alone():
    torch.manual_seed(0)
    lengths = [5, 2, 4, 1]
    rewards = torch.randn(4, 5)
    values = torch.randn(4, 5)
    mask = (torch.arange(5)[None] < torch.tensor(lengths)[:, None]).int()
    rewards = torch.where(mask.bool(), rewards, torch.full_like(rewards, PAD))
    values = torch.where(mask.bool(), values, torch.full_like(values, -PAD))
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.95)
    for i, n in enumerate(lengths):
        alone_a, alone_r = gae(
            rewards[i : i + 1, :n], values[i : i + 1, :n], mask[i : i + 1, :n], 0.9, 0.95
        )
        close(advantages[i, :n], alone_a[0])
        close(returns[i, :n], alone_r[0])
        close(advantages[i, n:], torch.zeros(5 - n))
        close(returns[i, n:], torch.zeros(5 - n))


# ----------------------------------------------------------------------------- value function


def test_clipped_value_loss_by_hand():
    # clip c = 0.2, R = 1 for the three valid tokens:
    #   a) V=1.0, V_old=0.5: V_clip=0.7; max(0, 0.09)    -> 0.045, the clipped term is larger
    #   b) V=0.6, V_old=0.5: V_clip=0.6; max(0.16, 0.16) -> 0.08, a tie: not counted as clipped
    #   c) V=0.0, V_old=0.5: V_clip=0.3; max(1, 0.49)    -> 0.5
    #   d) padding (V=5, V_old=0, R=0)                   -> 0, not counted
    values = torch.tensor([[1.0, 0.6, 0.0, 5.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clip_fraction = clipped_value_loss(values, old, returns, mask, clip=0.2)
    close(loss.detach(), [[0.045, 0.08, 0.5, 0.0]])
    close(clip_fraction, 1 / 3)
    assert not clip_fraction.requires_grad
    loss.sum().backward()
    # a) the clipped branch is constant in V -> 0; c) d/dV 0.5 (V - R)^2 = V - R = -1
    close(values.grad[0, [0, 2, 3]], [0.0, -1.0, 0.0])


def test_explained_variance():
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, PAD]])
    close(explained_variance(returns, returns, mask), 1.0)
    close(explained_variance(torch.zeros(1, 5), returns, mask), 0.0)
    # R - V = [0, 0, 0, -1]: mean -0.25, var (3 * 0.0625 + 0.5625) / 3 = 0.25
    # Var R = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3 -> 1 - 0.25 / (5/3) = 0.85
    values = torch.tensor([[1.0, 2.0, 3.0, 5.0, -PAD]])
    close(explained_variance(values, returns, mask), 0.85)
    assert torch.isnan(explained_variance(values, torch.ones(1, 5), mask))


def test_whitening_of_advantages():
    # advantages [1, 2, 3] + padding: mean 2, unbiased var 1 -> whitened [-1, 0, 1], 0 at padding
    adv = torch.tensor([[1.0, 2.0, 3.0, PAD]])
    close(masked_whiten(adv, torch.tensor([[1, 1, 1, 0]])), [[-1.0, 0.0, 1.0, 0.0]], tol=1e-6)


# ----------------------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_moves_towards_target():
    # init 0.1, target 6, horizon 10000, n_steps 100 (K = 0.01):
    #   KL 12  -> error clip(1, +-0.2) = 0.2    -> 0.1 * (1 + 0.002) = 0.1002
    #   KL 3   -> error clip(-0.5)     = -0.2   -> 0.1 * (1 - 0.002) = 0.0998
    #   KL 6.6 -> error 0.1 (unclipped)         -> 0.1 * (1 + 0.001) = 0.1001
    #   KL 6   -> error 0                       -> unchanged
    for kl, expected in [(12.0, 0.1002), (3.0, 0.0998), (6.6, 0.1001), (6.0, 0.1)]:
        controller = AdaptiveKLController(0.1, target=6.0, horizon=10000)
        controller.update(kl, n_steps=100)
        assert controller.value == pytest.approx(expected, abs=1e-12)
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    controller.update(torch.tensor(12.0), n_steps=100)  # tensors are accepted too
    assert controller.value == pytest.approx(0.1002)
    with pytest.raises(ValueError, match="target and horizon"):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_fixed_kl_controller():
    controller = FixedKLController(0.05)
    controller.update(100.0, n_steps=64)
    assert controller.value == 0.05
