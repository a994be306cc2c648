"""Row formats, validated and normalised to chat messages.

Accepted shapes (one per row, detected from the keys):

* conversational   ``{"messages": [{"role": ..., "content": ...}, ...]}``
* prompt-completion ``{"prompt": str | messages, "completion": str | messages}``
* preference       ``{"prompt": str | messages, "chosen": str | messages, "rejected": ...}``
  (``prompt`` may be left out when chosen/rejected are whole conversations sharing a prefix)
* prompt-only      ``{"prompt": str | messages, ...extra columns}``: for RL; extra columns such
  as ``answer`` or ``tests`` are passed to reward functions.

A string prompt becomes one user message; a string response one assistant message. Every problem
raises :class:`DataError` naming the row's location and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from posttrain.data.loading import Rows
from posttrain.errors import DataError

Message = dict[str, str]
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class SFTExample:
    """A conversation and which of its message indices are trained (assistant turns)."""

    messages: list[Message]
    trained_turns: list[int]


@dataclass
class PreferenceExample:
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    margin: float | None = None


@dataclass
class PromptExample:
    prompt: list[Message]
    columns: dict[str, Any] = field(default_factory=dict)


def _messages(value: Any, where: str, name: str, default_role: str) -> list[Message]:
    """A string or a message list -> a validated message list."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field `{name}` is empty.")
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: field `{name}` must be a string or a non-empty list of "
            f"{{role, content}} messages, got {type(value).__name__}."
        )
    out = []
    for i, message in enumerate(value):
        here = f"{where}: `{name}[{i}]`"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{here} must be an object with `role` and `content`.")
        if message["role"] not in ROLES:
            raise DataError(f"{here}: unknown role {message['role']!r}; use one of {ROLES}.")
        if not isinstance(message["content"], str):
            raise DataError(f"{here}: `content` must be a string.")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _require(row: dict, keys: tuple[str, ...], where: str, fmt: str) -> None:
    missing = [k for k in keys if k not in row or row[k] is None]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {missing} for the {fmt} format (row has {sorted(row)})."
        )


def to_sft_example(row: dict, where: str, last_turn_only: bool = False) -> SFTExample:
    if "messages" in row:
        if not isinstance(row["messages"], list):
            raise DataError(
                f"{where}: field `messages` must be a non-empty list of {{role, content}} "
                f"messages, got {type(row['messages']).__name__}."
            )
        messages = _messages(row["messages"], where, "messages", "user")
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not assistant:
            raise DataError(f"{where}: `messages` has no assistant turn to learn from.")
        for i in assistant:
            if not messages[i]["content"].strip():
                raise DataError(f"{where}: `messages[{i}]` (assistant) has empty content.")
        return SFTExample(messages, assistant[-1:] if last_turn_only else assistant)
    if "prompt" in row and "completion" in row:
        prompt = _messages(row["prompt"], where, "prompt", "user")
        completion = _messages(row["completion"], where, "completion", "assistant")
        if completion[0]["role"] != "assistant":
            raise DataError(f"{where}: `completion` must start with an assistant message.")
        messages = prompt + completion
        trained = [len(prompt) + i for i, m in enumerate(completion) if m["role"] == "assistant"]
        return SFTExample(messages, trained[-1:] if last_turn_only else trained)
    raise DataError(
        f"{where}: SFT needs `messages`, or `prompt` + `completion` (row has {sorted(row)})."
    )


def _split_shared_prefix(chosen: list[Message], rejected: list[Message]) -> int:
    """Index where two conversations diverge (for preference rows without a `prompt`)."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return n


def to_preference_example(row: dict, where: str) -> PreferenceExample:
    _require(row, ("chosen", "rejected"), where, "preference")
    chosen = _messages(row["chosen"], where, "chosen", "assistant")
    rejected = _messages(row["rejected"], where, "rejected", "assistant")
    if "prompt" in row and row["prompt"] is not None:
        prompt = _messages(row["prompt"], where, "prompt", "user")
    else:  # implicit prompt: whole conversations that share their beginning
        cut = _split_shared_prefix(chosen, rejected)
        if cut == 0:
            raise DataError(
                f"{where}: no `prompt` field and `chosen`/`rejected` share no opening messages."
            )
        prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        if not response or response[0]["role"] != "assistant":
            raise DataError(f"{where}: `{name}` must be (or start with) an assistant response.")
        if not any(m["content"].strip() for m in response):
            raise DataError(f"{where}: `{name}` response is empty.")
    if chosen == rejected:
        raise DataError(f"{where}: `chosen` and `rejected` are identical; nothing to prefer.")
    margin = row.get("margin")
    if margin is not None and (not isinstance(margin, (int, float)) or isinstance(margin, bool)
                               or not math.isfinite(margin)):
        raise DataError(f"{where}: `margin` must be a finite number, got {margin!r}.")
    return PreferenceExample(prompt, chosen, rejected, margin)


def to_prompt_example(row: dict, where: str) -> PromptExample:
    _require(row, ("prompt",), where, "prompt-only")
    prompt = _messages(row["prompt"], where, "prompt", "user")
    if prompt[-1]["role"] == "assistant":
        raise DataError(f"{where}: `prompt` ends with an assistant turn; it should end with user.")
    columns = {k: v for k, v in row.items() if k not in ("prompt", "completion", "messages")}
    return PromptExample(prompt, columns)


def validate_rows(rows: Rows, convert, **kwargs) -> list:
    """Convert every row with ``convert(row, where)``; errors carry the row's location."""
    return [convert(row, where, **kwargs) for row, where in zip(rows.rows, rows.locations)]
