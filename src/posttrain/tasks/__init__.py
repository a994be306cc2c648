"""Built-in task suites: small generated data sets for the recipes, tests and benchmarks.

Every task is generated from code (no download), deterministically from a seed, with a test split
that no train split ever overlaps. ``get_task(name, **options).train(seed)`` / ``.test()`` return
rows (lists of dicts); ``write_jsonl`` stores them. The rows for the default options are also
committed under ``recipes/data/<task>/{train,test}.jsonl`` (regenerate with
``python scripts/make_task_data.py``; a test fails if they drift). Schemas: ``docs/tasks.md`` and
each module's docstring.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from posttrain.errors import ConfigError
from posttrain.tasks import arithmetic, coding, identity, preference
from posttrain.tasks.base import Row, Task, assistant, dumps_jsonl, read_jsonl, user, write_jsonl
from posttrain.tasks.identity import identity_rate, is_new_identity, rewrite_identity

TASKS: dict[str, Callable[..., Task]] = {
    "arithmetic": arithmetic.task,
    "arithmetic-sft": arithmetic.sft_task,
    "identity": identity.task,
    "preference": preference.task,
    "preference-near-miss": preference.near_miss_task,
    "coding": coding.task,
}

# recipes/data holds every task with default options, train drawn with this seed.
DATA_SEED = 0

__all__ = [
    "TASKS",
    "Row",
    "Task",
    "assistant",
    "data_files",
    "dumps_jsonl",
    "get_task",
    "identity_rate",
    "is_new_identity",
    "read_jsonl",
    "rewrite_identity",
    "user",
    "write_jsonl",
]


def get_task(name: str, /, **options) -> Task:
    """The task called ``name``, built with ``options`` (e.g. ``get_task("identity",
    new_name="Bob")``). Unknown names and options raise :class:`ConfigError` listing the valid
    ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; available tasks: {', '.join(TASKS)}.")
    factory = TASKS[name]
    signature = inspect.signature(factory)
    unknown = sorted(set(options) - set(signature.parameters))
    if unknown:
        accepted = ", ".join(f"{p.name}={p.default!r}" for p in signature.parameters.values())
        raise ConfigError(
            f"task {name!r} has no option(s) {', '.join(unknown)}; it accepts: {accepted or 'none'}."
        )
    return factory(**options)


def data_files(seed: int = DATA_SEED) -> dict[Path, str]:
    """Relative path -> file content for everything under ``recipes/data`` (default options).

    Shared by ``scripts/make_task_data.py`` (which writes them) and the test that checks the
    committed files still match the generators.
    """
    files = {}
    for name in TASKS:
        task = get_task(name)
        files[Path(name) / "train.jsonl"] = dumps_jsonl(task.train(seed=seed))
        files[Path(name) / "test.jsonl"] = dumps_jsonl(task.test())
    return files
