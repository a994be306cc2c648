"""Row formats, validated and normalised to chat messages.

Accepted shapes (one per row, detected from the keys):

* conversational   ``{"messages": [{"role": ..., "content": ...}, ...]}``
* prompt-completion ``{"prompt": str | messages, "completion": str | messages}``
* preference       ``{"prompt": str | messages, "chosen": str | messages, "rejected": ...}``
  (``prompt`` may be left out when chosen/rejected are whole conversations sharing a prefix)
* prompt-only      ``{"prompt": str | messages, ...extra columns}``: for RL; extra columns such
  as ``answer`` or ``tests`` are passed to reward functions.
* plain text       ``{"text": str}``: language modelling on the raw text (SFT; every token).

A string prompt becomes one user message; a string response one assistant message (or, with
``chat_template: false``, both stay raw text). Messages may be ShareGPT turns (``from`` /
``value``, roles human / gpt / system / tool), and assistant messages may carry ``tool_calls``
(a row's ``tools`` column reaches the chat template). Every problem raises :class:`DataError`
naming the row's location and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from posttrain.data.loading import Rows
from posttrain.errors import DataError

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "function_response": "tool",
                  "observation": "tool"}


@dataclass
class SFTExample:
    """A conversation and which of its message indices are trained (assistant turns); or, for
    raw text (``text`` rows, ``chat_template: false``), ``raw = (prompt, completion)`` with the
    completion trained."""

    messages: list[Message]
    trained_turns: list[int]
    tools: list | None = None
    raw: tuple[str, str] | None = None


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
    original: Any = None  # the prompt as the row gave it (text or messages): TRL-style rewards


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
        if isinstance(message, dict) and "from" in message and "value" in message:  # ShareGPT
            role = SHAREGPT_ROLES.get(str(message["from"]).lower())
            if role is None:
                raise DataError(f"{here}: unknown ShareGPT speaker {message['from']!r}; use one "
                                f"of {sorted(SHAREGPT_ROLES)}.")
            message = {"role": role, "content": message["value"]}
        if not isinstance(message, dict) or "role" not in message:
            raise DataError(f"{here} must be an object with `role` and `content`.")
        if message["role"] not in ROLES:
            raise DataError(f"{here}: unknown role {message['role']!r}; use one of {ROLES}.")
        if "content" not in message and not message.get("tool_calls"):
            raise DataError(f"{here} must be an object with `role` and `content`.")
        content = message.get("content")
        calls = message.get("tool_calls")
        if calls is not None:
            if message["role"] != "assistant" or not isinstance(calls, list) or not calls:
                raise DataError(f"{here}: `tool_calls` must be a non-empty list on an "
                                "assistant message.")
            content = content or ""
        if not isinstance(content, str):
            raise DataError(f"{here}: `content` must be a string.")
        clean = {"role": message["role"], "content": content}
        for key in ("tool_calls", "name", "tool_call_id"):
            if message.get(key) is not None:
                clean[key] = message[key]
        out.append(clean)
    return out


def _require(row: dict, keys: tuple[str, ...], where: str, fmt: str) -> None:
    missing = [k for k in keys if k not in row or row[k] is None]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {missing} for the {fmt} format (row has {sorted(row)})."
        )


def to_sft_example(row: dict, where: str, last_turn_only: bool = False,
                   chat_template: bool = True) -> SFTExample:
    tools = row.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise DataError(f"{where}: `tools` must be a list of tool (function) definitions.")
    if "text" in row and not ({"messages", "prompt", "completion"} & set(row)):
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise DataError(f"{where}: field `text` must be non-empty text.")
        return SFTExample([], [], raw=("", row["text"]))
    if (not chat_template and isinstance(row.get("prompt"), str)
            and isinstance(row.get("completion"), str)):
        if not row["completion"].strip():
            raise DataError(f"{where}: field `completion` is empty.")
        return SFTExample([], [], raw=(row["prompt"], row["completion"]))
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
            if not messages[i]["content"].strip() and not messages[i].get("tool_calls"):
                raise DataError(f"{where}: `messages[{i}]` (assistant) has empty content.")
        return SFTExample(messages, assistant[-1:] if last_turn_only else assistant, tools)
    if "prompt" in row and "completion" in row:
        prompt = _messages(row["prompt"], where, "prompt", "user")
        completion = _messages(row["completion"], where, "completion", "assistant")
        if completion[0]["role"] != "assistant":
            raise DataError(f"{where}: `completion` must start with an assistant message.")
        messages = prompt + completion
        trained = [len(prompt) + i for i, m in enumerate(completion) if m["role"] == "assistant"]
        return SFTExample(messages, trained[-1:] if last_turn_only else trained, tools)
    raise DataError(
        f"{where}: SFT needs `messages`, `prompt` + `completion`, or `text` (row has "
        f"{sorted(row)}); map other column names with `columns:` (e.g. {{messages: "
        "conversations}} for ShareGPT)."
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
    return PromptExample(prompt, columns, original=row["prompt"])


def validate_rows(rows: Rows, convert, **kwargs) -> list:
    """Convert every row with ``convert(row, where)``; errors carry the row's location."""
    return [convert(row, where, **kwargs) for row, where in zip(rows.rows, rows.locations)]
