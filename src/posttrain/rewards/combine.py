"""Combine several reward functions into one weighted total per completion.

Every function's output is checked before it touches training: a wrong length, a string, a NaN,
a value too large for float32 statistics, an exception (``sys.exit`` included) or a call that
outlives ``timeout_s`` becomes a fault that names the function and the rows, instead of a
silently shifted batch, a NaN loss many steps later or a hung run. ``on_error`` says what a fault
does: ``raise`` (stop with a ``RewardError``), ``zero`` (the batch gets 0.0 from that function)
or ``skip`` (None: the function does not apply to the batch); faults are counted in the metrics
(``rewards/<name>/errors``). ``None`` means "does not apply to this row" (e.g. a math reward on a
code prompt) and contributes nothing to the weighted sum. ``check`` calls every function once on
one row before training, so a wrong signature or a missing column fails before any model loads.

Two calling styles (docs/rewards.md):

* **posttrain's**: ``f(prompts, completions, completion_ids, **columns)``, positionally, prompts
  as message lists and completions as strings;
* **TRL's**: keyword arguments only (``f(completions, **kwargs)``, ``f(prompts, completions,
  answer, **kwargs)``): ``prompts=``, ``completions=``, ``completion_ids=`` and every column by
  name; for a row whose prompt was a message list, its prompt stays that list and its completion
  is ``[{"role": "assistant", "content": text}]``, for a text prompt both are strings.

``call_style="auto"`` picks TRL's for a function that cannot take three positional arguments
and posttrain's otherwise; ``"trl"`` / ``"posttrain"`` force one for user functions (built-in
rewards always use posttrain's). ``async def`` functions are awaited (in a worker thread, so a
running event loop, as in a notebook, does not get in the way).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import numbers
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from posttrain.errors import RewardError

RewardFn = Callable[..., Sequence]
MAX_ABS_REWARD = 1e9  # beyond it, float32 group statistics (squares) overflow
ON_ERROR = ("raise", "zero", "skip")
CALL_STYLES = ("auto", "posttrain", "trl")


def call_style(fn: RewardFn, requested: str = "auto") -> str:
    """``posttrain`` or ``trl`` for ``fn`` (see the module docstring): posttrain's for
    ``f(prompts, completions, completion_ids, ...)`` (those names, positional-only
    parameters, or ``*args``), TRL's keyword style for anything else."""
    if requested != "auto":
        return requested
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature: call it as posttrain does
        return "posttrain"
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return "posttrain"
    positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 3 and (
            all(p.kind is inspect.Parameter.POSITIONAL_ONLY for p in positional[:3])
            or [p.name for p in positional[1:3]] == ["completions", "completion_ids"]):
        return "posttrain"
    return "trl"


def trl_arguments(prompts: list, completions: list[str], completion_ids: list[list[int]],
                  prompt_forms: list | None) -> dict[str, list]:
    """TRL's keyword arguments: prompts in the row's own form; completions as one assistant
    message for conversational prompts, as text otherwise."""
    forms = prompt_forms if prompt_forms is not None else prompts
    shaped = [[{"role": "assistant", "content": text}] if isinstance(form, list) else text
              for form, text in zip(forms, completions)]
    return {"prompts": list(forms), "completions": shaped, "completion_ids": completion_ids}


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
    errors: dict[str, int] = field(default_factory=dict)  # faulted calls per function

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
        for name, count in self.errors.items():
            out[f"rewards/{name}/errors"] = float(count)
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
        timeout_s: float | None = None,
        on_error: str = "raise",
        styles: Sequence[str] | None = None,
    ) -> None:
        if styles is not None and any(st not in CALL_STYLES for st in styles):
            raise RewardError(f"reward call styles {list(styles)}: use {list(CALL_STYLES)}")
        if on_error not in ON_ERROR:
            raise RewardError(f"on_error={on_error!r}: choose one of {list(ON_ERROR)}")
        if timeout_s is not None and not timeout_s > 0:
            raise RewardError(f"reward timeout_s must be > 0 (or None), got {timeout_s}")
        self.timeout_s = timeout_s
        self.on_error = on_error
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
        requested = list(styles) if styles is not None else ["auto"] * len(self.functions)
        if len(requested) != len(self.functions):
            raise RewardError(f"{len(requested)} call styles for {len(self.functions)} rewards")
        self.styles = [call_style(fn, st) for fn, st in zip(self.functions, requested)]
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
        prompt_forms: list | None = None,
    ) -> RewardOutput:
        """Call every function on the batch and combine. ``columns`` are the extra dataset
        columns (passed on as keyword lists); ``row_ids`` (default 0..N-1) are the row numbers
        used in error messages, e.g. dataset indices; ``prompt_forms`` are the prompts as the
        rows gave them (text or messages), for TRL-style functions."""
        n = len(completions)
        columns = dict(columns or {})
        ids = list(row_ids) if row_ids is not None else list(range(n))
        for key, values in [("prompts", prompts), ("completion_ids", completion_ids),
                            ("row_ids", ids), *columns.items()]:
            if values is not None and len(values) != n:
                raise RewardError(f"reward input {key!r} has {len(values)} rows but there are "
                                  f"{n} completions")
        per_function: dict[str, list[float | None]] = {}
        errors: dict[str, int] = {}
        first = f"row {ids[0]}" if ids else "an empty batch"
        trl = None
        for name, fn, style in zip(self.names, self.functions, self.styles):
            try:
                if style == "trl":
                    trl = trl or trl_arguments(prompts, completions, completion_ids,
                                               prompt_forms)
                    raw = self._call(name, fn, (), {**columns, **trl})
                else:
                    raw = self._call(name, fn, (prompts, completions, completion_ids), columns)
                per_function[name] = _validate(name, raw, n, ids)
            except RewardError as err:
                if self.on_error == "raise":
                    raise RewardError(f"{err} (batch of {n} rows starting at {first}; columns "
                                      f"given: {sorted(columns)})") from err.__cause__
                errors[name] = errors.get(name, 0) + 1
                fill = 0.0 if self.on_error == "zero" else None
                per_function[name] = [fill] * n
                warnings.warn(f"{err} (batch starting at {first}): counted as {fill} for the "
                              f"batch (on_error: {self.on_error})", stacklevel=2)
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
        return RewardOutput(totals, per_function, all_none_rows=all_none, weights=weights,
                            errors=errors)

    def _call(self, name: str, fn: RewardFn, args: tuple, columns: Mapping) -> object:
        """One call; a ``RewardError`` if it raises anything (``sys.exit`` included) or runs
        past ``timeout_s`` (it is then left to finish in a background thread)."""
        if self.timeout_s is None:
            try:
                return _resolve(fn(*args, **columns))
            except (Exception, SystemExit) as exc:
                raise RewardError(_describe(name, exc)) from exc
        box: dict[str, object] = {}

        def run() -> None:
            try:
                box["value"] = _resolve(fn(*args, **columns))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                box["error"] = exc

        thread = threading.Thread(target=run, name=f"reward-{name}", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            raise RewardError(f"reward function {name!r} did not return within "
                              f"{self.timeout_s:g} s (reward_timeout_s)")
        error = box.get("error")
        if isinstance(error, KeyboardInterrupt):
            raise error
        if isinstance(error, BaseException):
            raise RewardError(_describe(name, error)) from error
        return box.get("value")

    def check(self, prompt: object, columns: Mapping[str, object], where: str,
              prompt_form: object = None) -> None:
        """Before training, on one row (``where`` names it): every function accepts
        ``(prompts, completions, completion_ids, **columns)`` and returns one valid value
        for an empty completion. Functions that offer ``validate_rows(columns, locations)``
        (e.g. the code reward, whose tests must be of a form it can judge) are also given
        every row by the caller."""
        one = {key: [value] for key, value in columns.items()}
        for name, fn, style in zip(self.names, self.functions, self.styles):
            if style == "trl":
                forms = [prompt_form] if prompt_form is not None else None
                args, kwargs = (), {**one, **trl_arguments([prompt], [""], [[]], forms)}
                shape = "f(prompts=, completions=, completion_ids=, **columns) (TRL's style)"
            else:
                args, kwargs = ([prompt], [""], [[]]), one
                shape = "f(prompts, completions, completion_ids, **columns)"
            try:
                inspect.signature(fn).bind(*args, **kwargs)
            except TypeError as err:
                raise RewardError(
                    f"reward function {name!r} cannot be called as {shape} with the columns of "
                    f"{where} ({sorted(columns)}): {err}. Add the missing column to the data, "
                    "or give the function a default for it (docs/rewards.md)."
                ) from None
            except ValueError:  # no inspectable signature: the call below decides
                pass
            try:
                _validate(name, self._call(name, fn, args, kwargs), 1, [where])
            except RewardError as err:
                raise RewardError(f"{err} (checked on {where} with an empty completion, "
                                  "before training)") from None

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
        if abs(float(v)) > MAX_ABS_REWARD:
            raise RewardError(f"reward function {name!r} returned {float(v):g} for row {ids[i]}: "
                              f"|reward| must be <= {MAX_ABS_REWARD:g} (group statistics are "
                              "float32); scale it down")
        out.append(float(v))
    return out


def _resolve(result: object) -> object:
    """The value of an ``async def`` reward (awaited on a fresh event loop in a worker thread,
    which works whether or not the caller already runs a loop); other values as they are."""
    if inspect.isawaitable(result):
        async def wait():
            return await result

        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, wait()).result()
    return result


def _describe(name: str, exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return (f"reward function {name!r} called sys.exit({exc.code!r}): a reward must return "
                "its values (a training run would otherwise end without saving)")
    return f"reward function {name!r} raised {type(exc).__name__}: {exc}"
