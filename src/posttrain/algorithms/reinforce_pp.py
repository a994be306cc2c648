"""REINFORCE++ with a group baseline (Hu 2025, "REINFORCE++-baseline"): GRPO's round with the
group mean as baseline and the scale set by whitening over the whole round's tokens.

For G completions of a prompt with rewards r_1..r_G:

    a_i = r_i - mean_g r                      (the prompt's difficulty removed, as in GRPO)
    A_{i,t} = (a_i - mu) / sigma              for every token t of completion i, where mu and
                                              sigma are the mean and std over all the round's
                                              completion tokens (a long completion counts once
                                              per token)

Dividing by a batch-wide std instead of each group's std keeps groups whose rewards barely
differ from being blown up (the per-group scale GRPO is criticised for). The advantages are
per token [N, C]; the rest is ``online.OnlineRL``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from posttrain.algorithms.online import OnlineRL
from posttrain.algorithms.online_config import OnlineRLConfig
from posttrain.algorithms.rounds import AdvantageEstimator, RoundData
from posttrain.config import option
from posttrain.ops.advantages import reinforce_pp_baseline_advantages


@dataclass
class REINFORCEppConfig(OnlineRLConfig):
    advantage_estimator: Literal["reinforce_pp"] = option(
        "reinforce_pp",
        "Fixed for this trainer: r - group mean, whitened over the round's tokens.",
    )


class WhitenedGroupBaseline(AdvantageEstimator):
    """(r_i - mean_g r), whitened over the round's completion tokens: [N, C]."""

    name = "reinforce_pp"

    def advantages(self, data: RoundData, rl: OnlineRL) -> torch.Tensor:
        mask = data.rollout.to_padded_tensors(rl.pad_id)["completion_mask"]  # [N, C]
        return reinforce_pp_baseline_advantages(data.rewards, self.config.num_generations, mask)


class REINFORCEpp(OnlineRL):
    """REINFORCE++-baseline: the online round with a whitened group baseline, no critic."""

    estimator_class = WhitenedGroupBaseline
