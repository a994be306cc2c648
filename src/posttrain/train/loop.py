"""The one training loop every algorithm runs on (built on ``accelerate``).

An algorithm supplies *what* to compute; this loop does the rest, once:

    for step_batch in algorithm.step_batches(start_step):      # one optimiser step each
        for micro_batch in this process's share:
            loss_share, metrics = algorithm.loss(wrapped, micro_batch, step_batch)
            backward(loss_share)                               # shares add up to the step loss
        clip grad norm -> optimiser step -> scheduler step -> zero grad
        log, evaluate, checkpoint

Gradient accumulation: an algorithm's loss returns this micro-batch's *share* of the step's loss,
normalised by totals counted over the whole step batch (tokens, sequences), so the shares add up
to exactly the loss of the full batch (1 x 4 == 4 x 1). The loop never divides by the number of
micro-batches. Under DDP, gradients are averaged across processes, so each share is multiplied
by the number of processes.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from posttrain.config import TrainConfig, to_dict
from posttrain.errors import ConfigError
from posttrain.train.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from posttrain.train.logging import MetricsLogger
from posttrain.train.optim import build_optimizer, build_scheduler

MAX_NONFINITE_STEPS = 5


@dataclass
class StepBatch:
    """Everything for one optimiser step: its micro-batches (for all processes), totals used as
    loss normalisers, and metrics gathered while preparing it (e.g. rollout statistics)."""

    micro_batches: list[Any]
    totals: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class Algorithm(Protocol):
    config: TrainConfig
    model: nn.Module  # what the optimiser trains (HF model, peft model, or a ModuleDict)
    tokenizer: Any

    def total_steps(self) -> int: ...

    def step_batches(self, start_step: int) -> Iterator[StepBatch]: ...

    def loss(
        self, wrapped: nn.Module, micro_batch: Any, step_batch: StepBatch
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def wrap(self, model: nn.Module) -> nn.Module: ...

    def evaluate(self, wrapped: nn.Module) -> dict[str, float]: ...

    def save(self, output_dir: str) -> None: ...

    def attach(self, wrapped: nn.Module, accelerator: Any) -> None: ...


def train(algorithm: Algorithm) -> dict[str, float]:
    """Run ``algorithm`` to completion (or resume it); returns the last logged metrics."""
    from accelerate import Accelerator

    config = algorithm.config
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    torch.manual_seed(config.seed)

    total_steps = algorithm.total_steps()
    wrapped = algorithm.wrap(algorithm.model)  # e.g. TokenLogprobs(model)
    optimizer = build_optimizer(algorithm.model, config)
    scheduler = build_scheduler(optimizer, config, total_steps)
    wrapped, optimizer, scheduler = accelerator.prepare(wrapped, optimizer, scheduler)
    algorithm.attach(wrapped, accelerator)

    start_step = 0
    found = latest_checkpoint(config.output_dir)
    if found is not None and not config.resume:
        raise ConfigError(
            f"{config.output_dir} already has checkpoints ({found.name}): resume with --resume "
            "(resume=true), or choose another output_dir."
        )
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    if config.resume:
        if found is not None:
            state = load_checkpoint(found, algorithm.model, optimizer, scheduler)
            start_step = state["step"]
            if hasattr(algorithm, "load_state_dict"):
                algorithm.load_state_dict(state.get("algorithm", {}))
    if accelerator.is_main_process:
        truncate_metrics(Path(config.output_dir) / "metrics.jsonl", start_step)

    logger = MetricsLogger(
        config.output_dir,
        total_steps,
        config.report_to,
        config.run_name or config.output_dir,
        to_dict(config),
        show_progress=config.progress,
        enabled=accelerator.is_main_process,
        console_keys=getattr(algorithm, "console_keys", ("loss",)),
    )
    if start_step:
        logger.message(f"resumed from {found} at step {start_step}/{total_steps}")
    logger.advance_to(start_step)

    world, rank = accelerator.num_processes, accelerator.process_index
    last_metrics: dict[str, float] = {}
    nonfinite_in_a_row = 0
    step = start_step
    if config.eval_on_start and start_step == 0:
        logger.log(0, _evaluate(algorithm, wrapped))
    algorithm.model.train()
    batches = algorithm.step_batches(start_step)
    try:
        while step < total_steps:
            t_prepare = time.time()
            step_batch = next(batches, None)
            if step_batch is None:
                break
            prepare_s = time.time() - t_prepare
            t_train = time.time()
            mine = step_batch.micro_batches[rank::world]
            sums: dict[str, float] = defaultdict(float)
            loss_total = 0.0
            for i, micro in enumerate(mine):
                sync = i == len(mine) - 1
                context = accelerator.no_sync(wrapped) if not sync and world > 1 else _null()
                with context:
                    loss_share, metrics = algorithm.loss(wrapped, micro, step_batch)
                    accelerator.backward(loss_share * world)
                loss_total += loss_share.item()
                for key, value in metrics.items():
                    sums[key] += value
            grad_norm = _clip(accelerator, algorithm.model, config.max_grad_norm)
            if math.isfinite(loss_total) and math.isfinite(grad_norm):
                optimizer.step()
                nonfinite_in_a_row = 0
            else:
                nonfinite_in_a_row += 1
                logger.message(f"step {step + 1}: non-finite loss/grad ({loss_total}); skipped")
                if nonfinite_in_a_row >= MAX_NONFINITE_STEPS:
                    raise RuntimeError(
                        f"{MAX_NONFINITE_STEPS} optimiser steps in a row had a non-finite loss "
                        "or gradient: lower learning_rate, check the data, or use float32."
                    )
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            if step % config.logging_steps == 0 or step == total_steps:
                last_metrics = {
                    "loss": loss_total,
                    **{k: v / max(len(mine), 1) for k, v in sums.items()},
                    **step_batch.metrics,
                    "grad_norm": grad_norm,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "time/prepare_s": round(prepare_s, 3),
                    "time/train_s": round(time.time() - t_train, 3),
                }
                logger.log(step, last_metrics)
            else:
                logger.advance_to(step)
            if config.eval_steps and step % config.eval_steps == 0 and step < total_steps:
                logger.log(step, _evaluate(algorithm, wrapped))
            if config.save_steps and step % config.save_steps == 0 and step < total_steps:
                _checkpoint(accelerator, algorithm, optimizer, scheduler, step)
        final_eval = _evaluate(algorithm, wrapped)
        if final_eval:
            logger.log(step, final_eval)
            last_metrics.update(final_eval)
        _checkpoint(accelerator, algorithm, optimizer, scheduler, step)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            algorithm.save(config.output_dir)
    finally:
        logger.close()
    return last_metrics


def truncate_metrics(path: Path, keep_through_step: int) -> None:
    """Drop logged steps after the step we (re)start from: a killed run may have logged steps
    beyond its last checkpoint, and they will be logged again."""
    if not path.exists():
        return
    kept = [
        line for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= keep_through_step
    ]
    path.write_text("".join(line + "\n" for line in kept))


def _checkpoint(accelerator, algorithm, optimizer, scheduler, step: int) -> None:
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    state = {"step": step}
    if hasattr(algorithm, "state_dict"):
        state["algorithm"] = algorithm.state_dict()
    save_checkpoint(
        checkpoint_dir(algorithm.config.output_dir, step),
        algorithm.model,
        optimizer,
        scheduler,
        state,
        keep=algorithm.config.save_total_limit,
    )


def _clip(accelerator, model: nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    if max_norm > 0:
        return float(accelerator.clip_grad_norm_(params, max_norm))
    grads = [p.grad.norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _evaluate(algorithm: Algorithm, wrapped: nn.Module) -> dict[str, float]:
    """The algorithm's eval metrics under ``eval/``, with the seconds it took (so learning
    curves can be drawn against training time alone)."""
    start = time.time()
    metrics = algorithm.evaluate(wrapped)
    if not metrics:
        return {}
    return {**{f"eval/{k}": v for k, v in metrics.items()},
            "time/eval_s": round(time.time() - start, 3)}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
