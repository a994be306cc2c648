"""What every evaluator shares: greedy answers to a list of prompts, and a readable record file.

Why greedy: a score should be a property of the model, not of a sampling seed, so two runs of the
same checkpoint give the same number and a before/after difference means the weights changed.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.errors import PosttrainError
from posttrain.rollout.base import Generator, SamplingParams, encode_prompts
from posttrain.rollout.hf import HFGenerator

Prompt = str | list[dict[str, str]]


@dataclass
class Answer:
    """One completion: its text, its length in tokens, why it ended, and its token ids."""

    text: str
    tokens: int
    finish_reason: str  # "stop" (end-of-turn token) | "length" (hit max_new_tokens)
    ids: list[int] = field(default_factory=list, repr=False)  # the completion's token ids


def greedy_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[Prompt],
    batch_size: int = 16,
    max_new_tokens: int = 128,
    generator: Generator | None = None,
    progress: bool = False,
) -> list[Answer]:
    """Answer each prompt once with greedy decoding, ``batch_size`` prompts per decode batch.

    ``generator`` replaces the default :class:`HFGenerator` over ``model`` (tests pass a fake one
    to check scoring without a model). With ``progress``, a line per batch goes to stderr: on a
    CPU a full test split takes minutes and silence looks like a hang.
    """
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    return [group[0] for group in answer_groups(model, tokenizer, prompts, params, batch_size,
                                                generator, progress)]


def answer_groups(
    model: Any,
    tokenizer: Any,
    prompts: list[Prompt],
    params: SamplingParams,
    batch_size: int = 16,
    generator: Generator | None = None,
    progress: bool = False,
) -> list[list[Answer]]:
    """``params.n`` answers to each prompt (one list per prompt, in sampling order), decoded
    ``batch_size`` prompts at a time: the loop behind greedy and sampled evaluation."""
    if batch_size < 1 or params.max_new_tokens < 1:
        raise PosttrainError(
            f"evaluation: batch_size={batch_size} and max_new_tokens={params.max_new_tokens} "
            "must be >= 1."
        )
    if not prompts:
        raise PosttrainError("evaluation: no prompts to answer (empty data or --limit 0).")
    generator = generator or HFGenerator(model, tokenizer)
    groups: list[list[Answer]] = []
    start = time.perf_counter()
    for first in range(0, len(prompts), batch_size):
        chunk = prompts[first : first + batch_size]
        rollout = generator.generate(encode_prompts(tokenizer, chunk), params)
        groups += rollout_groups(rollout, len(chunk))
        if progress:
            print(f"eval: {len(groups)}/{len(prompts)} answered "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    return groups


def rollout_groups(rollout, n_prompts: int, strip: bool = True) -> list[list[Answer]]:
    """A rollout's completions as one list of answers per prompt, in sampling order.
    ``strip``: leading and trailing whitespace removed from the text (what evaluation shows
    and scores; the online trainers score the text as sampled)."""
    groups: list[list[Answer]] = [[] for _ in range(n_prompts)]
    for text, ids, reason, index in zip(rollout.completions, rollout.completion_ids,
                                        rollout.finish_reasons, rollout.prompt_index):
        groups[index].append(Answer(text.strip() if strip else text, len(ids), reason,
                                    list(ids)))
    return groups


def prompt_text(prompt: Prompt) -> str:
    """The last user message of a prompt: what a person reading the records wants to see."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]


def write_records(records: list[dict[str, Any]], path: str | Path) -> Path:
    """One JSON object per line (prompt, completion, correct, ...), so answers can be read and
    grepped, e.g. ``grep '"correct": false' answers.jsonl``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
