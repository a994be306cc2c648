"""One entry point for every trainer, shared by the Python API and the CLI.

    posttrain.sft({"model": "smollm2-135m-instruct", "train_data": rows}, learning_rate=5e-5)
    posttrain.grpo("recipes/smollm2-135m/grpo_arithmetic.yaml", reward_functions=[my_reward],
                   callbacks=[MyPlot()], max_steps=10)
    trainer = posttrain.trainer("dpo", {...})     # data and model loaded; inspect, then
    metrics = trainer.train(callbacks=[...])

``config`` is a dict of keys, a YAML path, or a config object; ``overrides`` (keyword
arguments) win over it, and the result is always validated (the same checks as the command
line), so a typo or a bad value fails before any model loads. ``train_data`` / ``eval_data`` may
also be a list of row dicts or a ``datasets.Dataset``; ``model`` / ``tokenizer`` objects may be
passed instead of names.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from posttrain.config import TrainConfig, load_config

# name -> (module, config class, trainer class, one-line help)
TRAINERS = {
    "sft": ("posttrain.algorithms.sft", "SFTConfig", "SFT", "supervised fine-tuning"),
    "dpo": ("posttrain.algorithms.dpo", "DPOConfig", "DPO", "direct preference optimisation"),
    "reward": (
        "posttrain.algorithms.reward", "RewardConfig", "RewardModelTrainer",
        "train a reward model on preference pairs (Bradley-Terry)",
    ),
    "grpo": ("posttrain.algorithms.grpo", "GRPOConfig", "GRPO",
             "online RL with group-relative advantages (no value model)"),
    "rloo": ("posttrain.algorithms.rloo", "RLOOConfig", "RLOO",
             "online RL with leave-one-out baselines (REINFORCE Leave-One-Out)"),
    "reinforce_pp": ("posttrain.algorithms.reinforce_pp", "REINFORCEppConfig", "REINFORCEpp",
                     "online RL with a group baseline whitened over the round (REINFORCE++)"),
    "ppo": ("posttrain.algorithms.ppo", "PPOConfig", "PPO",
            "online RL with a learned critic (PPO: GAE, clipped policy and value losses)"),
}
ONLINE_RL = ("grpo", "rloo", "reinforce_pp", "ppo")  # the trainers that take reward functions


def classes(name: str) -> tuple[type, type]:
    """(config class, trainer class) of a trainer name."""
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r}; choose from {', '.join(TRAINERS)}")
    module_name, config_name, trainer_name, _ = TRAINERS[name]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, trainer_name)


def make_config(name: str, config: Any = None, **overrides: Any) -> TrainConfig:
    """A validated config of trainer ``name`` from a dict, a YAML path or a config object,
    with ``overrides`` applied last."""
    config_cls, _ = classes(name)
    if config is None:
        return load_config(config_cls, values=overrides)
    if isinstance(config, (str, Path)):
        return load_config(config_cls, path=config, values=overrides)
    if isinstance(config, TrainConfig):
        if not isinstance(config, config_cls):
            raise TypeError(f"{name} needs a {config_cls.__name__}, got {type(config).__name__}")
        given = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return load_config(config_cls, values={**given, **overrides})
    if isinstance(config, dict):
        return load_config(config_cls, values={**config, **overrides})
    raise TypeError(f"config must be a dict, a YAML path or a {config_cls.__name__}, got "
                    f"{type(config).__name__}")


def trainer(name: str, config: Any = None, *, model=None, tokenizer=None,
            reward_functions: Sequence | None = None, **overrides: Any):
    """The trainer object (data and model loaded, nothing trained yet)."""
    _, trainer_cls = classes(name)
    validated = make_config(name, config, **overrides)
    kwargs: dict[str, Any] = {"model": model, "tokenizer": tokenizer}
    if reward_functions is not None:
        if name not in ONLINE_RL:
            raise TypeError(f"{name} takes no reward_functions")
        kwargs["reward_functions"] = list(reward_functions)
    return trainer_cls(validated, **kwargs)


def run(name: str, config: Any = None, *, callbacks: Sequence = (), **kwargs: Any):
    """Build trainer ``name`` and train it; returns the last logged metrics (the keys of
    ``metrics.jsonl``: ``loss``, algorithm metrics, ``learning_rate``, ``grad_norm``, times)
    merged with the final evaluation's ``eval/`` metrics. The model is saved in
    ``output_dir``."""
    return trainer(name, config, **kwargs).train(callbacks=callbacks)
