"""PPO with a learned critic (Schulman et al. 2017), in the RLHF form of Ziegler et al. 2019 and
InstructGPT (Ouyang et al. 2022): the online-RL round of ``online.py`` with two parts of its own,
``GAEAdvantages`` (the estimator) and ``Critic`` (the value model and its loss).

Per round (prompts -> rollout -> rewards are the shared ``OnlineRL.collect``), at every
completion token t (the state s_t is the prompt plus the first t completion tokens):

    KL-shaped reward (InstructGPT eq. 2, paid per token as in Ziegler et al. eq. 2):
        r_t = -kl_coef * KL_t  +  [t = T] * score,    KL_t = log pi_old(a_t|s_t) - log pi_ref(a_t|s_t)
    (k1 by default; k3 optional; ``kl_penalty: loss`` puts kl_coef * KL in the loss instead)
    GAE (Schulman et al. 2015, eqs. 11-16), V_{T+1} = 0 after the last token:
        delta_t = r_t + gamma V(s_{t+1}) - V(s_t),    A_t = sum_l (gamma lam)^l delta_{t+l}
        R_t = A_t + V(s_t)                            (the value targets)
    then A is whitened over the round's trained tokens. Each optimiser step minimises
        L = -min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)              (PPO eq. 7)
            + vf_coef * 0.5 max((V - R)^2, (clip(V, V_old +- c) - R)^2)     (eq. 9's L^VF, clipped)
    with rho_t = pi_theta / pi_old, no entropy bonus (eq. 9's c2 = 0).

The four online algorithms side by side (each in its own module):

| algorithm    | advantages (completion i of a group g)                       | critic | KL to pi_ref         |
|--------------|--------------------------------------------------------------|--------|----------------------|
| GRPO         | A_i = (r_i - mean_g r) / std_g r, same for every token       | no     | beta * k3 in loss    |
| RLOO         | A_i = r_i - mean of the other G - 1 rewards                  | no     | beta * k3 in loss    |
| REINFORCE++  | A_i = r_i - mean_g r, whitened over the round's tokens       | no     | beta * k3 in loss    |
| PPO          | GAE over V_phi on KL-shaped token rewards, whitened, [N, C]  | yes    | -kl_coef * k1 in r_t |

Implementation: ``GAEAdvantages`` scores the round once (pi_old and pi_ref log-probs, and the
critic's values, all [N, C]), shapes the rewards, runs GAE and hands old log-probs, old values
and returns to every micro-batch through ``RoundData.token_data``. ``Critic.loss`` is the clipped
value loss, a token mean over the optimiser step (share = sum / step tokens, like the policy's
``dapo`` share), so gradient accumulation stays exact. Policy and critic train in one AdamW with
two parameter groups (see ``value.ActorCritic``); generation uses the policy only. ``output_dir``
gets the policy (HF layout) and ``output_dir/value_model`` the critic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from posttrain.algorithms.online import OnlineRL
from posttrain.algorithms.online_config import OnlineRLConfig
from posttrain.algorithms.rounds import AdvantageEstimator, RoundData
from posttrain.algorithms.value import ActorCritic, ActorCriticForward, load_value_model
from posttrain.config import option
from posttrain.errors import ConfigError
from posttrain.models import save_model
from posttrain.ops.advantages import (
    AdaptiveKLController,
    FixedKLController,
    clipped_value_loss,
    explained_variance,
    gae,
    sequence_rewards_to_tokens,
)
from posttrain.ops.policy import aggregate_token_loss, kl_estimate
from posttrain.ops.stats import masked_mean, masked_sum, masked_whiten
from posttrain.train.loop import StepBatch
from posttrain.train.metrics import mean_stat, stat


@dataclass
class PPOConfig(OnlineRLConfig):
    min_generations = 1  # the critic is the baseline: no group needed

    learning_rate: float = option(3e-6, "Peak AdamW learning rate of the policy.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = option(
        "constant", "Learning-rate decay after warm-up (both policy and critic follow it)."
    )
    prompts_per_step: int = option(16, "Prompts sampled per round.")
    num_generations: int = option(
        1, "Completions per prompt. 1 is classic PPO (the critic is the baseline); more is fine."
    )
    advantage_estimator: Literal["gae"] = option(
        "gae", "PPO: generalised advantage estimation over the critic's values (fixed)."
    )
    num_iterations: int = option(
        4, "PPO epochs: passes over each round's completions (also accepted as ppo_epochs, or "
        "TRL's num_ppo_epochs; give one name only)."
    )
    # --- advantages ----------------------------------------------------------------------
    gamma: float = option(1.0, "Discount per token (1.0: the score counts fully at every token).")
    lam: float = option(0.95, "GAE lambda: 1 = Monte-Carlo returns, 0 = one-step TD.")
    whiten_advantages: bool = option(True, "Whiten advantages over the round's trained tokens.")
    whiten_rewards: bool = option(
        False, "Scale the per-token rewards to unit variance over the round (mean kept)."
    )
    missing_eos_penalty: float | None = option(
        None,
        "Subtracted from the score of completions that end without EOS (finish_reason "
        "'length'), e.g. 1.0; a positive number. None = off.",
    )
    # --- critic --------------------------------------------------------------------------
    value_model: str | None = option(
        None,
        "Critic initialisation: None = the policy's weights with a new scalar head; or a "
        "reward model folder from `posttrain reward` (InstructGPT initialises from the RM).",
    )
    value_learning_rate: float | None = option(
        None, "Critic learning rate (None = learning_rate); often 2-10x the policy's."
    )
    vf_coef: float = option(0.1, "Weight of the value loss (PPO eq. 9's c1).")
    value_clip: float = option(
        0.2, "Value clip: V may move at most this far from its rollout-time value per round."
    )
    # --- KL to the reference ---------------------------------------------------------------
    kl_coef: float = option(
        0.05, "KL(pi || pi_ref) coefficient (initial value when adaptive_kl); 0 = no reference."
    )
    kl_penalty: Literal["reward", "loss"] = option(
        "reward",
        "reward: -kl_coef * KL_t shaped into the per-token rewards (InstructGPT / Ziegler); "
        "loss: kl_coef * KL added to the loss, like GRPO's beta.",
    )
    kl_estimator: Literal["k1", "k2", "k3"] | None = option(
        None,
        "Per-token KL estimator. None = k1 for kl_penalty=reward (log pi - log pi_ref, the "
        "classic form), k3 for kl_penalty=loss (k1's gradient is 0 in expectation there).",
    )
    adaptive_kl: bool = option(
        False, "Steer the KL towards kl_target by adapting kl_coef (Ziegler et al. 2019)."
    )
    kl_target: float = option(6.0, "Adaptive KL: target KL per completion (nats, summed).")
    kl_horizon: float = option(10000.0, "Adaptive KL: horizon K (in completions).")

    def __post_init__(self) -> None:
        if self.kl_estimator is None:
            self.kl_estimator = "k3" if self.kl_penalty == "loss" else "k1"

    def validate(self) -> None:
        super().validate()
        nonneg = ("vf_coef", "kl_coef")
        for name in nonneg:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if self.value_clip <= 0:
            raise ConfigError(f"value_clip must be > 0 (e.g. 0.2), got {self.value_clip}.")
        if self.value_learning_rate is not None and self.value_learning_rate < 0:
            raise ConfigError(f"value_learning_rate must be >= 0, got {self.value_learning_rate}.")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise ConfigError(
                f"missing_eos_penalty={self.missing_eos_penalty}: it is subtracted from the "
                "score, so give a positive number (e.g. 1.0)."
            )
        if self.adaptive_kl and (self.kl_target <= 0 or self.kl_horizon <= 0):
            raise ConfigError("adaptive_kl needs kl_target > 0 and kl_horizon > 0 (e.g. 6, 10000).")
        if self.beta != 0:
            raise ConfigError(
                "beta is GRPO's KL weight; PPO uses kl_coef (with kl_penalty: reward | loss)."
            )
        if self.kl_penalty == "loss" and self.kl_estimator == "k1":
            raise ConfigError(
                "kl_penalty=loss with kl_estimator=k1: k1's gradient is zero in expectation, so "
                "the penalty would do nothing. Use k3 (or k2), or kl_penalty=reward."
            )
        if self.skip_zero_std_groups:
            raise ConfigError(
                "skip_zero_std_groups is for group baselines (GRPO/RLOO); PPO's critic learns "
                "from every completion. Leave it false."
            )


class GAEAdvantages(AdvantageEstimator):
    """GAE advantages [N, C] on KL-shaped per-token rewards, over the critic's values. Owns the
    KL coefficient (fixed, or adaptive after Ziegler et al. 2019), so it is checkpointed."""

    name = "gae"
    config: PPOConfig

    def __init__(self, config: PPOConfig):
        super().__init__(config)
        self.kl_ctl = (
            AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
            if config.adaptive_kl else FixedKLController(config.kl_coef)
        )

    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0

    def kl_loss_coef(self) -> float:
        return self.kl_ctl.value if self.config.kl_penalty == "loss" else 0.0

    def sampler_is_policy(self, rl: OnlineRL) -> bool:
        """True when the rollout's own log-probs are pi_old's: one optimiser step per round
        (the policy has not moved since it sampled) and no top-k / top-p truncation (the
        sampler's processed distribution is then the policy's at the same temperature; the HF
        backend matches a fresh forward to 1e-4, tests/test_rollout.py). Saves one policy
        forward pass over the round; the step's ratio is then exactly 1 (old = logprobs.detach())."""
        c = self.config
        return (rl.sampler_is_exact and rl.steps_per_round == 1 and c.top_k == 0
                and c.top_p == 1.0)

    @torch.no_grad()
    def score_round(
        self, data: RoundData, rl: OnlineRL
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """pi_old and pi_ref log-probs and V(s_t) of every completion token: [N, C] each
        (C = the round's longest completion, rows aligned from column 0; ref None if unused),
        and the completion mask [N, C]. Each process scores its share (``score_tables``)."""
        from_sampler = self.sampler_is_policy(rl)

        def score(mb: dict) -> dict[str, torch.Tensor]:
            if from_sampler:  # the sampler's log-probs are pi_old's: skip a policy forward
                out = {"values": rl.logprobs(rl.wrapped, mb, parts="critic")}  # [B, width]
            else:
                logprobs, _, values = rl.logprobs(rl.wrapped, mb, parts="both")
                out = {"old": logprobs, "values": values}
            if self.needs_reference():
                out["ref"] = rl.reference_logprobs(mb)
            return out

        rollout = data.rollout
        tables = rl.score_tables(rollout, list(range(len(rollout))), score)
        full = rollout.to_padded_tensors(rl.pad_id)  # [N, C] masks and sampler log-probs
        mask = full["completion_mask"]
        old = full["sampler_logprobs"] * mask if from_sampler else tables["old"]
        return old, tables.get("ref"), tables["values"], mask

    def advantages(self, data: RoundData, rl: OnlineRL) -> torch.Tensor:
        c = self.config
        t0 = time.time()
        old, ref, values, mask = self.score_round(data, rl)  # [N, C] each
        scores = data.rewards.clone()  # [N]
        if c.missing_eos_penalty is not None:
            no_eos = torch.tensor([r == "length" for r in data.rollout.finish_reasons])
            scores = scores - c.missing_eos_penalty * no_eos.float()
        coef = self.kl_ctl.value
        kl = kl_estimate(old, ref, c.kl_estimator) * mask if ref is not None else None  # [N, C]
        shaped = c.kl_penalty == "reward" and kl is not None
        token_rewards = sequence_rewards_to_tokens(
            scores, mask, kl if shaped else None, coef if shaped else 0.0)  # [N, C]
        if c.whiten_rewards:
            token_rewards = masked_whiten(token_rewards, mask, shift_mean=False)
        advantages, returns = gae(token_rewards, values, mask, c.gamma, c.lam)  # [N, C] each
        trained = torch.zeros(len(scores))
        trained[data.keep] = 1.0
        train_mask = mask * trained[:, None]  # [N, C]
        if c.whiten_advantages and train_mask.sum() > 1:
            advantages = masked_whiten(advantages, train_mask)

        data.token_data.update(old_values=values, returns=returns)
        if not self.sampler_is_policy(rl):  # else the ratio is logprobs / logprobs.detach()
            data.token_data["old_logprobs"] = old
        if ref is not None and c.kl_penalty == "loss":
            data.token_data["ref_logprobs"] = ref
        metrics = {
            "scores/mean": float(scores.mean()),
            "values_mean": float(masked_mean(values, mask)),
            "returns_mean": float(masked_mean(returns, mask)),
            "kl_coef": coef,
        }
        ev = float(explained_variance(values, returns, mask))
        if math.isfinite(ev):
            metrics["explained_variance"] = ev
        if kl is not None:
            kl_per_completion = masked_sum(kl, mask, dim=1)  # [N]
            metrics["kl"] = float(masked_mean(kl, mask))
            metrics["kl/per_completion"] = float(kl_per_completion.mean())
            if shaped:
                metrics["non_score_reward"] = float(-coef * kl_per_completion.mean())
            self.kl_ctl.update(float(kl_per_completion.mean()), n_steps=len(scores))
        data.metrics.update(metrics)
        data.scoring_s += time.time() - t0
        return advantages

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.kl_ctl.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "kl_coef" in state:
            self.kl_ctl.value = float(state["kl_coef"])


class Critic:
    """The value model V_phi (``value.load_value_model``) and its clipped loss. It trains with
    the policy in one module (``value.ActorCritic``: one forward, one optimiser step)."""

    def __init__(self, config: PPOConfig, tokenizer: Any, model: nn.Module | None = None):
        self.config, self.tokenizer = config, tokenizer
        self.model = model if model is not None else load_value_model(config, tokenizer)

    def with_policy(self, policy: nn.Module) -> ActorCritic:
        return ActorCritic(policy, self.model)

    def wrap(self, model: ActorCritic) -> ActorCriticForward:
        return ActorCriticForward(model)

    def loss(self, values: torch.Tensor, mb: dict, step_batch: StepBatch,
             device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """vf_coef * clipped value loss, this micro-batch's share of the step's token mean."""
        mask = mb["completion_mask"].to(device)  # [B, C]
        old_values = mb["old_values"].to(device)  # [B, C]
        returns = mb["returns"].to(device)  # [B, C]
        per_token, clip_fraction = clipped_value_loss(values, old_values, returns, mask,
                                                      self.config.value_clip)  # [B, C]
        share = aggregate_token_loss(per_token, mask, "dapo",
                                     total_tokens=step_batch.totals["tokens"])
        metrics = {  # statistics over the step's tokens (train/metrics.py)
            "value_loss": stat(per_token, mask),
            "value_clip_fraction": mean_stat(clip_fraction, mask.sum()),
        }
        return self.config.vf_coef * share, metrics

    def save(self, folder: Path, state_dicts) -> None:
        save_model(self.model, self.tokenizer, folder, self.config.merge_lora,
                   state_dict=state_dicts(self.model))


class PPO(OnlineRL):
    """PPO: the online round with GAE advantages and a critic."""

    estimator_class = GAEAdvantages
    critic_class = Critic
    console_keys = ("rewards/total/mean", "eval/rewards/total/mean", "kl", "value_loss")
