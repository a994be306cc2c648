"""Read run folders and pipeline folders into small dataclasses the plots and the page share.

A *run dir* is what every trainer writes: ``metrics.jsonl`` (one JSON object per logged step or
evaluation) and, once training finished, ``posttrain_config.yaml``. A *pipeline dir* (from
``posttrain pipeline``) has a ``summary.json`` and one run dir per stage. Both may still be
written while we read them, so a torn or invalid line is skipped and counted, never fatal: a
report of a live run is the point of the command.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "posttrain_config.yaml"
SUMMARY_FILE = "summary.json"


@dataclass
class Point:
    """One value of one metric: the step and the wall time (minutes) it was logged at."""

    step: int
    minutes: float | None
    value: float


@dataclass
class Run:
    """One training run: its records in file order, its config text, and what was skipped."""

    name: str
    path: Path
    records: list[dict[str, Any]]
    config_text: str | None = None
    skipped_lines: int = 0

    @property
    def keys(self) -> list[str]:
        """Every numeric metric key any record has, in first-seen order."""
        seen: dict[str, None] = {}
        for record in self.records:
            for key, value in record.items():
                if key not in ("step", "elapsed_s") and _number(value) is not None:
                    seen.setdefault(key, None)
        return list(seen)

    def series(self, key: str) -> list[Point]:
        """The finite values of ``key`` by step; a step logged twice keeps its last value."""
        by_step: dict[int, Point] = {}
        for record, minutes in zip(self.records, self._minutes()):
            value = _number(record.get(key))
            if value is not None and math.isfinite(value):
                by_step[record["step"]] = Point(record["step"], minutes, value)
        return [by_step[s] for s in sorted(by_step)]

    def last(self, key: str) -> float | None:
        """The value of ``key`` at its last logged step (None when never logged)."""
        points = self.series(key)
        return points[-1].value if points else None

    @property
    def last_step(self) -> int:
        return max((r["step"] for r in self.records), default=0)

    @property
    def wall_s(self) -> float | None:
        """Seconds from start to the last record, added up across resumes."""
        minutes = [m for m in self._minutes() if m is not None]
        return max(minutes) * 60 if minutes else None

    def eval_table(self) -> tuple[list[str], list[tuple[int, dict[str, float]]]]:
        """(eval keys, [(step, {key: value})]) of the records holding ``eval/`` metrics."""
        keys: dict[str, None] = {}
        rows: dict[int, dict[str, float]] = {}
        for record in self.records:
            values = {k: v for k, v in record.items()
                      if k.startswith("eval/") and _number(v) is not None}
            if values:
                keys.update(dict.fromkeys(values))
                rows.setdefault(record["step"], {}).update(values)
        return list(keys), sorted(rows.items())

    def _minutes(self) -> list[float | None]:
        """Wall time in minutes per record. ``elapsed_s`` restarts at 0 when a run resumes
        from a checkpoint, so a drop adds the time logged before it: the axis keeps rising."""
        out: list[float | None] = []
        offset = previous = 0.0
        for record in self.records:
            elapsed = _number(record.get("elapsed_s"))
            if elapsed is None:
                out.append(None)
                continue
            if elapsed + 1e-9 < previous:
                offset += previous
            previous = elapsed
            out.append((offset + elapsed) / 60)
        return out


@dataclass
class Pipeline:
    """A ``posttrain pipeline`` folder: its before/after table, stages, sample answers, runs."""

    name: str
    path: Path
    columns: list[str]
    rows: list[tuple[str, list[float | None]]]
    stages: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    missing_stages: list[str] = field(default_factory=list)
    model: str | None = None


@dataclass
class Inputs:
    """Everything named on the command line: plain runs plus pipelines (whose stage runs are
    also in ``runs``, so the plots overlay every run)."""

    runs: list[Run]
    pipelines: list[Pipeline]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, skipped line count) of a metrics.jsonl. A line that is not a JSON object
    with an integer ``step`` (a torn last line of a live run, a stray edit) is skipped."""
    records: list[dict[str, Any]] = []
    skipped = 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            step = record.get("step") if isinstance(record, dict) else None
            if isinstance(step, bool) or not isinstance(step, int):
                skipped += 1
                continue
            records.append(record)
    return records, skipped


def load_run(path: Path, name: str | None = None) -> Run:
    """A run dir as a :class:`Run`; a missing config is fine (the run may still be going)."""
    records, skipped = read_metrics(path / METRICS_FILE)
    config_path = path / CONFIG_FILE
    config_text = (config_path.read_text(encoding="utf-8", errors="replace")
                   if config_path.is_file() else None)
    return Run(name or path.name, path, records, config_text, skipped)


def load_pipeline(path: Path) -> Pipeline:
    """A pipeline dir: ``summary.json`` checked field by field, each stage's run dir loaded
    (a stage that has not written metrics yet is listed as missing, not an error)."""
    summary_path = path / SUMMARY_FILE
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ConfigError(f"{summary_path} is not valid JSON ({err}); if the pipeline is "
                          "still writing it, run posttrain report again when it is done") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{summary_path}: expected a JSON object with name, columns, rows")
    name = str(summary.get("name") or path.name)
    columns = [str(c) for c in _list(summary, "columns", summary_path)]
    rows = []
    for i, row in enumerate(_list(summary, "rows", summary_path)):
        if not isinstance(row, dict) or not isinstance(row.get("values", []), list):
            raise ConfigError(f"{summary_path}: rows[{i}] must be an object with 'metric' and "
                              "a 'values' list (one per column)")
        values = [_number(v) for v in row.get("values", [])]
        values = (values + [None] * len(columns))[: len(columns)]
        rows.append((str(row.get("metric", f"row {i}")), values))
    stages = [s for s in _list(summary, "stages", summary_path) if isinstance(s, dict)]
    answers = [a for a in _list(summary, "answers", summary_path) if isinstance(a, dict)]
    model = str(summary["model"]) if summary.get("model") else None
    pipeline = Pipeline(name, path, columns, rows, stages, answers, model=model)
    for stage in stages:
        stage_name = str(stage.get("name") or stage.get("output") or "stage")
        stage_dir = path / str(stage.get("output") or stage_name)
        if (stage_dir / METRICS_FILE).is_file():
            pipeline.runs.append(load_run(stage_dir, f"{name}/{stage_name}"))
        else:
            pipeline.missing_stages.append(stage_name)
    return pipeline


def _list(summary: dict[str, Any], key: str, where: Path) -> list[Any]:
    value = summary.get(key) or []
    if not isinstance(value, list):
        raise ConfigError(f"{where}: '{key}' must be a list, got {type(value).__name__}")
    return value


def load_inputs(paths: list[str | Path]) -> Inputs:
    """Run dirs and pipeline dirs, in the order given; names made unique for the legends."""
    if not paths:
        raise ConfigError("posttrain report needs at least one run dir or pipeline dir")
    runs: list[Run] = []
    pipelines: list[Pipeline] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            what = "is a file, not a folder" if path.exists() else "does not exist"
            raise ConfigError(f"run dir {path} {what}; pass the folder a trainer wrote "
                              f"(output_dir, holding {METRICS_FILE}) or a pipeline folder")
        if (path / METRICS_FILE).is_file():
            runs.append(load_run(path))
        elif (path / SUMMARY_FILE).is_file():
            pipeline = load_pipeline(path)
            pipelines.append(pipeline)
            runs.extend(pipeline.runs)
        else:
            raise ConfigError(_not_a_run(path))
    _unique_names(runs)
    return Inputs(runs, pipelines)


def _not_a_run(path: Path) -> str:
    message = (f"{path} holds neither {METRICS_FILE} (a run dir) nor {SUMMARY_FILE} "
               "(a pipeline dir)")
    inside = sorted(p.parent.name for p in path.glob(f"*/{METRICS_FILE}"))
    if inside:
        shown = ", ".join(str(path / n) for n in inside[:5]) + (" ..." if len(inside) > 5 else "")
        return f"{message}; its sub-folders are run dirs, pass them instead: {shown}"
    return f"{message}; has training started? (metrics.jsonl appears after the first step)"


def _unique_names(runs: list[Run]) -> None:
    """Two runs called ``out`` in different parents become ``a/out`` and ``b/out``; still
    equal names get ``(2)``, ``(3)``: a legend must tell every line apart."""
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1 and "/" not in run.name:
            run.name = f"{run.path.resolve().parent.name}/{run.name}"
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} ({seen[run.name]})"
