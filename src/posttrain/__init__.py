"""posttrain: post-train causal language models (SFT, rejection sampling, DPO, reward models,
PPO, GRPO) from one CLI, YAML recipes, and this Python API.

    import posttrain
    posttrain.sft({"model": "smollm2-135m-instruct", "train_data": "data.jsonl"})
"""

from __future__ import annotations

__version__ = "0.1.0"


def sft(config, **overrides):
    """Supervised fine-tuning; ``config`` is an ``SFTConfig`` or a dict of its keys."""
    from posttrain.algorithms.sft import sft as run

    return run(config, **overrides)


def dpo(config, **overrides):
    """Direct preference optimisation; ``config`` is a ``DPOConfig`` or a dict of its keys."""
    from posttrain.algorithms.dpo import dpo as run

    return run(config, **overrides)


def reward(config, **overrides):
    """Reward-model training; ``config`` is a ``RewardConfig`` or a dict of its keys."""
    from posttrain.algorithms.reward import reward as run

    return run(config, **overrides)


def grpo(config, reward_functions=None, **overrides):
    """GRPO (or RLOO / REINFORCE++ via ``advantage_estimator``); ``config`` is a
    ``GRPOConfig`` or a dict of its keys; ``reward_functions`` may be callables."""
    from posttrain.algorithms.grpo import grpo as run

    return run(config, reward_functions=reward_functions, **overrides)


def ppo(config, reward_functions=None, **overrides):
    """PPO with a learned critic (GAE, KL-shaped rewards); ``config`` is a ``PPOConfig`` or a
    dict of its keys; ``reward_functions`` may be callables."""
    from posttrain.algorithms.ppo import ppo as run

    return run(config, reward_functions=reward_functions, **overrides)
