"""Chat-template tokenisation with exact loss masks, padding and packing.

Which tokens are "the response"? We render the conversation with the tokenizer's own chat
template, once up to each trained assistant turn (with the generation prompt) and once through
it: the characters in between are that turn. Tokens whose start offset falls in that range get
labels; everything else (system and user turns, role headers, the trailing newline) is -100.

The turn's end token (``<|im_end|>`` / eos) is inside the range and therefore IS trained, also
when pad == eos: masks come from the template, never from comparing token ids with the pad id
(which is how other tools end up with models that never learn to stop).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from posttrain.data.formats import Message, SFTExample
from posttrain.errors import DataError

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss; same length as input_ids (unshifted)
    truncated: bool = False


def render(tokenizer, messages: list[Message], add_generation_prompt: bool = False,
           tools: list | None = None, where: str = "") -> str:
    kwargs = {"tools": tools} if tools else {}
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
    except Exception as err:  # noqa: BLE001 - a template's own error (jinja) is about this row
        raise DataError(f"{where}: the tokenizer's chat template failed on this row: "
                        f"{type(err).__name__}: {err}") from None


def trained_char_spans(
    tokenizer, messages: list[Message], trained_turns: list[int], where: str = "",
    tools: list | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages``; return the text and the [start, end) character span of each
    trained assistant turn (content + end-of-turn token, without the template's newline)."""
    text = render(tokenizer, messages, tools=tools, where=where)
    eos = tokenizer.eos_token
    spans = []
    for turn in trained_turns:
        if turn == 0:
            raise DataError(f"{where}: the conversation starts with an assistant turn; "
                            "put at least a user message before it.")
        prefix = render(tokenizer, messages[:turn], add_generation_prompt=True, tools=tools,
                        where=where)
        through = render(tokenizer, messages[: turn + 1], tools=tools, where=where)
        if not text.startswith(through) or not through.startswith(prefix):
            raise DataError(
                f"{where}: the chat template does not render turn {turn} as a prefix of the "
                "whole conversation (templates that rewrite earlier turns, e.g. by dropping "
                "reasoning, are not supported for multi-turn training); use last-turn-only "
                "training or the prompt/completion format."
            )
        end = len(through)
        if eos and eos in through[len(prefix):]:
            end = through.rindex(eos, len(prefix)) + len(eos)
        for call in messages[turn].get("tool_calls") or []:
            name = (call.get("function") or {}).get("name", "") if isinstance(call, dict) else ""
            if name and name not in through[len(prefix):end]:
                raise DataError(
                    f"{where}: the chat template of this tokenizer does not render the tool "
                    f"call {name!r} of turn {turn}; the turn would train on what the template "
                    "writes instead. Use a tokenizer whose template supports tool_calls (e.g. "
                    "Qwen2.5's), or put the call in the message's content."
                )
        spans.append((len(prefix), end))
    return text, spans


def tokenize_sft(
    tokenizer, example: SFTExample, max_length: int, where: str = ""
) -> TokenizedExample:
    """input_ids and labels for one conversation; labels only on trained assistant turns."""
    if example.raw is not None:
        return tokenize_raw(tokenizer, *example.raw, max_length=max_length)
    text, spans = trained_char_spans(tokenizer, example.messages, example.trained_turns, where,
                                     example.tools)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for i, (start, _end) in enumerate(encoded["offset_mapping"]):
        if any(s <= start < e for s, e in spans):
            labels[i] = input_ids[i]
    truncated = len(input_ids) > max_length
    return TokenizedExample(input_ids[:max_length], labels[:max_length], truncated)


def tokenize_raw(tokenizer, prompt: str, completion: str, max_length: int) -> TokenizedExample:
    """Raw text, no chat template: ``prompt`` (masked) + ``completion`` + EOS (trained)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
    input_ids = [*prompt_ids, *completion_ids]
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(completion_ids)
    if not prompt_ids:  # nothing precedes the first token: it cannot be predicted
        labels[0] = IGNORE_INDEX
    truncated = len(input_ids) > max_length
    return TokenizedExample(input_ids[:max_length], labels[:max_length], truncated)


def tokenize_all(tokenizer, examples: list[SFTExample], locations: list[str], max_length: int):
    """Tokenise a dataset; warn once with counts for truncated rows, drop rows left with no
    trained token (after truncation) and say how many."""
    out, truncated, dropped = [], 0, 0
    for example, where in zip(examples, locations):
        tokenized = tokenize_sft(tokenizer, example, max_length, where)
        truncated += tokenized.truncated
        if all(label == IGNORE_INDEX for label in tokenized.labels):
            dropped += 1
            continue
        out.append(tokenized)
    if truncated:
        warnings.warn(
            f"{truncated} of {len(examples)} examples were longer than max_length={max_length} "
            f"tokens and were truncated; {dropped} lost every response token and were dropped.",
            stacklevel=2,
        )
    if not out:
        raise DataError(f"no example has a response token within max_length={max_length}.")
    return out


def collate(examples: list[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask, labels  [B, T]."""
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pack(examples: list[TokenizedExample], max_length: int) -> list[list[TokenizedExample]]:
    """Group examples into bins of at most ``max_length`` tokens (first-fit decreasing), so a
    packed row wastes little space. Order is deterministic for a given input order."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_length - n)
    return [[examples[i] for i in sorted(b)] for b in bins]


def collate_packed(bins: list[list[TokenizedExample]], pad_id: int) -> dict[str, torch.Tensor]:
    """Padding-free batch: each bin's examples concatenated in one row, position ids restarting
    at 0 for every example and NO attention mask, which tells transformers to build a
    block-diagonal causal mask from the position ids (no attention across examples).

    Labels of each example's first token are -100 by construction (it is a prompt token), so the
    next-token shift never trains one example's last token to predict the next example's first.
    Rows shorter than the longest bin are padded with a final dummy "example" of pad tokens.
    """
    rows = []
    for examples in bins:
        ids = [t for e in examples for t in e.input_ids]
        labels = [t for e in examples for t in e.labels]
        positions = [p for e in examples for p in range(len(e.input_ids))]
        rows.append((ids, labels, positions))
    length = max(len(r[0]) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    for row, (ids, lab, pos) in enumerate(rows):
        n = len(ids)
        input_ids[row, :n] = torch.tensor(ids)
        labels[row, :n] = torch.tensor(lab)
        position_ids[row, :n] = torch.tensor(pos)
        position_ids[row, n:] = torch.arange(length - n)  # padding is its own "example"
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
