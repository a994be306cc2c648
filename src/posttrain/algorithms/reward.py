"""Reward modelling: a scalar score r(x, y), trained on preference pairs (Bradley-Terry).

Ouyang et al. 2022 (InstructGPT), eq. 1, with the Bradley & Terry (1952) model
P(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l)):

    L(r) = -E_(x, y_w, y_l) [ log sigma( r(x, y_w) - r(x, y_l) - m ) ] + c E[(r_w + r_l)^2]

with an optional per-pair margin m (Llama 2, the row's ``margin`` column) and the centring
term c (Eisenstein et al. 2023). The loss itself is ``ops.preference.bradley_terry_loss``.

The model is ``AutoModelForSequenceClassification`` with one label: the causal LM's backbone and
a fresh linear ``score`` head (kept trainable under LoRA through peft's ``modules_to_save``).

Pooling: the score is read at each row's LAST REAL TOKEN, found from the attention mask. The
Hugging Face class instead picks the rightmost token that differs from ``pad_token_id``; the two
agree when pad != eos, but when pad == eos and a sequence ends in eos, HF scores the token
*before* it. ``LastTokenScores`` therefore runs the backbone and the head itself. Saved models
keep ``config.pad_token_id``, so they score identically in plain transformers when pad != eos.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from posttrain.algorithms.pairs import collate_pairs, load_pairs
from posttrain.config import TrainConfig, option, save_config
from posttrain.data.formats import Message, to_preference_example, to_sft_example
from posttrain.data.loading import load_rows
from posttrain.errors import ConfigError, DataError, PosttrainError
from posttrain.hub import resolve_model
from posttrain.models import is_peft, load_tokenizer, pick_dtype, save_model
from posttrain.ops.preference import bradley_terry_loss
from posttrain.train.batching import split_micro, step_indices, total_steps
from posttrain.train.distributed import ranks
from posttrain.train.loop import StepBatch, train
from posttrain.train.metrics import sharded_means, stats
from posttrain.train.sharding import no_split_modules


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


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B]: position of the last 1 in each row (right or left padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def classification_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(backbone, score head) of a (peft-wrapped) ...ForSequenceClassification model."""
    hf = model.get_base_model() if is_peft(model) else model
    head = getattr(hf, "score", None)
    if head is None:
        raise ConfigError(f"{type(hf).__name__} has no `score` head; posttrain reward models "
                          "use decoder ...ForSequenceClassification classes (Qwen2, Llama, ...).")
    return getattr(hf, hf.base_model_prefix), head


class LastTokenScores(nn.Module):
    """forward(input_ids [B, T], attention_mask [B, T]) -> scores [B] (float32): the score
    head on the hidden state of each row's last real token. An nn.Module so that accelerate
    (DDP) wraps it, like ``TokenLogprobs``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._no_split_modules = no_split_modules(model)  # FSDP auto-wrap reads the root's

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        backbone, head = classification_parts(self.model)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False).last_hidden_state  # [B, T, H]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last_token_index(attention_mask)]  # [B, H]
        return head(pooled).squeeze(-1).float()  # [B]


def load_reward_model(config: RewardConfig, tokenizer) -> nn.Module:
    """Backbone from ``config.model`` + a fresh 1-output ``score`` head (seeded), optional LoRA."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(config.seed)  # the new head's initialisation
    kwargs = {"dtype": pick_dtype(config.dtype), "trust_remote_code": config.trust_remote_code}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(config.model), num_labels=1, **kwargs)
    except (OSError, ValueError) as err:
        raise PosttrainError(f"could not load {config.model!r} as a reward model: {err}") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.use_lora:
        model = add_reward_lora(model, config)
    return model


def add_reward_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    """LoRA on the backbone; the new ``score`` head is trained in full (modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="SEQ_CLS", modules_to_save=["score"],
    )
    torch.manual_seed(config.seed)  # the adapter's initialisation: the same in every process
    try:
        model = get_peft_model(model, lora)
    except ValueError as err:
        raise ConfigError(f"lora_target_modules={targets}: {err}") from None
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


class RewardModelTrainer:
    console_keys = ("loss", "accuracy", "margin")

    def __init__(self, config: RewardConfig, model=None, tokenizer=None):
        self.config = c = config
        self.tokenizer = tokenizer or load_tokenizer(c.tokenizer or c.model, c.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id
        self.train_pairs = load_pairs(self.tokenizer, c.train_data, c.train_split, c.data_subset,
                                      c.max_samples, c.max_length)
        self.eval_pairs = (load_pairs(self.tokenizer, c.eval_data, c.eval_split, c.data_subset,
                                      None, c.max_length) if c.eval_data else [])
        if model is None:
            model = load_reward_model(c, self.tokenizer)
        elif c.use_lora and not is_peft(model):
            model = add_reward_lora(model, c)
        self.model = model
        # effective batch: micro x accumulation x processes (train/distributed.py)
        self.examples_per_step = (c.per_device_batch_size * c.gradient_accumulation_steps
                                  * ranks().world)
        self.device = torch.device("cpu")
        self.accelerator = None

    def total_steps(self) -> int:
        c = self.config
        return total_steps(len(self.train_pairs), self.examples_per_step, c.num_epochs,
                           c.max_steps)

    def wrap(self, model):
        return LastTokenScores(model)

    def attach(self, wrapped, accelerator) -> None:
        self.accelerator, self.device = accelerator, accelerator.device

    def step_batches(self, start_step: int) -> Iterator[StepBatch]:
        c = self.config
        for indices in step_indices(len(self.train_pairs), self.examples_per_step, c.seed,
                                    start_step):
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
                   state_dict=state_dicts(self.model))
        save_config(self.config, f"{output_dir}/posttrain_config.yaml")


def reward(config: RewardConfig | dict, **overrides) -> dict[str, float]:
    """Python API: ``posttrain.reward({"model": ..., "train_data": ...})`` trains and saves."""
    from posttrain.config import load_config

    if isinstance(config, dict):
        config = load_config(RewardConfig, values={**config, **overrides})
    return train(RewardModelTrainer(config))


# --- scoring with a trained reward model --------------------------------------------------------


def load_trained_reward_model(name: str, tokenizer=None, dtype: str = "auto") -> nn.Module:
    """A saved reward model: full weights, or a LoRA adapter folder (base loaded with one
    label, then the adapter and its trained score head)."""
    from transformers import AutoModelForSequenceClassification

    folder = Path(resolve_model(name))
    adapter = folder / "adapter_config.json"
    try:
        if adapter.exists():
            from peft import PeftModel

            base_name = json.loads(adapter.read_text())["base_model_name_or_path"]
            base = AutoModelForSequenceClassification.from_pretrained(
                resolve_model(base_name), num_labels=1, dtype=pick_dtype(dtype))
            model = PeftModel.from_pretrained(base, folder)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, num_labels=1, dtype=pick_dtype(dtype))
    except (OSError, ValueError, KeyError) as err:
        raise PosttrainError(f"could not load the reward model {name!r}: {err}") from None
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def _reply(messages: list[Message], where: str, field: str) -> str:
    """The text of a one-message assistant response (what RewardModelScorer scores)."""
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise DataError(f"{where}: `{field}` must be one assistant reply to be scored "
                        f"(got {len(messages)} messages).")
    return messages[0]["content"]


def score_file(model_name: str, data: str, output: str | None = None, batch_size: int = 16,
               max_length: int = 1024) -> dict[str, float]:
    """Score ``prompt``+``completion`` / ``messages`` rows (the last turn is the reply), or
    preference rows (then also pair accuracy and mean margin, overall and per value of a
    ``kind`` column when rows have one), with the same ``RewardModelScorer`` that RL uses as a
    reward; optionally write rows + scores as jsonl."""
    from posttrain.rewards.reward_model import RewardModelScorer

    rows = load_rows(data)
    has_chosen = {"chosen" in r for r in rows.rows}  # {True}: preference pairs
    if len(has_chosen) > 1:
        raise DataError(f"{data}: mixes preference rows (chosen/rejected) with other rows; "
                        "score one kind per file.")
    prompts, replies = [], []
    if has_chosen == {True}:
        examples = [to_preference_example(r, w) for r, w in zip(rows.rows, rows.locations)]
        for side in ("chosen", "rejected"):
            prompts += [e.prompt for e in examples]
            replies += [_reply(getattr(e, side), w, side)
                        for e, w in zip(examples, rows.locations)]
    else:
        for row, where in zip(rows.rows, rows.locations):
            messages = to_sft_example(row, where).messages
            prompts.append(messages[:-1])
            replies.append(_reply(messages[-1:], where, "the last message"))
    tokenizer = load_tokenizer(model_name)
    model = load_trained_reward_model(model_name, tokenizer)
    scorer = RewardModelScorer(model, tokenizer, batch_size=batch_size, max_length=max_length)
    scores = torch.tensor(scorer.score(prompts, replies))
    n = len(rows)
    summary: dict[str, float] = {"rows": n, "mean_score": float(scores.mean())}
    if has_chosen == {True}:
        chosen, rejected = scores[:n], scores[n:]
        right = chosen > rejected  # [N]
        summary.update(pair_accuracy=float(right.float().mean()),
                       mean_margin=float((chosen - rejected).mean()))
        row_kinds = [r.get("kind") for r in rows.rows]  # the optional `kind` column
        for kind in sorted({k for k in row_kinds if isinstance(k, str)}):
            in_kind = torch.tensor([k == kind for k in row_kinds])
            summary[f"pair_accuracy/{kind}"] = float(right[in_kind].float().mean())
        records = [{**r, "chosen_score": c, "rejected_score": s}
                   for r, c, s in zip(rows.rows, chosen.tolist(), rejected.tolist())]
    else:
        records = [{**r, "score": s} for r, s in zip(rows.rows, scores.tolist())]
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text("".join(json.dumps(r) + "\n" for r in records))
    return summary
