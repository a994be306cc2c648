"""The pipeline's before/after table: a row per evaluation metric, a column per model (the
starting model, then each stage that changed it), and the change from first to last; plus a
few answers to the same prompts from every column. Written as ``summary.json`` (read by
``posttrain report``) and ``summary.md``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from posttrain.evaluation.compare import format_cell, metric_names
from posttrain.pipeline.spec import Pipeline


def build_summary(pipeline: Pipeline, stages: dict[str, dict], evals: dict[str, dict]
                  ) -> dict[str, Any]:
    """``{"name", "columns", "rows": [{"metric", "values"}], "stages", "answers"}``."""
    columns = [c for c in ["base", *(s.name for s in pipeline.stages)] if c in evals]
    suites: list[str] = []
    for column in columns:
        suites += [name for name in evals[column] if name not in suites]
    rows, answers = [], []
    for suite in suites:
        results = [evals[c].get(suite, {}) for c in columns]
        for metric in metric_names([r for r in results if r]):
            rows.append({"metric": f"{suite}/{metric}",
                         "values": [r.get(metric) for r in results]})
        for i in range(max((len(r.get("answers", [])) for r in results), default=0)):
            entry: dict[str, Any] = {"suite": suite, "prompt": None}
            for column, result in zip(columns, results):
                kept = result.get("answers", [])
                if i < len(kept):
                    entry["prompt"] = entry["prompt"] or kept[i]["prompt"]
                    entry[column] = kept[i]["answer"]
            answers.append(entry)
    stage_rows = [{"name": s.name, "type": s.type, "output": s.name,
                   "status": stages.get(s.name, {}).get("status", "not run"),
                   "seconds": stages.get(s.name, {}).get("seconds")} for s in pipeline.stages]
    return {"name": pipeline.name, "model": pipeline.model, "columns": columns, "rows": rows,
            "stages": stage_rows, "answers": answers}


def format_summary(summary: dict[str, Any]) -> str:
    """The table as text: metric, one column per model, and the change last - first."""
    columns = summary["columns"]
    if not columns:
        return "no evaluations (the pipeline has no `evaluation` list)"
    width = max([len(r["metric"]) for r in summary["rows"]] + [6])
    cells = [max(len(c), 8) for c in columns]
    head = f"{'metric':<{width}}" + "".join(f"  {c:>{w}}" for c, w in zip(columns, cells))
    lines = [f"before/after ({summary['name']}):", head + f"  {'change':>8}"]
    for row in summary["rows"]:
        values = row["values"]
        line = f"{row['metric']:<{width}}" + "".join(
            f"  {format_cell(v):>{w}}" for v, w in zip(values, cells))
        first, last = values[0], values[-1]
        change = (f"{last - first:+.4f}" if isinstance(first, (int, float))
                  and isinstance(last, (int, float)) and len(values) > 1 else "")
        lines.append(line + f"  {change:>8}")
    for entry in summary["answers"][:6]:
        lines.append(f"[{entry['suite']}] {textwrap.shorten(str(entry['prompt']), 90)}")
        for column in columns:
            if column in entry:
                lines.append(f"    {column:>8}: {textwrap.shorten(str(entry[column]), 90)}")
    return "\n".join(lines)


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False)
                                         + "\n")
    table = format_summary(summary)
    (folder / "summary.md").write_text(f"# {summary['name']}\n\n```\n{table}\n```\n")
