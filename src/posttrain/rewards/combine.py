"""Combine several reward functions into one weighted total per completion.

Every function's output is checked before it touches training: a wrong length, a string, a NaN
or an exception becomes a ``RewardError`` that names the function and the row, instead of a
silently shifted batch or a NaN loss many steps later. ``None`` means "does not apply to this row"
(e.g. a math reward on a code prompt) and contributes nothing to the weighted sum.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from posttrain.errors import RewardError

RewardFn = Callable[..., Sequence]


def reward_name(fn: Callable) -> str:
    """The name a reward function is logged under: its ``__name__`` or its class name."""
    return getattr(fn, "__name__", None) or type(fn).__name__


@dataclass
class RewardOutput:
    """Totals ``[N]`` plus each function's raw values (None where it did not apply)."""

    totals: list[float]
    per_function: dict[str, list[float | None]]
    all_none_rows: int = 0  # rows where every function returned None (total set to 0.0)
    weights: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """``rewards/<name>/mean`` and ``/std`` over the rows where the function applied (std
        with ddof=0), the same for ``rewards/total``, and ``rewards/all_none_rows``."""
        out: dict[str, float] = {}
        for name, values in [*self.per_function.items(), ("total", self.totals)]:
            present = [float(v) for v in values if v is not None]
            if present:
                mean = sum(present) / len(present)
                out[f"rewards/{name}/mean"] = mean
                out[f"rewards/{name}/std"] = math.sqrt(
                    sum((v - mean) ** 2 for v in present) / len(present))
        out["rewards/all_none_rows"] = float(self.all_none_rows)
        return out


class RewardSet:
    """Several reward functions with weights; ``score`` returns a ``RewardOutput``.

    Names (for logs and weight mappings) come from a mapping's keys, ``names``, or each
    function's ``__name__``; repeated names get a suffix (``format``, ``format_2``).

    Calling the set like a reward function returns just the totals, so a set can itself be
    used wherever a reward callable is expected.
    """

    def __init__(
        self,
        functions: Sequence[RewardFn] | Mapping[str, RewardFn],
        weights: Sequence[float] | Mapping[str, float] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if isinstance(functions, Mapping):
            named = list(functions.items())
        else:
            if names is not None and len(names) != len(functions):
                raise RewardError(f"{len(names)} names for {len(functions)} reward functions")
            given = names if names is not None else [reward_name(fn) for fn in functions]
            named = list(zip(given, functions))
        if not named:
            raise RewardError("a RewardSet needs at least one reward function")
        self.names: list[str] = []
        for name, _ in named:  # two rewards called "format" are logged as format, format_2
            unique, k = name, 2
            while unique in self.names:
                unique, k = f"{name}_{k}", k + 1
            self.names.append(unique)
        self.functions: list[RewardFn] = [fn for _, fn in named]
        for name, fn in zip(self.names, self.functions):
            if not callable(fn):
                raise RewardError(f"reward {name!r} is not callable (got {type(fn).__name__})")
        self.weights = self._resolve_weights(weights)
        self.all_none_rows = 0  # running count over every batch scored so far
        self.__name__ = "+".join(self.names)

    def _resolve_weights(self, weights) -> list[float]:
        if weights is None:
            return [1.0] * len(self.functions)
        if isinstance(weights, Mapping):
            unknown = set(weights) - set(self.names)
            if unknown:
                raise RewardError(f"weights given for unknown rewards {sorted(unknown)}; "
                                  f"the rewards are {self.names}")
            resolved = [weights.get(name, 1.0) for name in self.names]
        else:
            resolved = list(weights)
            if len(resolved) != len(self.functions):
                raise RewardError(f"{len(resolved)} weights for {len(self.functions)} reward "
                                  f"functions {self.names}: give one weight per function")
        for name, w in zip(self.names, resolved):
            if not isinstance(w, numbers.Real) or not math.isfinite(w):
                raise RewardError(f"weight for reward {name!r} must be a finite number, got {w!r}")
        return [float(w) for w in resolved]

    def score(
        self,
        prompts: list,
        completions: list[str],
        completion_ids: list[list[int]],
        columns: Mapping[str, list] | None = None,
        row_ids: Sequence[int] | None = None,
    ) -> RewardOutput:
        """Call every function on the batch and combine. ``columns`` are the extra dataset
        columns (passed on as keyword lists); ``row_ids`` (default 0..N-1) are the row numbers
        used in error messages, e.g. dataset indices."""
        n = len(completions)
        columns = dict(columns or {})
        ids = list(row_ids) if row_ids is not None else list(range(n))
        for key, values in [("prompts", prompts), ("completion_ids", completion_ids),
                            ("row_ids", ids), *columns.items()]:
            if values is not None and len(values) != n:
                raise RewardError(f"reward input {key!r} has {len(values)} rows but there are "
                                  f"{n} completions")
        per_function: dict[str, list[float | None]] = {}
        for name, fn in zip(self.names, self.functions):
            try:
                raw = fn(prompts, completions, completion_ids, **columns)
            except Exception as exc:
                first = f"row {ids[0]}" if ids else "an empty batch"
                raise RewardError(
                    f"reward function {name!r} raised {type(exc).__name__}: {exc} (batch of {n} "
                    f"rows starting at {first}; columns given: {sorted(columns)})"
                ) from exc
            per_function[name] = _validate(name, raw, n, ids)
        totals: list[float] = []
        all_none = 0
        for i in range(n):
            parts = [w * values[i] for w, values in zip(self.weights, per_function.values())
                     if values[i] is not None]
            if not parts:
                all_none += 1
            totals.append(float(sum(parts)))
        self.all_none_rows += all_none
        weights = dict(zip(self.names, self.weights))
        return RewardOutput(totals, per_function, all_none_rows=all_none, weights=weights)

    def __call__(
        self, prompts: list, completions: list[str], completion_ids: list[list[int]], **columns
    ) -> list[float]:
        return self.score(prompts, completions, completion_ids, columns).totals


def _validate(name: str, raw: object, n: int, ids: list[int]) -> list[float | None]:
    """The function's values as floats/None, or a RewardError naming the function and row."""
    if isinstance(raw, (str, bytes, Mapping)) or not hasattr(raw, "__len__"):
        raise RewardError(f"reward function {name!r} must return a list with one number (or "
                          f"None) per completion, got {type(raw).__name__}")
    values = list(raw)  # type: ignore[call-overload]
    if len(values) != n:
        raise RewardError(f"reward function {name!r} returned {len(values)} values for a batch "
                          f"of {n} completions: return one number (or None) per completion")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if hasattr(v, "item") and not isinstance(v, numbers.Real):  # 0-d tensor / array
            try:
                v = v.item()
            except (ValueError, RuntimeError):
                pass
        if not isinstance(v, numbers.Real):
            raise RewardError(f"reward function {name!r} returned {v!r} ({type(v).__name__}) "
                              f"for row {ids[i]}: rewards must be numbers or None")
        if not math.isfinite(float(v)):
            raise RewardError(f"reward function {name!r} returned {float(v)} for row {ids[i]}: "
                              "rewards must be finite (use None for 'not applicable')")
        out.append(float(v))
    return out
