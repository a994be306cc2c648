"""Properties of the RL math that must hold for any input (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.ops.advantages import group_advantages, rloo_advantages
from posttrain.ops.policy import kl_estimate
from posttrain.ops.sft import sft_loss

rewards_strategy = st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=8, max_size=8)


@settings(max_examples=50, deadline=None)
@given(rewards_strategy)
def test_group_advantages_have_zero_mean_per_group(values):
    advantages = group_advantages(torch.tensor(values), group_size=4, scale="none")
    for group in advantages.view(2, 4):
        assert abs(group.mean().item()) < 1e-4


@settings(max_examples=50, deadline=None)
@given(rewards_strategy)
def test_rloo_is_mean_advantage_times_g_over_g_minus_1(values):
    # r_i - mean_{j != i} r_j = G/(G-1) * (r_i - mean_j r_j)
    rewards = torch.tensor(values, dtype=torch.float64)
    expected = group_advantages(rewards, 4, scale="none") * 4 / 3
    torch.testing.assert_close(rloo_advantages(rewards, 4), expected)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-20, 0, allow_nan=False), min_size=6, max_size=6),
       st.lists(st.floats(-20, 0, allow_nan=False), min_size=6, max_size=6))
def test_k3_is_non_negative(logp, ref_logp):
    kl = kl_estimate(torch.tensor(logp, dtype=torch.float64),
                     torch.tensor(ref_logp, dtype=torch.float64), "k3")
    assert (kl >= -1e-12).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**16))
def test_sft_shares_add_up_for_any_split(micro, seed):
    generator = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(6, 5, generator=generator)
    mask = (torch.rand(6, 5, generator=generator) > 0.4).long()
    mask[:, 0] = 1
    whole = sft_loss(logprobs, mask, "token")
    shares = sum(sft_loss(logprobs[i : i + micro], mask[i : i + micro], "token",
                          step_tokens=mask.sum().item()) for i in range(0, 6, micro))
    torch.testing.assert_close(shares, whole)
