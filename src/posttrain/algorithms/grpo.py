"""GRPO (Shao et al. 2024, DeepSeekMath): group-relative advantages, no value model.

For each prompt q, sample G completions o_1..o_G, score them r_1..r_G, and give every token of
o_i the advantage

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)

then minimise the clipped surrogate with ratio pi_theta / pi_theta_old, plus beta * KL(pi_theta ||
pi_ref) with the k3 estimator (eq. 3-4 of the paper). The whole machinery (rollout, rewards,
old/ref log-probs, the loss aggregation) lives in ``online.py``; GRPO is the ``grpo`` estimator.

Why the loss sits near 0: within a group the advantages sum to ~0, and at ratio = 1 the loss is
-mean(A) over the batch's tokens, so the *value* of the loss says little. Watch
``rewards/total/mean`` (and ``eval/rewards/...``) instead; the gradient is what matters.

Defaults follow current practice (TRL, DAPO, Dr. GRPO): beta = 0 (no reference model, saving
its memory and forward pass; the clip keeps updates close), epsilon = 0.2, G = 8, temperature
1.0 (the sampler is the policy, so the first-iteration ratio is exactly 1), loss ``dapo``
(token-level: long answers are not down-weighted) and ``scale_rewards: group``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from posttrain.algorithms.online import OnlineRL
from posttrain.algorithms.online_config import OnlineRLConfig
from posttrain.config import option


@dataclass
class GRPOConfig(OnlineRLConfig):
    learning_rate: float = option(1e-6, "Peak AdamW learning rate (GRPO papers: 1e-6 to 3e-6).")
    lr_scheduler: Literal["constant", "linear", "cosine"] = option(
        "constant", "Learning-rate decay after warm-up (RL usually keeps it constant)."
    )


@dataclass
class RLOOConfig(GRPOConfig):
    advantage_estimator: Literal["grpo", "rloo", "reinforce_pp"] = option(
        "rloo",
        "rloo (Ahmadian et al. 2024): A_i = r_i - mean of the other G-1 rewards of the group.",
    )


class GRPO(OnlineRL):
    """GRPO / RLOO / REINFORCE++: the estimator is ``config.advantage_estimator``."""
