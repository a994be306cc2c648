"""The base every algorithm builds on, and callbacks.

``Trainer`` is the shared loop's contract (``loop.Algorithm``) with its optional parts declared
and given defaults, so the loop never has to ask ``hasattr``: an algorithm overrides what it
has (an evaluation, resumable state of its own, console columns) and inherits the rest. A
trainer object is also what a notebook holds: build it (data and model load), look at
``trainer.model``, then ``trainer.train(callbacks=[...])``.

``Callback``: hooks the loop calls on process 0 after each logged step, after each evaluation
and at the end, with the metrics it logged (``metrics.jsonl``'s records). Subclass it and
override what you need, e.g. to plot while training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn


class Callback:
    """Override any of these; each gets the step and that record's metrics."""

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        """After a logged optimiser step (every ``logging_steps``)."""

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        """After an evaluation (``eval/`` keys)."""

    def on_train_end(self, step: int, metrics: dict[str, float]) -> None:
        """After the model is saved (and the final evaluation ran)."""


class Trainer:
    """What an algorithm supplies to the shared loop (``train/loop.py``); subclasses set
    ``config``, ``model`` and ``tokenizer`` and implement the four core methods."""

    config: Any
    model: nn.Module
    tokenizer: Any
    console_keys: tuple[str, ...] = ("loss",)  # shown on the progress line
    # examples one optimiser step consumes (micro x accumulation x processes), recorded in
    # checkpoints so a resume on another world size keeps the data position; None: not
    # batch-size dependent (online RL rounds)
    examples_per_step: int | None = None
    device: torch.device = torch.device("cpu")

    # --- the core: every algorithm implements these ------------------------------------------
    def total_steps(self) -> int:
        raise NotImplementedError

    def step_batches(self, start_step: int) -> Iterator[Any]:
        raise NotImplementedError

    def loss(self, wrapped: nn.Module, micro_batch: Any, step_batch: Any):
        raise NotImplementedError

    def save(self, output_dir: str, state_dicts=lambda module: None) -> None:
        raise NotImplementedError

    # --- optional, with defaults ---------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop calls and accelerate prepares."""
        from posttrain.train.forward import TokenLogprobs

        return TokenLogprobs(model)

    def attach(self, wrapped: nn.Module, accelerator: Any) -> None:
        """Called once the wrapped model is prepared (place frozen models here)."""
        self.wrapped, self.device = wrapped, accelerator.device

    def evaluate(self, wrapped: nn.Module) -> dict[str, float]:
        """Eval metrics (logged under ``eval/``); none by default."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Algorithm state that a checkpoint must carry (e.g. PPO's adaptive KL coefficient)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` on resume."""

    # --- running -------------------------------------------------------------------------
    def train(self, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
        """Train to the end (or resume); returns the last logged metrics plus the final
        evaluation's ``eval/`` metrics. The model is saved in ``config.output_dir``."""
        from posttrain.train.loop import train

        return train(self, callbacks=callbacks)
