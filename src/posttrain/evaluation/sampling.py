"""Scores of n sampled answers per prompt: pass@k (unbiased) and maj@k (majority vote).

Pure functions over already-scored samples, so that evaluation from any generator (and the
periodic evaluation inside training) reports the same numbers. Not yet wired into
``posttrain eval`` (issue 15).
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
