"""GRPO (Shao et al. 2024, DeepSeekMath): group-relative advantages, no value model.

For each prompt q, sample G completions o_1..o_G, score them r_1..r_G, and give every token of
o_i the advantage (``scale_rewards: group``, the paper's eq. 3 with outcome supervision)

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)

then minimise the clipped surrogate with ratio pi_theta / pi_theta_old, plus beta * KL(pi_theta ||
pi_ref) with the k3 estimator (eq. 3-4). The round (rollout, rewards, old/ref log-probs, the loss
aggregation) is ``online.OnlineRL``; GRPO supplies ``GroupAdvantages``.

Why the loss sits near 0: within a group the advantages sum to ~0, and at ratio = 1 the loss is
-mean(A) over the batch's tokens, so the *value* of the loss says little. Watch
``rewards/total/mean`` (and ``eval/rewards/...``) instead; the gradient is what matters.

Defaults follow current practice (TRL, DAPO, Dr. GRPO): beta = 0 (no reference model, saving
its memory and forward pass; the clip keeps updates close), epsilon = 0.2, G = 8, temperature
1.0 (the sampler is the policy, so the first-iteration ratio is exactly 1), loss ``dapo``
(token-level: long answers are not down-weighted) and ``scale_rewards: group``
(``batch``: divide by the round's std; ``none``: Dr. GRPO's unscaled r - mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from posttrain.algorithms.online import OnlineRL
from posttrain.algorithms.online_config import OnlineRLConfig
from posttrain.algorithms.rounds import AdvantageEstimator, RoundData
from posttrain.config import option
from posttrain.ops.advantages import group_advantages


@dataclass
class GRPOConfig(OnlineRLConfig):
    advantage_estimator: Literal["grpo"] = option(
        "grpo", "Fixed for this trainer: (r - group mean) / group std. For other estimators "
        "use `posttrain rloo`, `posttrain reinforce_pp` or `posttrain ppo`."
    )


class GroupAdvantages(AdvantageEstimator):
    """A_i = (r_i - mean_g r) / std_g r, one value per completion [N]."""

    name = "grpo"

    def advantages(self, data: RoundData, rl: OnlineRL) -> torch.Tensor:
        return group_advantages(data.rewards, self.config.num_generations,
                                scale=self.config.scale_rewards)  # [N]


class GRPO(OnlineRL):
    """GRPO: the online round with group-normalised advantages and no critic."""

    estimator_class = GroupAdvantages
