"""Metrics to the console (rich progress bar with ETA), ``metrics.jsonl``, and optionally
tensorboard / wandb. One JSON object per logged step, so a run can be plotted with a few lines
of pandas, or by ``posttrain report`` (plots and an HTML page)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from posttrain.errors import ConfigError

console = Console(stderr=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


class MetricsLogger:
    def __init__(
        self,
        output_dir: str | Path,
        total_steps: int,
        report_to: list[str],
        run_name: str,
        config: dict[str, Any],
        show_progress: bool = True,
        enabled: bool = True,
        console_keys: tuple[str, ...] = ("loss",),
    ):
        self.enabled = enabled
        self.console_keys = console_keys
        self.path = Path(output_dir) / "metrics.jsonl"
        self.start = time.time()
        self.tensorboard = self.wandb = None
        self.progress = None
        if not enabled:
            return
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "report_to includes tensorboard but it is not installed: "
                    "pip install 'posttrain[logging]'"
                ) from None
            self.tensorboard = SummaryWriter(str(Path(output_dir) / "tensorboard"))
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    "report_to includes wandb but it is not installed: pip install 'posttrain[logging]'"
                ) from None
            self.wandb = wandb.init(name=run_name, config=config)
        if show_progress:
            # step count and times first, metrics last: a narrow terminal (80 columns) cuts
            # the metrics text, never the ETA
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=16),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            self.task = self.progress.add_task("training", total=total_steps, info="")
            self.progress.start()

    def advance_to(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "elapsed_s": round(time.time() - self.start, 3), **metrics}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)
        keys = [*self.console_keys, *(f"eval/{k}" for k in self.console_keys)]  # + eval rows
        shown = " ".join(f"{k}={_fmt(metrics[k])}" for k in dict.fromkeys(keys) if k in metrics)
        if self.progress is not None:
            room = max(10, console.width - 56)  # what the bar, counts and times leave
            info = shown if len(shown) <= room else shown[: room - 1] + "…"
            self.progress.update(self.task, completed=step, info=info)
        else:
            console.print(f"step {step}: {shown}")

    def message(self, text: str) -> None:
        if self.enabled:
            console.print(text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
