"""Resuming: pick the checkpoint to continue from and refuse what would silently change the run.

``resume_point`` takes the newest checkpoint that verifies (``checkpoint.find_resumable``),
reporting each newer one it had to skip; ``check_config`` compares the run's config with the one
recorded in the checkpoint's manifest: bookkeeping keys (logging, evaluation, checkpoint
cadence, progress) may change freely, anything else (learning rate, seed, data, batch sizes,
the number of steps, ...) stops the resume with the list of differences unless
``allow_config_change`` is set. ``check_same_batch`` refuses a change of the effective batch
(the data position is ``step x examples_per_step``), whatever the flag says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.errors import ConfigError
from posttrain.train.checkpoint import find_resumable

# may differ between a checkpoint and the run that resumes it
BOOKKEEPING = {
    "resume", "allow_config_change", "output_dir", "logging_steps", "eval_steps", "save_steps",
    "save_total_limit", "eval_on_start", "progress", "report_to", "run_name",
    "eval_batch_size", "reward_timeout_s",
    # the layout of a step; the step itself (examples_per_step) is checked by check_same_batch
    "per_device_batch_size", "gradient_accumulation_steps", "generation_batch_rows",
}


def resume_point(output_dir: str | Path, message) -> tuple[Path | None, dict[str, Any]]:
    """(checkpoint folder, its manifest) to resume from, or (None, {}) when none verifies;
    ``message`` reports skipped checkpoints."""
    folder, manifest, skipped = find_resumable(output_dir)
    for reason in skipped:
        message(f"skipping checkpoint {reason}")
    if skipped and folder is not None:
        message(f"resuming from the newest good checkpoint, {folder.name}")
    if skipped and folder is None:
        raise ConfigError(
            f"{output_dir}: no checkpoint can be resumed ({'; '.join(skipped)}). Remove "
            "the checkpoints folder to start over, or restore a good copy."
        )
    return folder, manifest


def check_config(saved: dict[str, Any], current: dict[str, Any], allow: bool, message,
                 where: Path) -> None:
    """Stop (or, with ``allow``, warn) when the config differs from the checkpoint's."""
    if not saved:
        return
    changed = sorted(key for key in set(saved) | set(current)
                     if key not in BOOKKEEPING and _norm(saved.get(key)) != _norm(current.get(key)))
    if not changed:
        return
    lines = "; ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in changed)
    if allow:
        message(f"resuming {where.name} with a changed config (allow_config_change): {lines}")
        return
    raise ConfigError(
        f"{where} was written with a different config: {lines}. Resuming would silently mix "
        "two runs; pass allow_config_change=true to resume anyway, or use another output_dir."
    )


def check_same_batch(state: dict, examples_per_step: int | None, found: Path) -> None:
    """A step means the same examples only with the same effective batch; the data position
    of a resumed run is ``step x examples_per_step``. Other world sizes are fine when the
    accumulation makes up for them."""
    saved = state.get("examples_per_step")
    if saved is None or examples_per_step is None or saved == examples_per_step:
        return
    raise ConfigError(
        f"{found} was written with {saved} examples per optimiser step, but this run has "
        f"{examples_per_step} (per_device_batch_size x gradient_accumulation_steps x "
        f"processes). Set gradient_accumulation_steps so that the product is {saved} again: "
        "e.g. double it when going from 2 processes to 1, halve it when going from 1 to 2."
    )


def check_same_algorithm(state: dict, trainer: str, found: Path) -> None:
    """A checkpoint continues the trainer that wrote it (a DPO run must not resume an SFT run's
    folder)."""
    saved = state.get("trainer")
    if saved is not None and saved != trainer:
        raise ConfigError(
            f"{found} was written by {saved}, not {trainer}: give this run its own output_dir."
        )


def truncate_metrics(path: Path, keep_through_step: int) -> int:
    """Drop logged steps after the step we (re)start from (a killed run may have logged steps
    beyond its last checkpoint, and they will be logged again) and any line a crash or a full
    disk left half-written. Returns how many lines were dropped."""
    if not path.exists():
        return 0
    lines = path.read_text(errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn line
        if isinstance(record, dict) and record.get("step", 0) <= keep_through_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
