"""Reward modelling: a scalar score r(x, y), trained on preference pairs (Bradley-Terry).

Ouyang et al. 2022 (InstructGPT), eq. 1, with the Bradley & Terry (1952) model
P(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l)):

    L(r) = -E_(x, y_w, y_l) [ log sigma( r(x, y_w) - r(x, y_l) - m ) ] + c E[(r_w + r_l)^2]

with an optional per-pair margin m (Llama 2, the row's ``margin`` column) and the centring
term c (Eisenstein et al. 2023). The loss itself is ``ops.preference.bradley_terry_loss``.
The model (a one-label sequence-classification head read at the last real token) and its
loading live in ``posttrain/reward_models.py``; this module is the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.algorithms.pairs import PairTrainer
from posttrain.config import TrainConfig, option
from posttrain.errors import ConfigError
from posttrain.models import is_peft
from posttrain.ops.preference import bradley_terry_loss
from posttrain.reward_models import (  # noqa: F401 - re-exported: the model side of this trainer
    LastTokenScores,
    add_reward_lora,
    classification_parts,
    last_token_index,
    load_reward_model,
    load_trained_reward_model,
    score_file,
)


@dataclass
class RewardConfig(TrainConfig):
    learning_rate: float = option(
        1e-5, "Peak AdamW learning rate (InstructGPT's 6B RM used 9e-6; LoRA ~1e-4)."
    )
    center_rewards_coefficient: float = option(
        0.0,
        "Weight c of c * (r_chosen + r_rejected)^2, which keeps scores centred on 0 "
        "(Eisenstein et al. 2023 use 0.01). 0 = off.",
    )
    use_margins: bool = option(
        True, "Subtract each row's `margin` column (Llama 2) inside the sigmoid when present."
    )

    def validate(self) -> None:
        super().validate()
        if self.center_rewards_coefficient < 0:
            raise ConfigError("center_rewards_coefficient must be >= 0, got "
                              f"{self.center_rewards_coefficient}; 0.01 is a common value.")


class RewardModelTrainer(PairTrainer):
    console_keys = ("loss", "accuracy", "margin")

    def __init__(self, config: RewardConfig, model=None, tokenizer=None):
        super().__init__(config, tokenizer)
        if model is None:
            model = load_reward_model(config, self.tokenizer)
        elif config.use_lora and not is_peft(model):
            model = add_reward_lora(model, config)
        self.model = model

    def wrap(self, model):
        return LastTokenScores(model)

    def pair_losses(self, wrapped, batch: dict[str, torch.Tensor]):
        """Per-pair BT loss [B] and statistics; chosen and rejected in one forward pass."""
        n = batch["input_ids"].shape[0] // 2
        scores = wrapped(batch["input_ids"], batch["attention_mask"])  # [2B]
        chosen, rejected = scores[:n], scores[n:]  # [B], [B]
        margin = batch.get("margin") if self.config.use_margins else None
        losses = bradley_terry_loss(chosen, rejected, margin,
                                    self.config.center_rewards_coefficient)  # [B]
        chosen, rejected = chosen.detach(), rejected.detach()
        return losses, {
            "accuracy": (chosen > rejected).float(),
            "margin": chosen - rejected,
            "rewards/chosen_mean": chosen, "rewards/chosen_std": chosen,
            "rewards/rejected_mean": rejected, "rewards/rejected_std": rejected,
        }
