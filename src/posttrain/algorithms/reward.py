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

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from posttrain.algorithms.pairs import collate_pairs, load_pairs
from posttrain.config import TrainConfig, option, save_config
from posttrain.errors import ConfigError
from posttrain.models import is_peft, load_tokenizer, save_model
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
from posttrain.train.batching import split_micro, step_indices, total_steps
from posttrain.train.distributed import ranks
from posttrain.train.loop import StepBatch
from posttrain.train.metrics import sharded_means, stats
from posttrain.train.trainer import Trainer


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


class RewardModelTrainer(Trainer):
    console_keys = ("loss", "accuracy", "margin")

    def __init__(self, config: RewardConfig, model=None, tokenizer=None):
        self.config = c = config
        self.tokenizer = tokenizer or load_tokenizer(c.tokenizer or c.model, c.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id
        self.train_pairs = load_pairs(self.tokenizer, c.train_data, c.train_split, c.data_subset,
                                      c.max_samples, c.max_length, c.columns, c.seed)
        self.eval_pairs = (load_pairs(self.tokenizer, c.eval_data, c.eval_split, c.data_subset,
                                      None, c.max_length, c.columns, c.seed)
                           if c.eval_data is not None else [])
        if model is None:
            model = load_reward_model(c, self.tokenizer)
        elif c.use_lora and not is_peft(model):
            model = add_reward_lora(model, c)
        self.model = model
        # effective batch: micro x accumulation x processes (train/distributed.py)
        self.examples_per_step = (c.per_device_batch_size * c.gradient_accumulation_steps
                                  * ranks().world)
        self.device = torch.device("cpu")

    def total_steps(self) -> int:
        c = self.config
        return total_steps(len(self.train_pairs), self.examples_per_step, c.num_epochs,
                           c.max_steps)

    def wrap(self, model):
        return LastTokenScores(model)

    def step_batches(self, start_step: int) -> Iterator[StepBatch]:
        c = self.config
        for indices in step_indices(len(self.train_pairs), self.examples_per_step, c.seed,
                                    start_step, shuffle=c.shuffle):
            items = [self.train_pairs[i] for i in indices]
            micro = [collate_pairs(chunk, self.pad_id)
                     for chunk in split_micro(items, c.per_device_batch_size)]
            yield StepBatch(micro, {"pairs": len(items)})

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

    def loss(self, wrapped, batch: dict, step_batch: StepBatch):
        batch = {k: v.to(self.device) for k, v in batch.items()}
        losses, values = self.pair_losses(wrapped, batch)  # [B], {key: [B]}
        return losses.sum() / step_batch.totals["pairs"], stats(values)

    @torch.no_grad()
    def evaluate(self, wrapped) -> dict[str, float]:
        if not self.eval_pairs:
            return {}
        was_training = wrapped.training
        wrapped.eval()

        def pair_stats(chunk) -> dict[str, torch.Tensor]:
            batch = {k: v.to(self.device) for k, v in collate_pairs(chunk, self.pad_id).items()}
            losses, values = self.pair_losses(wrapped, batch)
            return stats({"loss": losses, **values})

        means = sharded_means(split_micro(self.eval_pairs, self.config.per_device_batch_size),
                              pair_stats)
        wrapped.train(was_training)
        return means

    def save(self, output_dir: str, state_dicts=lambda module: None) -> None:
        save_model(self.model, self.tokenizer, output_dir, self.config.merge_lora,
                   state_dict=state_dicts(self.model), base_name=self.config.model)
        save_config(self.config, f"{output_dir}/posttrain_config.yaml")
