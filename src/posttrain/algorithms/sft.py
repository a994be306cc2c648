"""Supervised fine-tuning: maximise log p(response | prompt) on chat data.

    L(theta) = - E_(x, y) [ sum_t log pi_theta(y_t | x, y_<t) ] / N       (see ops/sft.py for N)

Prompt tokens (system/user turns and template scaffolding) are masked out; every assistant
turn is trained (or only the last one), including its end-of-turn token so the model learns to
stop. This module only prepares batches and calls the pure loss; the shared loop does the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from posttrain.config import TrainConfig, option, save_config
from posttrain.data.formats import to_sft_example, validate_rows
from posttrain.data.loading import load_rows
from posttrain.data.tokenize import (
    IGNORE_INDEX,
    collate,
    collate_packed,
    pack,
    tokenize_all,
)
from posttrain.models import load_policy, load_tokenizer, save_model
from posttrain.ops.sft import sft_loss
from posttrain.train.batching import split_micro, step_indices, total_steps
from posttrain.train.distributed import ranks, sharded_sum
from posttrain.train.loop import StepBatch
from posttrain.train.trainer import Trainer


@dataclass
class SFTConfig(TrainConfig):
    last_turn_only: bool = option(
        False, "Train only the last assistant turn of each conversation (default: all turns)."
    )
    loss_reduction: Literal["token", "sequence"] = option(
        "token",
        "token: mean over all response tokens of the step (long answers weigh more); "
        "sequence: mean of per-example means (every example weighs the same).",
    )
    packing: bool = option(
        False,
        "Concatenate examples into rows of max_length tokens (no padding; position ids restart "
        "per example, no attention across examples). per_device_batch_size then counts rows.",
    )


class SFT(Trainer):
    console_keys = ("loss", "tokens")

    def __init__(self, config: SFTConfig, model=None, tokenizer=None):
        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(config.tokenizer or config.model,
                                                     config.trust_remote_code)
        self.train_examples = self._load(config.train_data, config.train_split, config.max_samples)
        self.eval_examples = (
            self._load(config.eval_data, config.eval_split, None) if config.eval_data else []
        )
        self.model = model if model is not None else load_policy(config, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        # effective batch: micro x accumulation x processes (train/distributed.py)
        self.examples_per_step = (config.per_device_batch_size
                                  * config.gradient_accumulation_steps * ranks().world)

    def _load(self, spec: str, split: str, limit: int | None) -> list:
        c = self.config
        rows = load_rows(spec, split, c.data_subset, c.columns, c.seed).take(limit)
        examples = validate_rows(rows, to_sft_example, last_turn_only=c.last_turn_only,
                                 chat_template=c.chat_template)
        tokenized = tokenize_all(self.tokenizer, examples, rows.locations, self.config.max_length)
        if self.config.packing:
            return pack(tokenized, self.config.max_length)
        return tokenized

    # --- what the shared loop needs ------------------------------------------------------
    def total_steps(self) -> int:
        c = self.config
        return total_steps(len(self.train_examples), self.examples_per_step, c.num_epochs,
                           c.max_steps)

    def _collate(self, items: list) -> dict[str, torch.Tensor]:
        if self.config.packing:
            return collate_packed(items, self.pad_id)
        return collate(items, self.pad_id)

    def step_batches(self, start_step: int) -> Iterator[StepBatch]:
        c = self.config
        for indices in step_indices(len(self.train_examples), self.examples_per_step, c.seed,
                                    start_step, shuffle=c.shuffle):
            items = [self.train_examples[i] for i in indices]
            micro = [self._collate(chunk) for chunk in split_micro(items, c.per_device_batch_size)]
            tokens = sum(int((m["labels"][:, 1:] != IGNORE_INDEX).sum()) for m in micro)
            sequences = sum(len(bin_) for bin_ in items) if c.packing else len(items)
            inputs = sum(int((m["input_ids"] != self.pad_id).sum()) for m in micro)
            yield StepBatch(
                micro,
                totals={"tokens": tokens, "sequences": sequences},
                metrics={"tokens": tokens, "input_tokens": inputs},
            )

    def loss(self, wrapped, batch: dict, step_batch: StepBatch):
        batch = {k: v.to(self.device) for k, v in batch.items()}
        targets = batch["labels"][:, 1:]  # [B, T-1]
        mask = targets != IGNORE_INDEX
        logprobs, _ = wrapped(
            batch["input_ids"],
            targets.clamp(min=0),
            attention_mask=batch.get("attention_mask"),
            position_ids=batch.get("position_ids"),
            score_mask=mask,  # the prompt's positions skip the output layer
        )  # [B, T-1]
        sequence_ids = None
        if "position_ids" in batch and self.config.loss_reduction == "sequence":
            starts = (batch["position_ids"] == 0).long().cumsum(-1)  # example number in its row
            rows = torch.arange(starts.shape[0], device=starts.device)[:, None] * starts.shape[1]
            sequence_ids = torch.unique(starts + rows, return_inverse=True)[1][:, 1:]
        loss = sft_loss(
            logprobs,
            mask,
            self.config.loss_reduction,
            step_tokens=step_batch.totals["tokens"],
            step_sequences=step_batch.totals["sequences"],
            sequence_ids=sequence_ids,
        )
        return loss, {}

    @torch.no_grad()
    def evaluate(self, wrapped) -> dict[str, float]:
        if not self.eval_examples:
            return {}
        was_training = wrapped.training
        wrapped.eval()

        def nll_and_tokens(chunk: list) -> torch.Tensor:
            batch = {k: v.to(self.device) for k, v in self._collate(chunk).items()}
            targets = batch["labels"][:, 1:]
            mask = targets != IGNORE_INDEX
            logprobs, _ = wrapped(
                batch["input_ids"], targets.clamp(min=0),
                attention_mask=batch.get("attention_mask"),
                position_ids=batch.get("position_ids"), score_mask=mask,
            )
            return torch.stack([-(logprobs * mask).sum(), mask.sum()])

        chunks = split_micro(self.eval_examples, self.config.per_device_batch_size)
        total_nll, total_tokens = sharded_sum(chunks, nll_and_tokens).tolist()
        wrapped.train(was_training)
        mean_nll = total_nll / max(total_tokens, 1)
        return {"loss": mean_nll, "perplexity": float(torch.tensor(mean_nll).exp())}

    def save(self, output_dir: str, state_dicts=lambda module: None) -> None:
        save_model(self.model, self.tokenizer, output_dir, self.config.merge_lora,
                   state_dict=state_dicts(self.model), base_name=self.config.model)
        save_config(self.config, f"{output_dir}/posttrain_config.yaml")
