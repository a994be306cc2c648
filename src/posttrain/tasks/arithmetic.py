"""Arithmetic questions with a checkable answer: the verifiable task for GRPO/PPO and accuracy.

Levels: ``add1``/``sub1``/``mul1`` use one-digit operands (0-9), ``add2``/``sub2``/``mul2``
two-digit ones (10-99); subtraction keeps the result non-negative. ``mixed`` means all six.

Row schema (task ``arithmetic``, for RL and evaluation)::

    {"prompt": [{"role": "user", "content": "What is 47 + 38? Put the final answer in \\boxed{}."}],
     "answer": "85", "level": "add2"}

SFT view (task ``arithmetic-sft``), the same questions with a worked answer::

    {"messages": [{"role": "user", "content": "What is 47 + 38? ..."},
                  {"role": "assistant", "content": "47 + 38 = 85. The answer is \\boxed{85}."}]}

Split: every question is assigned to the train or the test *part* by a hash of its operands
(``a + b`` and ``b + a`` count as one question, so the test part holds both orders), with about
20% in the test part. ``test()`` draws from the test part with a fixed seed and ``train(seed)``
from the train part, so the splits are disjoint whatever the seed. Within a split no question
repeats; levels get equal shares, except that one-digit levels have few questions and give
their unused share to the two-digit levels.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from posttrain.errors import ConfigError
from posttrain.tasks.base import Row, Task, assistant, user

LEVELS: dict[str, tuple[str, int]] = {
    "add1": ("+", 1),
    "add2": ("+", 2),
    "sub1": ("-", 1),
    "sub2": ("-", 2),
    "mul1": ("*", 1),
    "mul2": ("*", 2),
}
TEST_FRACTION = 0.2
TEST_SEED = 0

Problem = tuple[str, int, str, int]  # (level, a, op, b)


def question_text(a: int, op: str, b: int) -> str:
    return f"What is {a} {op} {b}? Put the final answer in \\boxed{{}}."


def solve(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def worked_answer(a: int, op: str, b: int, result: int | None = None) -> str:
    """The SFT completion; ``result`` overrides the true value (wrong answers for preferences)."""
    value = solve(a, op, b) if result is None else result
    return f"{a} {op} {b} = {value}. The answer is \\boxed{{{value}}}."


def in_test_part(a: int, op: str, b: int) -> bool:
    """Stable across Python versions and processes (no ``hash()``): a SHA-256 of the question,
    with commutative operands sorted so both orders land on the same side."""
    if op in "+*":
        a, b = sorted((a, b))
    digest = hashlib.sha256(f"{op}:{a}:{b}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION


def level_pool(level: str) -> list[tuple[int, str, int]]:
    """All questions of a level, in a fixed order."""
    op, digits = LEVELS[level]
    numbers = range(10) if digits == 1 else range(10, 100)
    return [(a, op, b) for a in numbers for b in numbers if op != "-" or a >= b]


def parse_levels(levels: str | Sequence[str]) -> list[str]:
    names = list(LEVELS) if levels == "mixed" else [levels] if isinstance(levels, str) else levels
    unknown = [name for name in names if name not in LEVELS]
    if unknown or not names:
        raise ConfigError(
            f"arithmetic: unknown level(s) {unknown or names}; choose from "
            f"{', '.join(LEVELS)} or 'mixed'."
        )
    return list(dict.fromkeys(names))


def allocate(total: int, capacities: Sequence[int]) -> list[int]:
    """Split ``total`` as evenly as possible without exceeding any capacity (water-filling)."""
    if total > sum(capacities):
        raise ConfigError(f"asked for {total} questions but only {sum(capacities)} exist.")
    counts = [0] * len(capacities)
    open_slots = [i for i, cap in enumerate(capacities) if cap > 0]
    left = total
    while left and open_slots:
        share, extra = divmod(left, len(open_slots))
        for rank, i in enumerate(open_slots):
            take = min(share + (rank < extra), capacities[i] - counts[i])
            counts[i] += take
            left -= take
        open_slots = [i for i in open_slots if counts[i] < capacities[i]]
    return counts


def problems(split: str, n: int, seed: int, levels: str | Sequence[str] = "mixed") -> list[Problem]:
    """``n`` distinct questions from the ``split`` part ("train" or "test"), shuffled by ``seed``."""
    names = parse_levels(levels)
    want_test = split == "test"
    parts = [[q for q in level_pool(lv) if in_test_part(*q) == want_test] for lv in names]
    counts = allocate(n, [len(part) for part in parts])
    chosen: list[Problem] = []
    for level, part, count in zip(names, parts, counts):
        picked = random.Random(f"arithmetic:{split}:{level}:{seed}").sample(part, count)
        chosen.extend((level, a, op, b) for a, op, b in picked)
    random.Random(f"arithmetic:{split}:{seed}").shuffle(chosen)
    return chosen


def rl_row(problem: Problem) -> Row:
    level, a, op, b = problem
    return {"prompt": user(question_text(a, op, b)), "answer": str(solve(a, op, b)), "level": level}


def sft_row(problem: Problem) -> Row:
    _, a, op, b = problem
    return {"messages": user(question_text(a, op, b)) + assistant(worked_answer(a, op, b))}


def task(
    levels: str | Sequence[str] = "mixed", train_size: int = 2000, test_size: int = 200
) -> Task:
    """The ``arithmetic`` task (prompt/answer/level rows)."""
    names = parse_levels(levels)
    return Task(
        name="arithmetic",
        description="add/sub/mul questions with a \\boxed{} answer (RL + accuracy)",
        make_train=lambda seed: [rl_row(p) for p in problems("train", train_size, seed, names)],
        make_test=lambda: [rl_row(p) for p in problems("test", test_size, TEST_SEED, names)],
    )


def sft_task(
    levels: str | Sequence[str] = "mixed", train_size: int = 2000, test_size: int = 200
) -> Task:
    """The ``arithmetic-sft`` task: the same questions as ``arithmetic``, as chat transcripts."""
    names = parse_levels(levels)
    return Task(
        name="arithmetic-sft",
        description="the arithmetic questions with worked answers (SFT messages)",
        make_train=lambda seed: [sft_row(p) for p in problems("train", train_size, seed, names)],
        make_test=lambda: [sft_row(p) for p in problems("test", test_size, TEST_SEED, names)],
    )
