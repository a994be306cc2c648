"""Read rows from files, folders, the Hugging Face hub or memory, remembering where each row
came from.

Every later error ("row 17 of train.jsonl: field `chosen` is empty") needs the row's origin, so
loading returns :class:`Rows`: the dicts plus a human-readable location for each.

Sources: ``.jsonl``; ``.json`` (a list of objects, ``{"data": [...]}``, or JSON lines, which is
what ``datasets.Dataset.to_json`` writes); ``.parquet``; ``.csv`` (every cell kept as text, so
" 31" stays " 31"); a ``save_to_disk`` folder; ``hf:org/name`` (or ``hf:`` + a local folder);
a list of row dicts or a ``datasets.Dataset`` (Python API); and a weighted mixture of any of
these (``mixture``). ``columns`` renames fields first (``apply_columns``).
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


def load_rows(spec: Any, split: str = "train", subset: str | None = None,
              columns: dict[str, Any] | None = None, seed: int = 0) -> Rows:
    """Load ``spec`` (see the module docstring), then apply the ``columns`` mapping."""
    rows = _load_any(spec, split, subset, seed)
    return apply_columns(rows, columns) if columns else rows


def _load_any(spec: Any, split: str, subset: str | None, seed: int) -> Rows:
    if _is_mixture(spec):
        return mixture(spec, split, subset, seed)
    if isinstance(spec, list):
        if not spec or not all(isinstance(r, dict) for r in spec):
            raise DataError("in-memory data must be a non-empty list of row dicts.")
        return Rows(list(spec), [f"row {i} of the given list" for i in range(len(spec))],
                    "the given list")
    if hasattr(spec, "to_list") and hasattr(spec, "column_names"):  # a datasets.Dataset
        return _from_dataset(spec, "the given Dataset")
    if hasattr(spec, "keys") and not isinstance(spec, (str, dict)):  # a DatasetDict
        if split not in spec:
            raise DataError(f"the given DatasetDict has no split {split!r} (it has "
                            f"{sorted(spec.keys())}); set train_split / eval_split.")
        return _from_dataset(spec[split], f"the given DatasetDict[{split}]")
    if not isinstance(spec, str) or not spec:
        raise DataError(f"data must be a file path, a folder, `hf:org/name`, a list of rows or "
                        f"a Dataset; got {type(spec).__name__}.")
    if spec.startswith("hf:"):
        local = Path(spec[3:]).expanduser()
        if local.is_dir():
            return _load_saved(local, split)
        return _load_hub(spec[3:], split, subset)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_saved(path, split)
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
    if suffix == ".csv":
        return _load_csv(path)
    if suffix == ".parquet":
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
        if err.msg == "Extra data":  # JSON lines in a .json file (datasets' to_json default)
            return _load_jsonl(path)
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


def _load_csv(path: Path) -> Rows:
    """Every cell as text: a CSV says nothing about types, and guessing turns " 31" into 31."""
    import csv

    with path.open(encoding="utf-8", newline="") as handle:
        try:
            rows = [dict(row) for row in csv.DictReader(handle)]
        except (csv.Error, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not a readable CSV file ({err}).") from None
    if not rows:
        raise DataError(f"{path}: the file has no rows.")
    return Rows(rows, [f"{path}, line {i + 2}" for i in range(len(rows))], str(path))


def _load_saved(folder: Path, split: str) -> Rows:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    if not ((folder / "dataset_info.json").exists() or (folder / "dataset_dict.json").exists()
            or (folder / "state.json").exists()):
        raise DataError(f"{folder}: a folder, but not one written by datasets' save_to_disk "
                        "(no dataset_info.json or dataset_dict.json).")
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{folder}: could not load with datasets.load_from_disk: {err}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{folder}: no split {split!r} (it has {sorted(loaded)}); set "
                            "train_split / eval_split.")
        return _from_dataset(loaded[split], f"{folder}[{split}]")
    return _from_dataset(loaded, str(folder))


def _from_dataset(dataset, name: str) -> Rows:
    rows = dataset.to_list()
    if not rows:
        raise DataError(f"{name}: the dataset has no rows.")
    return Rows(rows, [f"{name} row {i}" for i in range(len(rows))], name)


MIXTURE_KEYS = {"path", "weight", "split", "subset", "columns"}


def _is_mixture(spec: Any) -> bool:
    return isinstance(spec, list) and bool(spec) and all(
        isinstance(e, dict) and "path" in e and set(e) <= MIXTURE_KEYS for e in spec)


def mixture(entries: list[dict], split: str, subset: str | None, seed: int) -> Rows:
    """Several datasets in proportion to their ``weight`` (default 1): the mixture has as many
    rows as the datasets together, dataset i contributing ``round(total x w_i / sum w)`` of
    them (a seeded sample without replacement when that is fewer than it has, whole copies plus
    a sample when more). Each row keeps its origin for error messages."""
    import random

    loaded = []
    for entry in entries:
        weight = entry.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
            raise DataError(f"mixture entry {entry['path']!r}: weight must be > 0, got {weight!r}.")
        rows = load_rows(entry["path"], entry.get("split", split), entry.get("subset", subset),
                         entry.get("columns"))
        loaded.append((rows, float(weight)))
    total = sum(len(rows) for rows, _ in loaded)
    weight_sum = sum(w for _, w in loaded)
    generator = random.Random(seed)
    out_rows, out_where = [], []
    for rows, weight in loaded:
        want = max(1, round(total * weight / weight_sum))
        picks = list(range(len(rows))) * (want // len(rows))
        picks += sorted(generator.sample(range(len(rows)), want % len(rows)))
        out_rows += [rows.rows[i] for i in picks]
        out_where += [rows.locations[i] for i in picks]
    return Rows(out_rows, out_where, "mixture of " + ", ".join(str(e["path"]) for e in entries))


def apply_columns(rows: Rows, columns: dict[str, Any]) -> Rows:
    """Rename columns onto posttrain's fields: ``{field: column}``, or ``{field: [col, ...]}``
    to join several text columns (the non-empty ones, a blank line apart), as Alpaca's
    instruction + input. Every other column stays (rewards may read it)."""
    out = []
    for row, where in zip(rows.rows, rows.locations):
        row = dict(row)
        for target, source in columns.items():
            sources = source if isinstance(source, list) else [source]
            missing = [c for c in sources if c not in row]
            if missing:
                raise DataError(f"{where}: column(s) {missing} named in `columns` are missing "
                                f"(row has {sorted(row)}).")
            if isinstance(source, list):
                parts = [str(row[c]) for c in sources if row[c] is not None and str(row[c]).strip()]
                row[target] = "\n\n".join(parts)
            else:
                row[target] = row[source]
        out.append(row)
    return Rows(out, rows.locations, rows.source)
