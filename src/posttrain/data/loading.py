"""Read rows from files or the Hugging Face hub, remembering where each row came from.

Every later error ("row 17 of train.jsonl: field `chosen` is empty") needs the row's origin, so
loading returns :class:`Rows`: the dicts plus a human-readable location for each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.errors import DataError

FILE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class Rows:
    """Loaded rows and, for each, where it came from (for error messages)."""

    rows: list[dict[str, Any]]
    locations: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, n: int | None) -> Rows:
        if n is None:
            return self
        return Rows(self.rows[:n], self.locations[:n], self.source)


def load_rows(spec: str, split: str = "train", subset: str | None = None) -> Rows:
    """Load ``spec``: a .jsonl/.json/.parquet/.csv path, or ``hf:org/name`` from the hub."""
    if spec.startswith("hf:"):
        return _load_hub(spec[3:], split, subset)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            f"data file not found: {spec}. Give a .jsonl/.json/.parquet/.csv path, "
            f"or `hf:org/name` for a hub dataset."
        )
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _load_jsonl(path)
    if suffix == ".json":
        return _load_json(path)
    if suffix in (".parquet", ".csv"):
        return _load_with_datasets(path, FILE_KINDS[suffix])
    raise DataError(
        f"{path}: unsupported file type {suffix!r}; use one of {', '.join(FILE_KINDS)}."
    )


def _load_jsonl(path: Path) -> Rows:
    rows, locations = [], []
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}, line {line_number}"
            line = _decode(raw, where)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{where}: not valid JSON ({err.msg} at column {err.colno})."
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: each line must be a JSON object, got {type(row).__name__}.")
            rows.append(row)
            locations.append(where)
    if not rows:
        raise DataError(f"{path}: the file has no rows.")
    return Rows(rows, locations, str(path))


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: not valid UTF-8 (byte {err.start + 1} of the line: "
                        f"{raw[err.start:err.start + 1]!r}); save the file as UTF-8.") from None


def _load_json(path: Path) -> Rows:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8; save the file as UTF-8.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}).") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}}).")
    if not data:
        raise DataError(f"{path}: the file has no rows.")
    return Rows(data, [f"{path}, row {i}" for i in range(len(data))], str(path))


def _load_with_datasets(path: Path, kind: str) -> Rows:
    import datasets

    try:
        dataset = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as err:  # noqa: BLE001 - any reader failure is a data problem for the user
        raise DataError(f"{path}: could not read as {kind}: {err}") from None
    rows = dataset.to_list()
    if not rows:
        raise DataError(f"{path}: the file has no rows.")
    offset = 2 if kind == "csv" else 0  # csv: header is line 1, first row is line 2
    label = "line" if kind == "csv" else "row"
    return Rows(rows, [f"{path}, {label} {i + offset}" for i in range(len(rows))], str(path))


def _load_hub(name: str, split: str, subset: str | None) -> Rows:
    import datasets

    try:
        dataset = datasets.load_dataset(name, subset, split=split)
    except Exception as err:  # noqa: BLE001
        raise DataError(
            f"hf:{name} (subset {subset}, split {split}) could not be loaded: {err}"
        ) from None
    return Rows(dataset.to_list(), [f"hf:{name}[{split}] row {i}" for i in range(len(dataset))], name)
