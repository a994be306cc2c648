"""Format rewards: does the completion have the shape we ask for?

They teach a format (reasoning in ``<think>``, answer in ``<answer>``; exactly one ``\\boxed{}``),
not correctness, so they are usually combined with a small weight next to a verifier.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from posttrain.rewards.math_reward import _BOX_RE

THINK_ANSWER_PATTERN = r"^<think>.*?</think>\s*<answer>.*?</answer>$"

RewardFn = Callable[..., list]


def make_format_reward(pattern: str = THINK_ANSWER_PATTERN, name: str = "format") -> RewardFn:
    """A reward that is 1.0 when the whole completion (surrounding whitespace stripped) matches
    ``pattern`` with DOTALL, else 0.0. ``name`` is what training logs call it."""
    regex = re.compile(pattern, re.DOTALL)

    def format_reward(
        prompts: list, completions: list[str], completion_ids: list[list[int]], **_
    ) -> list[float | None]:
        return [1.0 if regex.fullmatch((c or "").strip()) else 0.0 for c in completions]

    format_reward.__name__ = name
    format_reward.__qualname__ = name
    format_reward.__doc__ = f"1.0 if the completion matches {pattern!r} (DOTALL), else 0.0."
    return format_reward


think_answer_format = make_format_reward(THINK_ANSWER_PATTERN, name="think_format")


def boxed_format(
    prompts: list, completions: list[str], completion_ids: list[list[int]], **_
) -> list[float | None]:
    """1.0 if the completion contains exactly one ``\\boxed{...}`` and its braces close, else
    0.0. Several boxes hedge between answers; an unclosed one was cut off mid-answer."""
    rewards: list[float | None] = []
    for completion in completions:
        text = completion or ""
        matches = list(_BOX_RE.finditer(text))
        rewards.append(1.0 if len(matches) == 1 and _balanced_end(text, matches[0].end()) else 0.0)
    return rewards


def _balanced_end(text: str, start: int) -> bool:
    depth = 1
    for ch in text[start:]:
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return True
    return False
