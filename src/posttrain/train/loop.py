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
micro-batches. Under DDP / FSDP, gradients are averaged across processes, so each share is
multiplied by the number of processes. Every process runs the same number of passes (padding
passes count zero) and metrics are sums reduced across processes: ``distributed.py`` has the
whole data-parallel contract, ``metrics.py`` the statistics, ``sharding.py`` FSDP / DeepSpeed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posttrain.config import to_dict
from posttrain.errors import ConfigError, PosttrainError
from posttrain.train.allocator import keep_freed_memory
from posttrain.train.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from posttrain.train.distributed import my_share
from posttrain.train.guards import StopRequests, TrainingStopped, weights_finite
from posttrain.train.hub_push import hub_login_check, push_folder
from posttrain.train.logging import MetricsLogger, console
from posttrain.train.metrics import StepMetrics
from posttrain.train.optim import build_optimizer, build_scheduler
from posttrain.train.resume import (
    check_config,
    check_same_algorithm,
    check_same_batch,
    resume_point,
    truncate_metrics,
)
from posttrain.train.sharding import deepspeed_backward, is_deepspeed, make_accelerator
from posttrain.train.trainer import Callback, Trainer

MAX_NONFINITE_STEPS = 5


class TrainingError(PosttrainError):
    """Training cannot go on (non-finite losses or weights); the message says what to change."""


@dataclass
class StepBatch:
    """Everything for one optimiser step: its micro-batches (for all processes), totals used as
    loss normalisers, and metrics gathered while preparing it (e.g. rollout statistics).

    After the step, the loop puts the step's logged metrics (reduced over all processes) in
    ``outcome``, so the algorithm that yielded the batch can react before it builds the next one
    (PPO's KL early stop reads ``approx_kl`` there)."""

    micro_batches: list[Any]
    totals: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    outcome: dict[str, float] = field(default_factory=dict)


def train(algorithm: Trainer, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Run ``algorithm`` to completion (or resume it); returns the last logged metrics and the
    final evaluation's. ``callbacks`` (``trainer.Callback``) hear of every logged step and
    evaluation, on process 0."""
    config = algorithm.config
    keep_freed_memory()  # no page faults for memory every step frees and allocates again
    accelerator = make_accelerator(config.mixed_precision)
    torch.manual_seed(config.seed)

    total_steps = algorithm.total_steps()
    existing = latest_checkpoint(config.output_dir)
    if existing is not None and not config.resume:
        raise ConfigError(
            f"{config.output_dir} already has checkpoints ({existing.name}): resume with "
            "--resume (resume=true), or choose another output_dir."
        )
    wrapped = algorithm.wrap(algorithm.model)  # e.g. TokenLogprobs(model)
    optimizer = build_optimizer(algorithm.model, config)
    scheduler = build_scheduler(optimizer, config, total_steps)
    wrapped, optimizer, scheduler = accelerator.prepare(wrapped, optimizer, scheduler)
    algorithm.attach(wrapped, accelerator)

    if accelerator.is_main_process:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        if config.push_to_hub:
            hub_login_check()  # before any training, not after hours of it
    accelerator.wait_for_everyone()
    say = console.print if accelerator.is_main_process else (lambda *a, **k: None)
    start_step, found, manifest = 0, None, {}
    if config.resume:
        found, manifest = resume_point(config.output_dir, say)
    if found is not None:
        check_config(manifest.get("config", {}), to_dict(config), config.allow_config_change,
                     say, found)
        state = load_checkpoint(found, accelerator, wrapped, optimizer, scheduler)
        check_same_batch(state, algorithm.examples_per_step, found)
        check_same_algorithm(state, type(algorithm).__name__, found)
        start_step = state["step"]
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
        console_keys=algorithm.console_keys,
    )
    hear = callbacks if accelerator.is_main_process else ()
    if start_step:
        logger.message(f"resumed from {found} at step {start_step}/{total_steps}")
    if accelerator.num_processes > 1:
        logger.message(f"{accelerator.num_processes} processes ({accelerator.distributed_type})")
    logger.advance_to(start_step)

    world, rank = accelerator.num_processes, accelerator.process_index
    engine_steps = is_deepspeed(accelerator)  # DeepSpeed's engine clips and steps itself
    last_metrics: dict[str, float] = {}
    nonfinite_in_a_row = 0
    step = saved_step = start_step
    step_end_rng = None
    checkpoint = functools.partial(_checkpoint, accelerator, algorithm, wrapped, optimizer,
                                   scheduler)
    if config.eval_on_start and start_step == 0:
        _log_evaluation(logger, hear, 0, _evaluate(algorithm, wrapped))
    algorithm.model.train()
    batches = algorithm.step_batches(start_step)
    try:
        with StopRequests() as stops:
            while step < total_steps:
                t_prepare = time.time()
                step_batch = next(batches, None)
                if step_batch is None:
                    break
                prepare_s = time.time() - t_prepare
                t_train = time.time()
                mine = my_share(step_batch.micro_batches, rank, world)  # even: padding counts 0
                sums = StepMetrics()
                for i, slot in enumerate(mine):
                    sync = i == len(mine) - 1
                    context = accelerator.no_sync(wrapped) if not sync and world > 1 else _null()
                    with context:
                        loss_share, metrics = algorithm.loss(wrapped, slot.item, step_batch)
                        weight = world if slot.real else 0.0
                        if engine_steps:
                            deepspeed_backward(wrapped, loss_share * weight, last=sync)
                        else:
                            accelerator.backward(loss_share * weight)
                    sums.add(metrics, real=slot.real, loss_share=loss_share.item())
                step_metrics = {"loss": 0.0, **sums.reduce()}  # summed over all processes
                if engine_steps:
                    grad_norm = float(wrapped.get_global_grad_norm() or 0.0)
                else:
                    grad_norm = _clip(accelerator, algorithm.model, config.max_grad_norm)
                if math.isfinite(step_metrics["loss"]) and math.isfinite(grad_norm):
                    if not engine_steps:
                        optimizer.step()
                    nonfinite_in_a_row = 0
                else:
                    nonfinite_in_a_row += 1
                    logger.message(f"step {step + 1}: non-finite loss/grad "
                                   f"({step_metrics['loss']}); skipped")
                    if nonfinite_in_a_row >= MAX_NONFINITE_STEPS:
                        raise TrainingError(
                            f"{MAX_NONFINITE_STEPS} optimiser steps in a row had a non-finite "
                            "loss or gradient: lower learning_rate, check the data and the "
                            "rewards, or use float32."
                        )
                if not weights_finite(algorithm.model):
                    raise TrainingError(
                        f"step {step + 1} made some weights non-finite (learning_rate "
                        f"{scheduler.get_last_lr()[0]:g}); they are not saved. Resume from the "
                        "last checkpoint with a lower learning_rate."
                    )
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                step_end_rng = rng_state()  # for a checkpoint written after a crash mid-step

                step_batch.outcome = {
                    **step_metrics,
                    **step_batch.metrics,
                    "grad_norm": grad_norm,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "time/prepare_s": round(prepare_s, 3),
                    "time/train_s": round(time.time() - t_train, 3),
                }
                if step % config.logging_steps == 0 or step == total_steps:
                    last_metrics = step_batch.outcome
                    logger.log(step, last_metrics)
                    for callback in hear:
                        callback.on_step_end(step, last_metrics)
                else:
                    logger.advance_to(step)
                if config.eval_steps and step % config.eval_steps == 0 and step < total_steps:
                    _log_evaluation(logger, hear, step, _evaluate(algorithm, wrapped))
                if config.save_steps and step % config.save_steps == 0 and step < total_steps:
                    checkpoint(step)
                    saved_step = step
                signum = stops.requested()
                if signum and step < total_steps:
                    checkpoint(step)
                    raise TrainingStopped(
                        f"stopped by {signal.Signals(signum).name} after step {step}/"
                        f"{total_steps}; checkpoint saved in "
                        f"{checkpoint_dir(config.output_dir, step)}", signum)
        if config.save_final_checkpoint:
            checkpoint(step)
            saved_step = step
        _save(accelerator, algorithm, wrapped)
        if config.push_to_hub and accelerator.is_main_process:
            url = push_folder(config.output_dir, config.hub_model_id, config.hub_private)
            logger.message(f"pushed {config.output_dir} to {url}")
        # after the save: a failing final evaluation cannot lose the trained weights
        final_eval = _final_evaluation(algorithm, wrapped, config.output_dir)
        if final_eval:
            _log_evaluation(logger, hear, step, final_eval)
            last_metrics.update(final_eval)
        for callback in hear:
            callback.on_train_end(step, last_metrics)
    except (TrainingStopped, CheckpointError, KeyboardInterrupt):
        raise
    except BaseException:
        if world == 1 and step > saved_step:  # keep what was trained (one process: no collective)
            with contextlib.suppress(Exception):
                checkpoint(step, rng=step_end_rng)
                logger.message(f"saved a checkpoint of step {step} before stopping; resume "
                               "with --resume once the cause is fixed")
        raise
    finally:
        logger.close()
    return last_metrics


def _log_evaluation(logger, callbacks, step: int, metrics: dict[str, float]) -> None:
    if metrics:
        logger.log(step, metrics)
        for callback in callbacks:
            callback.on_evaluate(step, metrics)


def _final_evaluation(algorithm: Trainer, wrapped: nn.Module, output_dir: str) -> dict:
    try:
        return _evaluate(algorithm, wrapped)
    except Exception as err:
        console.print(f"the final evaluation failed ({type(err).__name__}: {err}); the "
                      f"trained model is saved in {output_dir}")
        raise


def _checkpoint(accelerator, algorithm, wrapped, optimizer, scheduler, step: int,
                rng: dict | None = None) -> None:
    """A collective call: sharded weights and optimiser states are gathered from every process,
    then process 0 writes them in a layout that resumes on any number of processes."""
    state = {"step": step, "world_size": accelerator.num_processes,
             "examples_per_step": algorithm.examples_per_step,
             "trainer": type(algorithm).__name__, "algorithm": algorithm.state_dict()}
    save_checkpoint(
        checkpoint_dir(algorithm.config.output_dir, step),
        accelerator,
        wrapped,
        optimizer,
        scheduler,
        state,
        keep=algorithm.config.save_total_limit,
        config=to_dict(algorithm.config),
        rng=rng,
    )


def _save(accelerator, algorithm, wrapped) -> None:
    """Gather full weights (a collective call under sharding) and let process 0 write the
    plain Hugging Face folder."""
    from posttrain.train.sharding import StateDicts

    state_dicts = StateDicts(accelerator, wrapped)
    if accelerator.is_main_process:
        algorithm.save(algorithm.config.output_dir, state_dicts)
    accelerator.wait_for_everyone()


def _clip(accelerator, model: nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    if max_norm > 0:
        return float(accelerator.clip_grad_norm_(params, max_norm))
    return float(accelerator.clip_grad_norm_(params, float("inf")))


def _evaluate(algorithm: Trainer, wrapped: nn.Module) -> dict[str, float]:
    """The algorithm's eval metrics under ``eval/``, with the seconds it took (so learning
    curves can be drawn against training time alone). Every process takes part."""
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
