"""Reward models as models: the scalar-head architecture, loading (fresh or trained), LoRA, and
scoring files. Used by reward-model training (``algorithms/reward.py``), PPO's critic
(``algorithms/value.py``), the reward-model reward (``rewards/reward_model.py``) and
``posttrain score``.

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
from pathlib import Path

import torch
from torch import nn

from posttrain.config import TrainConfig
from posttrain.data.formats import Message, to_preference_example, to_sft_example
from posttrain.data.loading import load_rows
from posttrain.errors import ConfigError, DataError, PosttrainError
from posttrain.hub import resolve_model
from posttrain.models import is_peft, load_tokenizer, pick_dtype
from posttrain.train.sharding import no_split_modules


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


def load_reward_model(config: TrainConfig, tokenizer) -> nn.Module:
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


# --- scoring with a trained reward model --------------------------------------------------------


def load_trained_reward_model(name: str, tokenizer=None, dtype: str = "auto") -> nn.Module:
    """A saved reward model: full weights, or a LoRA adapter folder (base loaded with one
    label, then the adapter and its trained score head)."""
    from transformers import AutoModelForSequenceClassification

    folder = Path(resolve_model(name))
    adapter = folder / "adapter_config.json"
    check_is_reward_model(folder, name)
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


def check_is_reward_model(folder: Path, name: str) -> None:
    """Refuse a folder that is not a one-label sequence-classification model (a causal LM
    would otherwise get a random head and score noise)."""
    adapter = folder / "adapter_config.json"
    if adapter.exists():
        task = json.loads(adapter.read_text()).get("task_type")
        if task not in (None, "SEQ_CLS"):
            raise PosttrainError(f"{name!r} is a {task} adapter, not a reward model: train one "
                                 "with `posttrain reward`.")
        return
    config = folder / "config.json"
    if not config.exists():
        raise PosttrainError(f"{name!r} has no config.json: not a model folder.")
    data = json.loads(config.read_text())
    architectures = data.get("architectures") or []
    labels = len(data.get("id2label") or {}) or data.get("num_labels", 0)
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or labels not in (
            0, 1):
        raise PosttrainError(
            f"{name!r} is not a reward model (architectures {architectures}); `posttrain "
            "score` needs a one-label sequence-classification model, e.g. from `posttrain "
            "reward`."
        )


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
