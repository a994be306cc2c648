"""One PNG per metric family (loss, rewards, KL, eval scores, completion length, learning rate).

Each figure has one row per panel and two columns: the metric against the optimiser step and
against wall time. Step shows sample efficiency, wall time shows cost: PPO may beat GRPO per step
and still lose per minute, which is the comparison people actually pay for. Every run is drawn in
the same axes in one colour across all figures, so runs compare at a glance.

matplotlib is imported only when a report is drawn, through the Agg canvas directly (no
``pyplot``): no window, no global backend switch that would disturb a notebook.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from posttrain.report.runs import Run

# matplotlib's tab10 colours: one per run, the same run the same colour in every figure
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LINESTYLES = ("-", "--", ":", "-.")
MAX_PANELS = 12  # rows per figure; more would make an unreadably tall image


@dataclass(frozen=True)
class Panel:
    """One row of a figure: ``keys`` share the axes (train solid, eval dashed)."""

    title: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Plot:
    """One figure: a metric family, the file it is saved as, and its rows."""

    slug: str
    title: str
    ylabel: str
    panels: tuple[Panel, ...]

    @property
    def filename(self) -> str:
        return f"{self.slug}.png"


ALL_SLUGS = ("loss", "rewards", "kl", "eval", "completion_length", "learning_rate")


def _is_reward_mean(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 3 and parts[0] == "rewards" and parts[2] == "mean"


def _is_kl(key: str) -> bool:
    return key in ("kl", "approx_kl") or key.startswith("kl/")


def _is_eval_score(key: str) -> bool:
    """Eval keys that are scores to watch rise: means and accuracies (not loss, not length,
    which have their own figures, and not spreads such as ``/std``)."""
    if not key.startswith("eval/") or key in ("eval/loss", "eval/completion_length"):
        return False
    last = key.rsplit("/", 1)[-1]
    return key.endswith("/mean") or "accuracy" in last or last.endswith("_rate")


def _reward_order(key: str) -> tuple[int, str]:
    return (key == "rewards/total/mean", key)  # the weighted total last, after its parts


def families(runs: list[Run]) -> list[Plot]:
    """The figures worth drawing: a family no run logged is left out, and so is a panel."""
    present: dict[str, None] = {}
    for run in runs:
        present.update(dict.fromkeys(run.keys))
    keys = list(present)
    plots: list[Plot] = []

    def add(slug: str, title: str, ylabel: str, panels: list[Panel]) -> None:
        panels = [p for p in panels if any(k in present for k in p.keys)]
        if panels:
            plots.append(Plot(slug, title, ylabel, tuple(panels[:MAX_PANELS])))

    add("loss", "Loss (train solid, eval dashed)", "loss",
        [Panel("loss", ("loss", "eval/loss"))])
    rewards = sorted((k for k in keys if _is_reward_mean(k)), key=_reward_order)
    add("rewards", "Mean reward per reward function", "mean reward",
        [Panel(f"reward: {k.split('/')[1]}", (k,)) for k in rewards])
    add("kl", "KL divergence to the reference policy", "KL",
        [Panel(k, (k,)) for k in keys if _is_kl(k)])
    add("eval", "Evaluation scores", "score",
        [Panel(k, (k,)) for k in sorted(k for k in keys if _is_eval_score(k))])
    add("completion_length", "Completion length in tokens (train solid, eval dashed)", "tokens",
        [Panel("completion length", ("completion_length", "eval/completion_length"))])
    add("learning_rate", "Learning rate", "learning rate",
        [Panel("learning rate", ("learning_rate",))])
    return plots


def draw(plot: Plot, runs: list[Run], path: Path, dpi: int = 96) -> Path:
    """Render ``plot`` for ``runs`` to the PNG ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = len(plot.panels)
    figure = Figure(figsize=(12, 0.7 + 3.1 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 2, squeeze=False)
    figure.suptitle(plot.title, fontsize=13, fontweight="bold")
    for row, panel in enumerate(plot.panels):
        by_step, by_time = axes[row]
        drawn_time = False
        for index, run in enumerate(runs):
            colour = COLOURS[index % len(COLOURS)]
            for style, key in zip(LINESTYLES, panel.keys):
                points = run.series(key)
                if not points:
                    continue
                label = run.name if len(panel.keys) == 1 else f"{run.name} · {key}"
                marker = "o" if key.startswith("eval/") or len(points) <= 30 else None
                common = {"color": colour, "linestyle": style, "marker": marker,
                          "markersize": 3.5, "linewidth": 1.5, "label": label}
                by_step.plot([p.step for p in points], [p.value for p in points], **common)
                timed = [p for p in points if p.minutes is not None]
                if timed:
                    by_time.plot([p.minutes for p in timed], [p.value for p in timed], **common)
                    drawn_time = True
        by_step.set_title(f"{panel.title} vs step", fontsize=10)
        by_step.set_xlabel("step")
        by_time.set_title(f"{panel.title} vs wall time", fontsize=10)
        by_time.set_xlabel("wall time (minutes)")
        for ax in (by_step, by_time):
            ax.set_ylabel(plot.ylabel)
            ax.grid(True, alpha=0.3)
        if not drawn_time:
            by_time.text(0.5, 0.5, "no elapsed_s in these records", ha="center",
                         va="center", transform=by_time.transAxes, color="#777777")
        if by_step.lines:
            by_step.legend(fontsize=8, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)
    return path


def draw_all(runs: list[Run], folder: Path) -> list[tuple[Plot, Path]]:
    """Every family's PNG in ``folder``; a family's PNG left from an earlier report whose runs
    no longer have that family is removed, so the folder matches the page."""
    plots = families(runs)
    written = [(plot, draw(plot, runs, folder / plot.filename)) for plot in plots]
    drawn = {plot.slug for plot in plots}
    for slug in ALL_SLUGS:
        stale = folder / f"{slug}.png"
        if slug not in drawn and stale.is_file():
            stale.unlink()
    return written
