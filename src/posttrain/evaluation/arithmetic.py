"""Arithmetic accuracy: greedy answers to the ``arithmetic`` test questions, scored on the final
answer only.

The score goes through :func:`posttrain.rewards.math_reward.math_reward`, the very function GRPO
and PPO are rewarded with, so "accuracy went up" means the same thing in training and in
evaluation: the last ``\\boxed{}`` (else the final number) equals the gold answer. An answer that
states the right number somewhere and then boxes a wrong one is wrong.

Besides accuracy the summary reports what explains a score: how often the answer is boxed at all
(a format failure looks like an arithmetic failure otherwise), how long answers are, how many hit
the token limit, and accuracy per level (one-digit sums are easy, two-digit products are not).
"""

from __future__ import annotations

import re
from typing import Any

from posttrain.errors import PosttrainError
from posttrain.evaluation.common import Answer, greedy_answers, prompt_text
from posttrain.rewards.math_reward import extract_final_answer, math_reward
from posttrain.rollout.base import Generator

# A closed \boxed{...} with something in it (no nested braces: enough for integer answers). An
# empty "\boxed{}" copied from the question is not an answer in the requested format.
_BOXED = re.compile(r"\\boxed\s*\{\s*[^{}\s][^{}]*\}")


def _check_rows(rows: list[dict[str, Any]]) -> None:
    for i, row in enumerate(rows):
        if "prompt" not in row or "answer" not in row:
            raise PosttrainError(
                f"evaluate_arithmetic: row {i} has keys {sorted(row)}; it needs `prompt` and "
                "`answer` (the `arithmetic` task's rows, e.g. recipes/data/arithmetic/test.jsonl; "
                "the `arithmetic-sft` rows hold `messages` instead)."
            )


def score_arithmetic(rows: list[dict[str, Any]], answers: list[Answer]) -> dict[str, Any]:
    """Summary and per-row records for answers already generated (no model involved).

    Kept apart from generation so the scoring can be tested with hand-written answers.
    """
    if len(rows) != len(answers):
        raise PosttrainError(f"score_arithmetic: {len(rows)} rows but {len(answers)} answers.")
    if not rows:
        raise PosttrainError("score_arithmetic: no rows to score.")
    _check_rows(rows)
    texts = [a.text for a in answers]
    gold = [str(row["answer"]) for row in rows]
    rewards = math_reward([row["prompt"] for row in rows], texts, [[]] * len(rows), answer=gold)
    records = []
    for row, answer, reward in zip(rows, answers, rewards):
        records.append({
            "prompt": prompt_text(row["prompt"]),
            "completion": answer.text,
            "correct": reward == 1.0,
            "answer": str(row["answer"]),
            "predicted": extract_final_answer(answer.text),
            "boxed": bool(_BOXED.search(answer.text)),
            "level": row.get("level", "all"),
            "tokens": answer.tokens,
            "finish_reason": answer.finish_reason,
        })

    per_level: dict[str, dict[str, float]] = {}
    for level in sorted({r["level"] for r in records}, key=_level_order):
        group = [r for r in records if r["level"] == level]
        per_level[level] = {
            "n": len(group),
            "accuracy": _mean(r["correct"] for r in group),
            "boxed_rate": _mean(r["boxed"] for r in group),
        }
    return {
        "task": "arithmetic",
        "n": len(records),
        "accuracy": _mean(r["correct"] for r in records),
        "boxed_rate": _mean(r["boxed"] for r in records),
        "mean_completion_tokens": _mean(r["tokens"] for r in records),
        "truncated_rate": _mean(r["finish_reason"] == "length" for r in records),
        "per_level": per_level,
        "records": records,
    }


def evaluate_arithmetic(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    batch_size: int = 16,
    max_new_tokens: int = 128,
    generator: Generator | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Greedy-answer ``rows`` (``{"prompt", "answer", "level"}``) and score them.

    Returns ``accuracy``, ``boxed_rate``, ``mean_completion_tokens``, ``truncated_rate``,
    ``per_level`` ({level: {n, accuracy, boxed_rate}}) and ``records`` (one dict per row:
    prompt, completion, correct, answer, predicted, ...). ``generator`` overrides the default
    :class:`~posttrain.rollout.hf.HFGenerator` (e.g. a fake one in tests).
    """
    _check_rows(rows)
    answers = greedy_answers(
        model, tokenizer, [row["prompt"] for row in rows], batch_size, max_new_tokens,
        generator=generator, progress=progress,
    )
    return score_arithmetic(rows, answers)


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else 0.0


def _level_order(level: str) -> tuple[int, str]:
    """add1, sub1, mul1, add2, sub2, mul2: easy to hard, then any other label alphabetically."""
    known = ["add1", "sub1", "mul1", "add2", "sub2", "mul2"]
    return (known.index(level), level) if level in known else (len(known), level)
