"""Scores of n sampled answers per prompt: pass@k (unbiased) and maj@k (majority vote).

Pure functions over already-scored samples, so that evaluation from any generator reports the
same numbers; ``evaluate_arithmetic_sampled`` is ``posttrain eval --samples N`` on the
``arithmetic`` task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

from posttrain.errors import PosttrainError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1):

        pass@k = 1 - C(n - c, k) / C(n, k)

    the probability that at least one of k samples drawn without replacement from the n is
    correct. Computed as 1 - prod_{i = n-c+1}^{n} (1 - k / i), which avoids huge binomials. The
    naive estimate 1 - (1 - c/n)^k is biased low.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise PosttrainError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k}).")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def maj_at_k(answers: Sequence[Hashable | None], gold: Hashable, k: int) -> float:
    """maj@k: 1.0 when the most frequent of the first k extracted answers equals ``gold``.

    ``None`` (no answer could be extracted) never wins the vote. A tie goes to the answer seen
    first, so the result does not depend on hash order.
    """
    if not 1 <= k <= len(answers):
        raise PosttrainError(f"maj_at_k: k={k} but {len(answers)} answers.")
    votes = Counter(a for a in answers[:k] if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(a for a in answers[:k] if a is not None and votes[a] == top)
    return float(winner == gold)


def sampled_summary(correct: Sequence[Sequence[bool]], ks: Sequence[int],
                    answers: Sequence[Sequence[Hashable | None]] | None = None,
                    gold: Sequence[Hashable] | None = None) -> dict[str, float]:
    """Means over prompts of pass@k (and maj@k when ``answers`` and ``gold`` are given) for each
    k; every prompt needs at least max(ks) samples."""
    if not correct:
        raise PosttrainError("sampled_summary: no prompts.")
    summary: dict[str, float] = {}
    for k in ks:
        summary[f"pass@{k}"] = sum(pass_at_k(len(row), sum(map(bool, row)), k)
                                   for row in correct) / len(correct)
        if answers is not None and gold is not None:
            summary[f"maj@{k}"] = sum(maj_at_k(a, g, k)
                                      for a, g in zip(answers, gold)) / len(answers)
    return summary


def ks_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself: the usual pass@k columns."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else [*ks, n]


def evaluate_arithmetic_sampled(model, tokenizer, rows: list[dict], samples: int,
                                temperature: float = 1.0, batch_size: int = 16,
                                max_new_tokens: int = 128, seed: int = 0,
                                generator=None, progress: bool = False) -> dict:
    """``samples`` answers per ``arithmetic`` row at ``temperature``, each scored by the training
    reward (:func:`~posttrain.rewards.math_reward.math_reward`): pass@k and maj@k (vote over the
    extracted final answers) for k = 1, 2, 4, ..., ``samples``, the mean accuracy of a single
    sample, mean length and truncation. ``seed`` makes the samples reproducible."""
    from posttrain.evaluation.arithmetic import _check_rows
    from posttrain.evaluation.common import answer_groups, prompt_text
    from posttrain.rewards.math_reward import extract_final_answer, math_reward
    from posttrain.rollout.base import SamplingParams

    if samples < 1 or temperature <= 0:
        raise PosttrainError(f"sampled evaluation needs samples >= 1 and temperature > 0 "
                             f"(got samples={samples}, temperature={temperature}); "
                             "temperature 0 is the greedy evaluation.")
    _check_rows(rows)
    params = SamplingParams(n=samples, temperature=temperature, max_new_tokens=max_new_tokens,
                            seed=seed)
    groups = answer_groups(model, tokenizer, [row["prompt"] for row in rows], params,
                           batch_size, generator, progress)
    correct, answers, records = [], [], []
    for row, group in zip(rows, groups):
        texts = [a.text for a in group]
        rewards = math_reward([row["prompt"]] * len(texts), texts, [[]] * len(texts),
                              answer=[str(row["answer"])] * len(texts))
        correct.append([r == 1.0 for r in rewards])
        answers.append([extract_final_answer(t) for t in texts])
        records.append({"prompt": prompt_text(row["prompt"]), "answer": str(row["answer"]),
                        "completions": texts, "correct": correct[-1]})
    every = [a for group in groups for a in group]
    gold = [str(row["answer"]) for row in rows]
    return {
        "task": "arithmetic", "n": len(rows), "samples_per_prompt": samples,
        "temperature": temperature,
        **sampled_summary(correct, ks_up_to(samples), answers, gold),
        "mean_sample_accuracy": sum(map(sum, correct)) / len(every),
        "mean_completion_tokens": sum(a.tokens for a in every) / len(every),
        "truncated_rate": sum(a.finish_reason == "length" for a in every) / len(every),
        "records": records,
    }
