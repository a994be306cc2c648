"""Run reports: PNG plots of the logged metrics plus one self-contained HTML page.

    posttrain report outputs/grpo outputs/rloo outputs/ppo --output reports/compare
    posttrain report outputs/smollm2-course        # a pipeline folder: its stages + table

``build_report`` is what the CLI calls; it is also usable from Python or a notebook. The run
folders are only read, never changed (the default output folder, ``<first run>/report``, is
the one thing written next to them).
"""

from __future__ import annotations

from pathlib import Path

from posttrain.errors import ConfigError
from posttrain.report.runs import Inputs, Pipeline, Run, load_inputs

__all__ = ["Inputs", "Pipeline", "Run", "build_report", "default_title", "load_inputs"]


def default_title(inputs: Inputs) -> str:
    """``posttrain report: a, b, c`` (the pipeline names, then the other runs)."""
    in_pipelines = {id(r) for p in inputs.pipelines for r in p.runs}
    names = [p.name for p in inputs.pipelines]
    names += [r.name for r in inputs.runs if id(r) not in in_pipelines]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"posttrain report: {shown}" if shown else "posttrain report"


def build_report(paths: list[str | Path], output: str | Path | None = None,
                 title: str | None = None) -> Path:
    """Load ``paths`` (run dirs and pipeline dirs), draw the plots into ``output`` (default
    ``<first path>/report``) and write ``index.html`` there; returns the page's path."""
    from posttrain.report.page import render
    from posttrain.report.plots import draw_all

    inputs = load_inputs(paths)
    folder = Path(output) if output is not None else Path(paths[0]) / "report"
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"report output {folder} is a file; pass a folder with --output")
    folder.mkdir(parents=True, exist_ok=True)
    plots = draw_all(inputs.runs, folder)
    index = folder / "index.html"
    index.write_text(render(inputs, plots, title or default_title(inputs)), encoding="utf-8")
    return index
