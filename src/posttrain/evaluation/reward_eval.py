"""Evaluation on any prompt data with any reward functions: the code ``posttrain eval --data
FILE --rewards ...`` and the online trainers' periodic evaluation share.

Two steps, so that every generator (the evaluation's own decode loop, a trainer's rollout
backend, each of several processes) reports the same numbers:

1. :func:`score_groups`: the answers to each prompt (one greedy answer, or n samples) scored by
   the reward functions, as plain records (picklable, so processes can gather them);
2. :func:`summarise`: means over those records: mean reward per function and of the weighted
   total, accuracy, pass@k / maj@k from n samples, mean completion length and truncation.

"Correct" means a total reward >= ``success_threshold`` (default 1.0: every built-in verifiable
reward gives 1.0 to a right answer and the code reward 1.0 when every test passes). maj@k votes
over the extracted final answers (the math reward's rule: the last ``\\boxed{}``, else the last
number); a completion with no extractable answer votes with its whole text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from posttrain.evaluation.common import Answer, prompt_text
from posttrain.evaluation.sampling import ks_up_to, pass_at_k

SUCCESS_THRESHOLD = 1.0


@dataclass
class ScoredPrompt:
    """One prompt's answers and their rewards (``rewards[name][j]``: function ``name`` on sample
    j; None where it does not apply)."""

    prompt: str
    completions: list[str]
    totals: list[float]
    rewards: dict[str, list[float | None]]
    tokens: list[int]
    finish_reasons: list[str]
    columns: dict[str, Any] = field(default_factory=dict)


def score_groups(examples: list, groups: list[list[Answer]], rewards) -> list[ScoredPrompt]:
    """Score ``groups[i]`` (the answers to ``examples[i]``, a ``PromptExample``) with
    ``rewards`` (a ``RewardSet``), in one reward call for the whole list."""
    flat = [(i, answer) for i, group in enumerate(groups) for answer in group]
    scored = rewards.score(
        [examples[i].prompt for i, _ in flat], [a.text for _, a in flat],
        [a.ids for _, a in flat],
        {key: [examples[i].columns.get(key) for i, _ in flat]
         for key in sorted({k for e in examples for k in e.columns})},
        prompt_forms=[examples[i].original for i, _ in flat],
    )
    out = [ScoredPrompt(prompt_text(e.prompt), [], [], {n: [] for n in scored.per_function},
                        [], [], _plain(e.columns)) for e in examples]
    for j, (i, answer) in enumerate(flat):
        record = out[i]
        record.completions.append(answer.text)
        record.totals.append(scored.totals[j])
        for name, values in scored.per_function.items():
            record.rewards[name].append(values[j])
        record.tokens.append(answer.tokens)
        record.finish_reasons.append(answer.finish_reason)
    return out


def summarise(scored: list[ScoredPrompt],
              success_threshold: float = SUCCESS_THRESHOLD) -> dict[str, float]:
    """Means over every answer (rewards, accuracy, length, truncation); with n > 1 samples per
    prompt also pass@k and maj@k for k = 1, 2, 4, ..., n (the smallest group's n)."""
    answers = [(p, j) for p in scored for j in range(len(p.totals))]
    if not answers:
        return {}
    summary: dict[str, float] = {}
    for name in scored[0].rewards:
        values = [p.rewards[name][j] for p, j in answers if p.rewards[name][j] is not None]
        if values:
            summary[f"rewards/{name}/mean"] = sum(values) / len(values)
    summary["rewards/total/mean"] = sum(p.totals[j] for p, j in answers) / len(answers)
    correct = [[t >= success_threshold for t in p.totals] for p in scored]
    summary["accuracy"] = sum(map(sum, correct)) / len(answers)
    summary["completion_length"] = sum(p.tokens[j] for p, j in answers) / len(answers)
    summary["truncated_rate"] = sum(p.finish_reasons[j] == "length"
                                    for p, j in answers) / len(answers)
    n = min(len(p.totals) for p in scored)
    if n > 1:
        for k in ks_up_to(n):
            summary[f"pass@{k}"] = sum(pass_at_k(n, sum(c[:n]), k) for c in correct) / len(scored)
            summary[f"maj@{k}"] = sum(majority_correct(p, c, k)
                                      for p, c in zip(scored, correct)) / len(scored)
    return summary


def majority_correct(prompt: ScoredPrompt, correct: list[bool], k: int) -> float:
    """1.0 when the answer most of the first k samples agree on is a correct one (ties: the
    answer seen first)."""
    from posttrain.rewards.math_reward import extract_final_answer

    keys = [extract_final_answer(text) or text.strip() for text in prompt.completions[:k]]
    votes = Counter(keys)
    top = max(votes.values())
    winner = next(i for i, key in enumerate(keys) if votes[key] == top)
    return float(correct[winner])


def records(scored: list[ScoredPrompt]) -> list[dict[str, Any]]:
    """One readable jsonl record per prompt (prompt, columns, completions and their rewards)."""
    out = []
    for p in scored:
        one = len(p.completions) == 1
        out.append({
            "prompt": p.prompt, **p.columns,
            "completion" if one else "completions": p.completions[0] if one else p.completions,
            "reward" if one else "rewards": p.totals[0] if one else p.totals,
            **{f"reward/{name}": values[0] if one else values
               for name, values in p.rewards.items()},
            "finish_reason" if one else "finish_reasons":
                p.finish_reasons[0] if one else p.finish_reasons,
        })
    return out


def _plain(columns: dict[str, Any]) -> dict[str, Any]:
    """Columns fit for a jsonl record (long test code shortened)."""
    return {k: (v[:200] + "..." if isinstance(v, str) and len(v) > 200 else v)
            for k, v in columns.items() if isinstance(v, (str, int, float, bool, type(None)))}
