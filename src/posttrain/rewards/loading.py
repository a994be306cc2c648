"""Turn reward specs from a config into callables.

A spec is a built-in name (``math``, ``format``/``think_format``, ``boxed_format``, ``code``,
``reward_model`` with a ``path``), ``package.module:function`` or ``path/to/file.py:function``.
Config errors surface here, before any model loads, with the names that would have worked.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial, update_wrapper
from pathlib import Path
from types import ModuleType

from posttrain.errors import ConfigError
from posttrain.rewards.combine import RewardSet, reward_name

RewardFn = Callable[..., Sequence]

BUILTIN_REWARDS = {
    "math": "final answer equals the `answer` column (math-verify)",
    "format": "completion matches a regex (option: pattern; default <think>..</think><answer>..)",
    "think_format": "completion is <think>...</think> <answer>...</answer>",
    "boxed_format": "completion has exactly one \\boxed{...}",
    "code": "fraction of the `tests` column passed, run in a sandbox",
    "reward_model": "score from a sequence-classification model (option: path)",
}


def load_reward(spec: str | RewardFn, **options) -> RewardFn:
    """Resolve one spec. ``options`` configure a built-in (e.g. ``path=`` for ``reward_model``,
    ``timeout_s=`` for ``code``); for a user function they are bound as keyword arguments."""
    if callable(spec):
        return _bind(spec, options)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"reward spec must be a non-empty string or a callable, got {spec!r}")
    spec = spec.strip()
    if spec in BUILTIN_REWARDS:
        return _builtin(spec, options)
    if ":" not in spec:
        if spec.endswith(".py"):
            raise ConfigError(f"reward spec {spec!r} names a file but no function: write "
                              f"'{spec}:function_name'")
        names = ", ".join(BUILTIN_REWARDS)
        raise ConfigError(f"unknown reward {spec!r}. Built-in rewards: {names}. For your own "
                          "function write 'package.module:function' or 'path/to/file.py:function'")
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ConfigError(f"reward spec {spec!r} must look like 'module:function' or "
                          "'path/to/file.py:function'")
    module = _load_file(target, spec) if target.endswith(".py") else _import(target, spec)
    return _bind(_get_function(module, attr, spec), options)


def load_reward_set(
    specs: Sequence[str | RewardFn | Mapping], weights: Sequence[float] | None = None,
    timeout_s: float | None = None, on_error: str = "raise", call_style: str = "auto",
) -> RewardSet:
    """A ``RewardSet`` from a list of specs. A mapping spec is ``{"name": spec, "weight": w,
    **options}``; its weight wins over ``weights``. Built-ins are logged under their spec name
    (``rewards/math/mean``), user functions under their ``__name__``."""
    functions, resolved, names, styles = [], [], [], []
    if weights is not None and len(weights) != len(specs):
        raise ConfigError(f"{len(weights)} reward weights for {len(specs)} rewards: give one "
                          "weight per reward")
    for i, spec in enumerate(specs):
        weight = 1.0 if weights is None else weights[i]
        if isinstance(spec, Mapping):
            options = dict(spec)
            name = options.pop("name", None) or options.pop("function", None)
            if name is None:
                raise ConfigError(f"reward #{i} {dict(spec)!r} has no 'name' (a built-in, "
                                  "'module:function' or 'file.py:function')")
            weight = options.pop("weight", weight)
            functions.append(load_reward(name, **options))
        else:
            name = spec
            functions.append(load_reward(spec))
        resolved.append(weight)
        builtin = isinstance(name, str) and name.strip() in BUILTIN_REWARDS
        names.append(name.strip() if builtin else reward_name(functions[-1]))
        styles.append("posttrain" if builtin else call_style)  # built-ins read text
    return RewardSet(functions, resolved, names=names, timeout_s=timeout_s, on_error=on_error,
                     styles=styles)


def _builtin(name: str, options: dict) -> RewardFn:
    if name == "reward_model":
        if not options.get("path") and not options.get("path_or_model"):
            raise ConfigError("reward 'reward_model' needs a path: the folder of a trained reward "
                              "model, e.g. {name: reward_model, path: runs/rm/final}")
        from posttrain.rewards.reward_model import RewardModelScorer

        path = options.pop("path", None) or options.pop("path_or_model")
        return _construct(name, RewardModelScorer, path, **options)
    if name == "code":
        from posttrain.rewards.code_reward import CodeReward, code_reward

        return _construct(name, CodeReward, **options) if options else code_reward
    if name in ("format", "think_format"):
        from posttrain.rewards.format_reward import make_format_reward, think_answer_format

        if not options:
            return think_answer_format
        return _construct(name, make_format_reward, **{"name": name, **options})
    _no_options(name, options)
    if name == "math":
        from posttrain.rewards.math_reward import math_reward

        return math_reward
    from posttrain.rewards.format_reward import boxed_format

    return boxed_format


def _construct(name: str, factory: Callable, /, *args, **options) -> RewardFn:
    try:
        inspect.signature(factory).bind(*args, **options)
    except TypeError as exc:
        allowed = [p for p in inspect.signature(factory).parameters if p != "self"]
        raise ConfigError(f"bad options {sorted(options)} for reward {name!r}: {exc}. Allowed "
                          f"options: {allowed}") from exc
    return factory(*args, **options)


def _no_options(name: str, options: dict) -> None:
    if options:
        raise ConfigError(f"reward {name!r} takes no options, got {sorted(options)}")


def _import(module_name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"reward {spec!r}: cannot import module {module_name!r} ({exc}). Check "
                          "the name and that it is installed, or use 'path/to/file.py:function'"
                          ) from exc
    except Exception as exc:
        raise ConfigError(f"reward {spec!r}: importing module {module_name!r} failed with "
                          f"{type(exc).__name__}: {exc}") from exc


def _load_file(file_name: str, spec: str) -> ModuleType:
    path = Path(file_name).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"reward {spec!r}: the file {path} does not exist")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"posttrain_user_rewards.{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"reward {spec!r}: {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # so dataclasses / pickling inside the file work
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ConfigError(f"reward {spec!r}: running {path} failed with {type(exc).__name__}: "
                          f"{exc}") from exc
    return module


def _get_function(module: ModuleType, attr: str, spec: str) -> RewardFn:
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            where = getattr(module, "__file__", None) or module.__name__
            found = _callables(module)
            raise ConfigError(f"reward {spec!r}: no {attr!r} in {where}. Callables found there: "
                              f"{', '.join(found) if found else '(none)'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"reward {spec!r}: {attr!r} is a {type(obj).__name__}, not a function")
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return obj  # type: ignore[return-value]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise ConfigError(
            f"reward {spec!r} must accept **kwargs: it is called as f(prompts, completions, "
            "completion_ids, **columns) with every extra dataset column as a keyword list; "
            f"its signature is {attr}{inspect.signature(obj)}"
        )
    return obj  # type: ignore[return-value]


def _callables(module: ModuleType) -> list[str]:
    names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
    own = [n for n in names if getattr(vars(module)[n], "__module__", None) == module.__name__]
    return sorted(own or names)


def _bind(fn: RewardFn, options: dict) -> RewardFn:
    if not options:
        return fn
    bound = partial(fn, **options)
    try:
        update_wrapper(bound, fn)  # keeps __name__ for logging
    except AttributeError:
        pass
    return bound
