"""Preference losses (posttrain.ops.preference) against numbers worked out by hand.

Shared 2-pair batch, beta = 0.5 (z := beta * delta, delta = (pc - rc) - (pr - rr)):

    pair 1: pc=-10, pr=-12, rc=-11, rr=-11 -> log-ratios +1, -1 -> delta =  2 -> z =  1.0
    pair 2: pc= -8, pr= -7, rc= -8, rr= -8 -> log-ratios  0, +1 -> delta = -1 -> z = -0.5

    -log sigma(z) = log(1 + e^-z):
        z = 1:    log(1 + 0.36787944) = log(1.36787944) = 0.31326169
        z = -0.5: log(1 + 1.64872127) = log(2.64872127) = 0.97407698
    and -log sigma(-z) = -log sigma(z) + z (since log sigma(z) - log sigma(-z) = z).

    implicit rewards beta * log-ratio: chosen [0.5, 0.0], rejected [-0.5, 0.5]
"""

from __future__ import annotations

import pytest
import torch

from posttrain.ops.preference import (
    PreferenceLosses,
    bradley_terry_loss,
    combined_dpo_loss,
    dpo_losses,
)

BETA = 0.5
NLL_Z1 = 0.31326169  # -log sigma(1)
NLL_ZM05 = 0.97407698  # -log sigma(-0.5)


def batch() -> dict[str, torch.Tensor]:
    return {
        "chosen_logps": torch.tensor([-10.0, -8.0]),
        "rejected_logps": torch.tensor([-12.0, -7.0]),
        "ref_chosen_logps": torch.tensor([-11.0, -8.0]),
        "ref_rejected_logps": torch.tensor([-11.0, -8.0]),
    }


def call(loss_type: str, **kwargs) -> PreferenceLosses:
    b = batch()
    return dpo_losses(
        b["chosen_logps"],
        b["rejected_logps"],
        b["ref_chosen_logps"],
        b["ref_rejected_logps"],
        beta=kwargs.pop("beta", BETA),
        loss_type=loss_type,
        **kwargs,
    )


def close(actual: torch.Tensor, expected: list[float], tol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=tol, rtol=0)


def test_sigmoid_values_and_rewards():
    out = call("sigmoid")
    close(out.losses, [NLL_Z1, NLL_ZM05])
    close(out.chosen_rewards, [0.5, 0.0])
    close(out.rejected_rewards, [-0.5, 0.5])
    # margins = chosen - rejected = [1.0, -0.5]; only pair 1 is ranked right
    close(out.reward_margins, [1.0, -0.5])
    close(out.reward_accuracies, [1.0, 0.0])


def test_rewards_are_detached():
    b = batch()
    policy_chosen = b["chosen_logps"].clone().requires_grad_(True)
    out = dpo_losses(
        policy_chosen,
        b["rejected_logps"],
        b["ref_chosen_logps"],
        b["ref_rejected_logps"],
        beta=BETA,
    )
    assert out.losses.requires_grad
    assert not out.chosen_rewards.requires_grad
    assert not out.rejected_rewards.requires_grad


def test_sigmoid_gradient_raises_chosen_lowers_rejected():
    b = batch()
    chosen = b["chosen_logps"].clone().requires_grad_(True)
    rejected = b["rejected_logps"].clone().requires_grad_(True)
    out = dpo_losses(chosen, rejected, b["ref_chosen_logps"], b["ref_rejected_logps"], beta=BETA)
    out.losses.sum().backward()
    # dL/dpc = -beta * sigma(-z), dL/dpr = +beta * sigma(-z):
    #   pair 1: sigma(-1) = 0.26894142 -> -/+ 0.13447071
    #   pair 2: sigma(0.5) = 0.62245933 -> -/+ 0.31122967
    close(chosen.grad, [-0.13447071, -0.31122967])
    close(rejected.grad, [0.13447071, 0.31122967])
    # gradient descent (param -= lr * grad) therefore raises chosen and lowers rejected logps
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


def test_cdpo_label_smoothing():
    # (1 - eps) l(z) + eps l(-z) = l(z) + eps * z, eps = 0.1:
    #   pair 1: 0.31326169 + 0.1 * 1    = 0.41326169
    #   pair 2: 0.97407698 + 0.1 * -0.5 = 0.92407698
    expected = [0.41326169, 0.92407698]
    close(call("sigmoid", label_smoothing=0.1).losses, expected)
    close(call("cdpo", label_smoothing=0.1).losses, expected)
    # cdpo without smoothing is plain DPO
    close(call("cdpo").losses, [NLL_Z1, NLL_ZM05])


def test_robust_dpo():
    # ((1 - eps) l(z) - eps (l(z) + z)) / (1 - 2 eps) = l(z) - eps z / (1 - 2 eps), eps = 0.1:
    #   pair 1: 0.31326169 - 0.1 * 1 / 0.8    = 0.31326169 - 0.125  = 0.18826169
    #   pair 2: 0.97407698 - 0.1 * -0.5 / 0.8 = 0.97407698 + 0.0625 = 1.03657698
    close(call("robust", label_smoothing=0.1).losses, [0.18826169, 1.03657698])
    # eps = 0 is plain DPO
    close(call("robust").losses, [NLL_Z1, NLL_ZM05])


def test_hinge():
    # relu(1 - z): pair 1 relu(1 - 1) = 0, pair 2 relu(1 + 0.5) = 1.5
    close(call("hinge").losses, [0.0, 1.5])


def test_ipo_averages_log_ratios_per_token():
    # lengths chosen [2, 4], rejected [4, 1]; target 1 / (2 beta) = 1
    #   pair 1: delta_avg = 1/2 - (-1)/4 = 0.75 -> (0.75 - 1)^2 = 0.0625
    #   pair 2: delta_avg = 0/4 - 1/1   = -1   -> (-1 - 1)^2   = 4
    out = call(
        "ipo", chosen_lengths=torch.tensor([2.0, 4.0]), rejected_lengths=torch.tensor([4.0, 1.0])
    )
    close(out.losses, [0.0625, 4.0])
    # rewards still use the summed log-ratios
    close(out.chosen_rewards, [0.5, 0.0])


def test_ipo_needs_lengths():
    with pytest.raises(ValueError, match="chosen_lengths and rejected_lengths"):
        call("ipo")


def test_reference_free():
    # refs None -> log pi_ref = 0: delta = -3 - (-5) = 2, z = 1 -> loss 0.31326169;
    # rewards 0.5 * -3 = -1.5, 0.5 * -5 = -2.5
    out = dpo_losses(torch.tensor([-3.0]), torch.tensor([-5.0]), None, None, beta=BETA)
    close(out.losses, [NLL_Z1])
    close(out.chosen_rewards, [-1.5])
    close(out.rejected_rewards, [-2.5])


def test_extreme_margins_stay_finite():
    out = dpo_losses(torch.tensor([0.0]), torch.tensor([-1e4]), None, None, beta=1.0)
    close(out.losses, [0.0])  # log(1 + e^-1e4) = 0
    out = dpo_losses(torch.tensor([-1e4]), torch.tensor([0.0]), None, None, beta=1.0)
    close(out.losses, [1e4], tol=1e-2)  # log(1 + e^1e4) ~ 1e4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_type": "nope"}, "unknown loss_type"),
        ({"loss_type": "sigmoid", "beta": 0.0}, "beta must be > 0"),
        ({"loss_type": "robust", "label_smoothing": 0.5}, "0 <= label_smoothing < 0.5"),
        ({"loss_type": "sigmoid", "label_smoothing": 0.7}, r"\[0, 0.5\]"),
        ({"loss_type": "hinge", "label_smoothing": 0.1}, "no meaning"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "no meaning"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        call(**kwargs)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        dpo_losses(torch.zeros(2), torch.zeros(3), None, None, beta=0.1)


def test_combined_weighted_sum():
    # sigmoid + 0.5 * hinge: pair 1 0.31326169 + 0.5 * 0 = 0.31326169
    #                        pair 2 0.97407698 + 0.5 * 1.5 = 1.72407698
    b = batch()
    out = combined_dpo_loss(**b, beta=BETA, loss_types=["sigmoid", "hinge"], loss_weights=[1, 0.5])
    close(out.losses, [0.31326169, 1.72407698])
    close(out.chosen_rewards, [0.5, 0.0])
    close(out.rejected_rewards, [-0.5, 0.5])


def test_combined_default_weights_and_smoothing_only_where_used():
    # cDPO(eps=0.1) + IPO (no smoothing), weights 1 + 1:
    #   pair 1: 0.41326169 + 0.0625 = 0.47576169;  pair 2: 0.92407698 + 4 = 4.92407698
    out = combined_dpo_loss(
        **batch(),
        beta=BETA,
        loss_types=["sigmoid", "ipo"],
        label_smoothing=0.1,
        chosen_lengths=torch.tensor([2.0, 4.0]),
        rejected_lengths=torch.tensor([4.0, 1.0]),
    )
    close(out.losses, [0.47576169, 4.92407698])


def test_combined_single_type_equals_dpo_losses():
    close(
        combined_dpo_loss(**batch(), beta=BETA, loss_types=["sigmoid"]).losses, [NLL_Z1, NLL_ZM05]
    )


def test_combined_bad_arguments():
    with pytest.raises(ValueError, match="one weight per type"):
        combined_dpo_loss(**batch(), beta=BETA, loss_types=["sigmoid", "hinge"], loss_weights=[1])
    with pytest.raises(ValueError, match="empty"):
        combined_dpo_loss(**batch(), beta=BETA, loss_types=[])


def test_bradley_terry_plain():
    # gaps r_c - r_r = [1, -1]: log(1 + e^-1) = 0.31326169, log(1 + e^1) = 1.31326169
    losses = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    close(losses, [0.31326169, 1.31326169])


def test_bradley_terry_margin_and_centering():
    # margin [0, 1], coef 0.01:
    #   pair 1: gap 1 - 0 = 1   -> 0.31326169 + 0.01 * (2 + 1)^2 = 0.31326169 + 0.09 = 0.40326169
    #   pair 2: gap -1 - 1 = -2 -> log(1 + e^2) = log(8.38905610) = 2.12692801
    #           + 0.01 * (0 + 1)^2 = 2.13692801
    losses = bradley_terry_loss(
        torch.tensor([2.0, 0.0]),
        torch.tensor([1.0, 1.0]),
        margin=torch.tensor([0.0, 1.0]),
        center_rewards_coefficient=0.01,
    )
    close(losses, [0.40326169, 2.13692801])


def test_bradley_terry_gradient_and_stability():
    chosen = torch.tensor([-1000.0, 0.0], requires_grad=True)
    rejected = torch.tensor([1000.0, 0.0], requires_grad=True)
    losses = bradley_terry_loss(chosen, rejected)
    # pair 1: -log sigma(-2000) = 2000 (finite thanks to logsigmoid); pair 2: log 2 = 0.69314718
    close(losses.detach(), [2000.0, 0.69314718], tol=1e-3)
    losses.sum().backward()
    # dL/dr_c = -sigma(-gap): pair 1 -> -1, pair 2 -> -0.5; dL/dr_r is the opposite
    close(chosen.grad, [-1.0, -0.5])
    close(rejected.grad, [1.0, 0.5])


def test_bradley_terry_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(2), margin=torch.zeros(3))
