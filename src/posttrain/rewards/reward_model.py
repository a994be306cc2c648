"""A trained reward model as a reward function.

Each prompt + completion is rendered exactly as at reward-model training time: the chat template
over the prompt messages plus ``{"role": "assistant", "content": completion}``. Rows are
right-padded with the model's ``pad_token_id``; ``*ForSequenceClassification`` reads the score at
the rightmost non-pad token, so a row's score does not depend on what it was batched with.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from posttrain.errors import ConfigError

logger = logging.getLogger(__name__)


def to_messages(prompt: str | Sequence[dict], completion: str) -> list[dict]:
    """Prompt messages + the completion as the assistant turn (a string prompt is one user turn)."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
    return messages + [{"role": "assistant", "content": completion}]


class RewardModelScorer:
    """Score completions with an ``AutoModelForSequenceClassification`` (``num_labels=1``).

    ``path_or_model`` is a folder (model + tokenizer, loaded with ``trust_remote_code=False``)
    or an already-loaded model, in which case ``tokenizer`` is required. Sequences longer than
    ``max_length`` tokens keep their *last* ``max_length`` tokens: the score is read at the end.
    """

    def __init__(
        self,
        path_or_model,
        tokenizer=None,
        batch_size: int = 8,
        device=None,
        max_length: int = 2048,
        name: str = "reward_model",
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.__name__ = name
        if isinstance(path_or_model, (str, os.PathLike)):
            path = os.fspath(path_or_model)
            if not os.path.isdir(path):
                raise ConfigError(f"reward model folder {path} does not exist")
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, trust_remote_code=False)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        else:
            model = path_or_model
            if tokenizer is None:
                raise ConfigError("RewardModelScorer got a model object but no tokenizer: pass "
                                  "tokenizer=..., or a folder path that contains both")
        if getattr(model.config, "num_labels", 1) != 1:
            raise ConfigError(f"a reward model must have num_labels=1, this one has "
                              f"{model.config.num_labels}")
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("the reward model's tokenizer has no chat template, so prompt + "
                              "completion cannot be rendered as at training time")
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else (
            model.config)
        if config.pad_token_id is None:  # without it HF scores the last position, pads included
            pad_id = tokenizer.pad_token_id
            if pad_id is None:
                pad_id = tokenizer.eos_token_id
            if pad_id is None:
                raise ConfigError("neither the reward model nor its tokenizer defines a pad or "
                                  "eos token; set tokenizer.pad_token")
            config.pad_token_id = pad_id
            model.config.pad_token_id = pad_id
        self.pad_token_id = int(config.pad_token_id)
        if device is not None:
            model.to(device)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self._torch = torch
        self._warned_truncation = False

    def encode(self, prompt: str | Sequence[dict], completion: str) -> list[int]:
        """Token ids of the rendered conversation (left-truncated to ``max_length``)."""
        text = self.tokenizer.apply_chat_template(to_messages(prompt, completion), tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_length:
            if not self._warned_truncation:
                self._warned_truncation = True
                logger.warning("reward model input of %d tokens cut to its last %d (max_length)",
                               len(ids), self.max_length)
            ids = ids[-self.max_length:]
        return list(ids)

    def score(self, prompts: Sequence, completions: Sequence[str]) -> list[float]:
        """One float per (prompt, completion). Rows are sorted by length so each batch pads
        little; the results come back in input order."""
        torch = self._torch
        encoded = [self.encode(p, c) for p, c in zip(prompts, completions)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        scores = [0.0] * len(encoded)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                width = max(len(encoded[i]) for i in rows)
                input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    input_ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
                    attention_mask[r, : len(encoded[i])] = 1
                logits = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=attention_mask.to(self.device)).logits
                for r, i in enumerate(rows):  # [B, 1] -> one float per row
                    scores[i] = float(logits[r, 0].float())
        return scores

    def __call__(
        self, prompts: list, completions: list[str], completion_ids: list[list[int]], **_
    ) -> list[float | None]:
        return list(self.score(prompts, completions))
