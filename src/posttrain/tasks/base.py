"""The small pieces every task shares: the :class:`Task` handle, message builders and JSONL I/O.

Rows are plain dicts of JSON types so they can go straight to ``write_jsonl`` and back without a
schema layer; each task module's docstring documents its columns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.errors import DataError

Row = dict[str, Any]
Message = dict[str, str]


def user(content: str) -> list[Message]:
    """A one-turn prompt: ``[{"role": "user", "content": content}]``."""
    return [{"role": "user", "content": content}]


def assistant(content: str) -> list[Message]:
    """A one-turn completion, the shape of ``chosen`` / ``rejected`` in preference rows."""
    return [{"role": "assistant", "content": content}]


@dataclass(frozen=True)
class Task:
    """A generated data set: ``train(seed)`` may vary with the seed, ``test()`` never does, and
    no test prompt ever appears in any train split."""

    name: str
    description: str
    make_train: Callable[[int], list[Row]]
    make_test: Callable[[], list[Row]]

    def train(self, seed: int = 0) -> list[Row]:
        """Training rows; the same ``seed`` always gives the same rows in the same order."""
        return self.make_train(seed)

    def test(self) -> list[Row]:
        """Held-out rows, fixed so that scores stay comparable across runs."""
        return self.make_test()


def dumps_jsonl(rows: Iterable[Row]) -> str:
    """One JSON object per line (UTF-8 text, keys in row order): the on-disk form of a split."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(rows: Iterable[Row], path: str | os.PathLike) -> Path:
    """Write ``rows`` to ``path`` (parents created), replacing the file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(dumps_jsonl(rows), encoding="utf-8", newline="\n")
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | os.PathLike) -> list[Row]:
    """Read a JSONL file written by :func:`write_jsonl` (blank lines skipped)."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}).") from err
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object per line.")
            rows.append(row)
    return rows
