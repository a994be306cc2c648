"""RLOO, REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024): GRPO's round with
the baseline of each completion taken from the *other* completions of its prompt.

For G completions of a prompt with rewards r_1..r_G, every token of o_i gets

    A_i = r_i - (sum_j r_j - r_i) / (G - 1)          (Ahmadian et al. 2024, eq. 5)

The baseline does not depend on sample i, so the policy gradient stays unbiased; there is no
division by a group std (RLOO = GRPO's ``scale_rewards: none`` times G / (G - 1)). Everything
else (sampling, the clipped loss, beta * KL in the loss, batching) is ``online.OnlineRL``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from posttrain.algorithms.online import OnlineRL
from posttrain.algorithms.online_config import OnlineRLConfig
from posttrain.algorithms.rounds import AdvantageEstimator, RoundData
from posttrain.config import option
from posttrain.ops.advantages import rloo_advantages


@dataclass
class RLOOConfig(OnlineRLConfig):
    advantage_estimator: Literal["rloo"] = option(
        "rloo", "Fixed for this trainer: r_i minus the mean of the other G-1 rewards."
    )


class LeaveOneOutAdvantages(AdvantageEstimator):
    """A_i = r_i - mean of the other G - 1 rewards of its group, [N]."""

    name = "rloo"

    def advantages(self, data: RoundData, rl: OnlineRL) -> torch.Tensor:
        return rloo_advantages(data.rewards, self.config.num_generations)  # [N]


class RLOO(OnlineRL):
    """RLOO: the online round with leave-one-out baselines and no critic."""

    estimator_class = LeaveOneOutAdvantages
