"""The report as one self-contained HTML page: plots embedded as base64 PNGs, inline CSS, no
external resources, so the file can be mailed, attached to an issue or opened offline.

Everything that comes from a file (run names, config YAML, answers, metric names) is
HTML-escaped: a completion is model output and may contain any markup. A small inline script
counts the images that really decoded and writes ``N of N plots shown``, so a headless browser
test (and a reader) can tell a broken image from a missing one.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any

from posttrain.report.plots import Plot
from posttrain.report.runs import Inputs, Pipeline, Run

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1240px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2rem;
     margin-top: 2.5rem; } h3 { margin-top: 1.6rem; }
.meta, .note { color: #666; font-size: .9rem; }
.note { font-style: italic; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll { overflow-x: auto; }
.up { color: #17803a; } .down { color: #b42318; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9rem; }
pre { background: #f7f7f7; padding: .7rem; overflow-x: auto; font-size: .82rem; }
td.answer { white-space: pre-wrap; max-width: 28rem; font-family: ui-monospace, monospace;
            font-size: .82rem; }
details summary { cursor: pointer; }
#plots-status { font-weight: bold; }
"""

# Counts the plots whose PNG decoded (naturalWidth > 0) once the page has loaded.
SCRIPT = """
(function () {
  function check() {
    var images = document.querySelectorAll("img.plot");
    var shown = 0;
    images.forEach(function (img) { if (img.complete && img.naturalWidth > 0) { shown++; } });
    document.getElementById("plots-status").textContent =
      shown + " of " + images.length + " plots shown";
  }
  if (document.readyState === "complete") { check(); } else {
    window.addEventListener("load", check);
  }
})();
"""

CAPTIONS = {
    "loss": "Training loss per step (solid) and evaluation loss (dashed, where evaluated).",
    "rewards": "Mean reward of each reward function over the completions sampled at each "
               "step; rewards/total is the weighted sum the advantages are computed from.",
    "kl": "KL divergence of the policy from the reference model (how far training moved it).",
    "eval": "Scores on the evaluation data (mean rewards, accuracies), at each evaluation.",
    "completion_length": "Mean completion length in tokens; a jump to the cap often means "
                         "truncation (see frac_truncated).",
    "learning_rate": "The learning-rate schedule actually applied (warm-up, decay).",
}


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A number for a table: integers as they are, floats to 4 significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return esc(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e6:
        return f"{int(value)}"
    return f"{value:.4g}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _table(header: list[str], rows: list[list[str]], text: tuple[int, ...] = (0,)) -> str:
    """A table; cells are already-escaped HTML. Columns not in ``text`` are numbers (right
    aligned)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" if i in text else f'<td class="num">{c}</td>'
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _final_metrics(run: Run, plots: list[Plot]) -> str:
    keys = [k for plot in plots for panel in plot.panels for k in panel.keys]
    shown = [(k, run.last(k)) for k in dict.fromkeys(keys)]
    parts = [f"{esc(k)}&nbsp;=&nbsp;{fmt(v)}" for k, v in shown if v is not None]
    return "<br>".join(parts) or '<span class="note">no metrics logged yet</span>'


def _summary(runs: list[Run], plots: list[Plot]) -> str:
    rows = [[f'<a href="#run-{i}">{esc(r.name)}</a>', fmt(r.last_step), duration(r.wall_s),
             fmt(len(r.records)), _final_metrics(r, plots)] for i, r in enumerate(runs)]
    return _table(["run", "steps", "wall time", "records", "final metrics (last logged)"], rows,
                  text=(0, 4))


def _plots(plots: list[tuple[Plot, Path]]) -> str:
    if not plots:
        return '<p class="note">No plottable metrics in these runs yet.</p>'
    figures = []
    for plot, path in plots:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        figures.append(
            f'<figure id="plot-{esc(plot.slug)}"><img class="plot" alt="{esc(plot.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{esc(plot.title)}: '
            f'{esc(CAPTIONS.get(plot.slug, ""))} Left: against step; right: against wall '
            f"time.</figcaption></figure>")
    return "\n".join(figures)


def _change(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return fmt(value)
    delta = value - base
    css = "up" if delta > 0 else "down" if delta < 0 else ""
    return f'{fmt(value)} <span class="{css}">({delta:+.4g})</span>'


def _pipeline(pipeline: Pipeline, run_ids: dict[int, int]) -> str:
    model = f" &middot; starting model {esc(pipeline.model)}" if pipeline.model else ""
    out = [f"<h2>Pipeline {esc(pipeline.name)}</h2>",
           f'<p class="meta">{esc(pipeline.path)}{model}</p>']
    if pipeline.rows and pipeline.columns:
        base = pipeline.columns.index("base") if "base" in pipeline.columns else 0
        rows = [[esc(metric)] + [fmt(v) if i == base else _change(v, values[base])
                                 for i, v in enumerate(values)]
                for metric, values in pipeline.rows]
        out += ["<h3>Before / after</h3>",
                f'<p class="note">Each stage\'s score with its change vs '
                f"{esc(pipeline.columns[base])} in brackets.</p>",
                _table(["metric", *map(esc, pipeline.columns)], rows)]
    if pipeline.stages:
        rows = []
        for stage in pipeline.stages:
            name = str(stage.get("name") or stage.get("output") or "stage")
            folder = pipeline.path / str(stage.get("output") or name)
            link = next((f'<a href="#run-{run_ids[id(r)]}">{esc(name)}</a>'
                         for r in pipeline.runs if r.path == folder), esc(name))
            rows.append([link, esc(stage.get("type", "")), esc(stage.get("status", "")),
                         duration(stage["seconds"]) if isinstance(stage.get("seconds"),
                                                                  (int, float)) else "–"])
        out += ["<h3>Stages</h3>",
                _table(["stage", "type", "status", "time"], rows, text=(0, 1, 2))]
    if pipeline.missing_stages:
        out.append('<p class="note">No metrics.jsonl (not run yet, or a stage that does not '
                   f"train) for: {esc(', '.join(pipeline.missing_stages))}.</p>")
    if pipeline.answers:
        lead = ["suite", "prompt"] if any("suite" in a for a in pipeline.answers) else ["prompt"]
        columns = list(pipeline.columns)
        for answer in pipeline.answers:
            columns += [k for k in answer if k not in lead and k not in columns]
        rows = [[_text(a.get(c, "")) for c in [*lead, *columns]] for a in pipeline.answers]
        cells = "".join(
            "<tr>" + "".join(f'<td class="answer">{c}</td>' for c in row) + "</tr>"
            for row in rows)
        head = "".join(f"<th>{esc(h)}</th>" for h in [*lead, *columns])
        out += ["<h3>Sample answers</h3>",
                f'<div class="scroll"><table><tr>{head}</tr>{cells}</table></div>']
    return "\n".join(out)


def _text(value: Any) -> str:
    """Answer or prompt text; a chat message list is shown as JSON rather than dropped."""
    if value is None:
        return ""
    return esc(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _run(index: int, run: Run) -> str:
    out = [f'<h3 id="run-{index}">{esc(run.name)}</h3>', f'<p class="meta">{esc(run.path)}</p>']
    if run.skipped_lines:
        out.append(f'<p class="note">{run.skipped_lines} invalid line(s) in metrics.jsonl '
                   "skipped (a torn last line while the run is writing is normal).</p>")
    if run.config_text is not None:
        out.append("<details><summary>config (posttrain_config.yaml)</summary>"
                   f"<pre>{esc(run.config_text)}</pre></details>")
    else:
        out.append('<p class="note">No posttrain_config.yaml yet: it is written when '
                   "training finishes.</p>")
    keys, rows = run.eval_table()
    if rows:
        out += ["<h4>Evaluations</h4>",
                _table(["step", *map(esc, keys)],
                       [[fmt(step), *(fmt(values.get(k)) for k in keys)]
                        for step, values in rows], text=())]
    else:
        out.append('<p class="note">No evaluation records.</p>')
    return "\n".join(out)


def render(inputs: Inputs, plots: list[tuple[Plot, Path]], title: str) -> str:
    """The whole page as a string."""
    run_ids = {id(run): i for i, run in enumerate(inputs.runs)}
    generated = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    sources = ", ".join(esc(r.path) for r in inputs.runs) or "–"
    plot_list = [plot for plot, _ in plots]
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">Generated {esc(generated)} by posttrain report from {sources}.</p>',
        '<p id="plots-status">plots not checked (JavaScript is off)</p>',
        "<h2>Runs</h2>",
        _summary(inputs.runs, plot_list) if inputs.runs
        else '<p class="note">No run has a metrics.jsonl yet.</p>',
    ]
    body += [_pipeline(p, run_ids) for p in inputs.pipelines]
    body += ["<h2>Plots</h2>", _plots(plots), "<h2>Run details</h2>"]
    body += [_run(i, run) for i, run in enumerate(inputs.runs)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body>\n</html>\n")
