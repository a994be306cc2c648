"""Helpers for the example notebooks (``examples/*.ipynb``): a live training plot, side-by-side
answer tables, a before/after numbers table, paths, and the ``RESULTS`` line the tests read.

    from posttrain.notebook import LivePlot, answers_table, numbers_table
    plot = LivePlot({"loss": ["loss", "eval/loss"]})
    posttrain.sft(config, callbacks=[plot])          # the figure redraws after every logged step

Tables are plain objects with ``_repr_html_`` / ``_repr_markdown_`` (no pandas): the last
expression of a cell shows them. IPython is imported only when a figure is shown, so this module
imports (and its tests run) without it.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from posttrain.train.trainer import Callback

QUICK_ENV = "POSTTRAIN_NOTEBOOK_QUICK"  # "1": the short smoke-test run (CI)
ROOT_ENV = "POSTTRAIN_REPO_ROOT"  # the repository root, when the cwd is outside it
OUTPUT_ENV = "POSTTRAIN_NOTEBOOK_OUTPUT"  # where runs go; default <root>/outputs/notebooks
RESULTS_MARKER = "RESULTS "
_RUN_FILES = ("posttrain_config.yaml", "metrics.jsonl", "checkpoints", "config.json")


def quick_mode(env: Mapping[str, str] | None = None) -> bool:
    """True when ``POSTTRAIN_NOTEBOOK_QUICK=1``: the notebook shrinks its run to a smoke test."""
    return (os.environ if env is None else env).get(QUICK_ENV, "0") == "1"


def repo_root(start: str | Path | None = None, marker: str = "recipes") -> Path:
    """The repository root: ``$POSTTRAIN_REPO_ROOT`` if set, else the first folder at or above
    ``start`` (default: the cwd) that holds ``marker``/ (recipes and their data)."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / marker).is_dir():
            return folder
    raise FileNotFoundError(f"no {marker}/ folder at or above {here}: start Jupyter inside the "
                            f"repository, or set {ROOT_ENV}=/path/to/the/repository")


def fresh_output_dir(name: str, root: str | Path | None = None) -> Path:
    """``$POSTTRAIN_NOTEBOOK_OUTPUT/name`` (default ``<root>/outputs/notebooks/name``), emptied
    of a previous run so that re-running a notebook does not stop at "already has
    checkpoints". Refuses to delete a non-empty folder that does not look like a run."""
    base = Path(os.environ.get(OUTPUT_ENV) or Path(root or repo_root()) / "outputs" / "notebooks")
    folder = base / name
    if folder.exists():
        entries = list(folder.iterdir())
        if entries and not any((folder / f).exists() for f in _RUN_FILES):
            raise FileExistsError(f"{folder} holds files that are not a posttrain run; "
                                  "move them or pick another name")
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


# --- tables --------------------------------------------------------------------------------
class Table:
    """A small table that renders as HTML in Jupyter and as markdown anywhere else."""

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[Any]], title: str = ""):
        self.header = [str(h) for h in header]
        self.rows = [[("" if c is None else str(c)) for c in row] for row in rows]
        self.title = title
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"row {row!r} has {len(row)} cells, the header "
                                 f"{len(self.header)}")

    def _repr_html_(self) -> str:
        cell = "border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;"
        cell += "white-space:pre-wrap;"
        head = "".join(f'<th style="{cell}">{html.escape(h)}</th>' for h in self.header)
        body = "".join("<tr>" + "".join(f'<td style="{cell}">{html.escape(c)}</td>' for c in row)
                       + "</tr>" for row in self.rows)
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return (f'<table style="border-collapse:collapse">{caption}<thead><tr>{head}</tr>'
                f"</thead><tbody>{body}</tbody></table>")

    def _repr_markdown_(self) -> str:
        def md(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", "<br>")

        lines = [f"**{self.title}**", ""] if self.title else []
        lines.append("| " + " | ".join(md(h) for h in self.header) + " |")
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._repr_markdown_()

    __repr__ = __str__


def shorten(text: str, max_chars: int = 300) -> str:
    """``text`` cut to ``max_chars`` characters (with an ellipsis)."""
    text = str(text).strip()
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def marked(texts: Sequence[str], correct: Sequence[bool]) -> list[str]:
    """Each text with a check or a cross in front, for answer tables."""
    return [("✅ " if ok else "❌ ") + str(t) for t, ok in zip(texts, correct, strict=True)]


def answers_table(prompts: Sequence[str], columns: Mapping[str, Sequence[str]],
                  max_chars: int = 300, title: str = "") -> Table:
    """Prompts with one column per model (e.g. ``{"before": [...], "after": [...]}``)."""
    for name, values in columns.items():
        if len(values) != len(prompts):
            raise ValueError(f"column {name!r} has {len(values)} answers for "
                             f"{len(prompts)} prompts")
    rows = [[shorten(p, max_chars), *(shorten(columns[c][i], max_chars) for c in columns)]
            for i, p in enumerate(prompts)]
    return Table(["prompt", *columns], rows, title)


def format_value(value: Any, percent: bool = False) -> str:
    """A number for a table: ``45.5%`` for rates, 4 significant digits otherwise."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if percent:
        return f"{100 * value:.1f}%"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def numbers_table(before: Mapping[str, Any], after: Mapping[str, Any],
                  percent: Sequence[str] = (), title: str = "") -> Table:
    """metric | before | after | change; keys in ``percent`` are rates shown as percentages
    (change in points)."""
    rows = []
    for key in [*before, *(k for k in after if k not in before)]:
        b, a = before.get(key), after.get(key)
        is_rate = key in percent
        change = "-"
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
            delta = a - b
            change = f"{100 * delta:+.1f} pts" if is_rate else f"{delta:+.4g}"
        rows.append([key, format_value(b, is_rate), format_value(a, is_rate), change])
    return Table(["metric", "before", "after", "change"], rows, title)


# --- the live plot -------------------------------------------------------------------------
class LivePlot(Callback):
    """Records every logged metric and redraws a figure of ``panels`` after each logged step
    and evaluation: ``{"panel title": ["loss", "eval/loss"], ...}`` (keys of
    ``metrics.jsonl``). Evaluation keys (``eval/...``) are drawn with markers. With
    ``show=False``, or outside IPython, it only records (``history``, ``render_png``)."""

    def __init__(self, panels: Mapping[str, Sequence[str]], title: str = "", show: bool = True,
                 panel_size: tuple[float, float] = (4.2, 3.0)):
        if not panels:
            raise ValueError("LivePlot needs at least one panel")
        self.panels = {name: list(keys) for name, keys in panels.items()}
        self.title = title
        self.show = show
        self.panel_size = panel_size
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._handle: Any = None

    def record(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append every finite number of ``metrics`` to ``history`` at ``step``."""
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.history.setdefault(key, []).append((int(step), float(value)))

    def last(self, key: str, default: float | None = None) -> float | None:
        """The most recent value of ``key``."""
        points = self.history.get(key)
        return points[-1][1] if points else default

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        self.record(step, metrics)
        self.redraw()

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        self.record(step, metrics)
        self.redraw()

    def on_train_end(self, step: int, metrics: dict[str, float]) -> None:
        self.redraw()

    def figure(self):
        """A matplotlib ``Figure`` of the panels (no pyplot: nothing is shown twice)."""
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        width, height = self.panel_size
        fig = Figure(figsize=(width * len(self.panels), height), layout="constrained")
        axes = fig.subplots(1, len(self.panels), squeeze=False)[0]
        for ax, (name, keys) in zip(axes, self.panels.items()):
            drawn = False
            for key in keys:
                points = self.history.get(key)
                if not points:
                    continue
                steps, values = zip(*points)
                few = len(points) <= 30
                style = "o-" if key.startswith("eval/") else (".-" if few else "-")
                ax.plot(steps, values, style, label=key, markersize=4)
                drawn = True
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if drawn:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "waiting for the first step", ha="center", va="center",
                        transform=ax.transAxes, color="gray")
        if self.title:
            fig.suptitle(self.title)
        return fig

    def render_png(self) -> bytes:
        """The figure as PNG bytes."""
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=80)
        return buffer.getvalue()

    def redraw(self) -> None:
        """Show the figure, or update the one already shown (one output, redrawn in place)."""
        if not self.show:
            return
        try:
            from IPython import get_ipython
            from IPython.display import Image, display
        except ImportError:
            return
        if get_ipython() is None:
            return
        image = Image(data=self.render_png(), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)


# --- results for the tests -----------------------------------------------------------------
def results_line(results: Mapping[str, Any]) -> str:
    """``RESULTS {...}``: one line of JSON that tests find in the executed notebook."""
    return RESULTS_MARKER + json.dumps(dict(results), sort_keys=True, default=float)


def print_results(results: Mapping[str, Any]) -> None:
    """Print :func:`results_line`."""
    print(results_line(results))


def parse_results(text: str) -> dict[str, Any]:
    """The last ``RESULTS {...}`` line in ``text`` as a dict."""
    lines = [line for line in text.splitlines() if line.startswith(RESULTS_MARKER)]
    if not lines:
        raise ValueError("no RESULTS line found")
    return json.loads(lines[-1][len(RESULTS_MARKER):])
