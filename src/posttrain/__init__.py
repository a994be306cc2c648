"""posttrain: post-train causal language models (SFT, rejection sampling, DPO, reward models,
GRPO, RLOO, REINFORCE++, PPO) from one CLI, YAML recipes, and this Python API.

    import posttrain
    posttrain.sft({"model": "smollm2-135m-instruct", "train_data": "data.jsonl"})

Each entry point takes a config (dict, YAML path or config object) and keyword overrides,
validates them, trains, saves to ``output_dir`` and returns the last logged metrics with the
final evaluation's (``api.run``). ``posttrain.trainer(name, ...)`` gives the trainer object
without training it; ``posttrain.Callback`` hooks into steps and evaluations; ``posttrain.evaluate`` scores a model,
``posttrain.run_pipeline(file)`` runs stages (SFT -> DPO -> RL) with evaluations between. Config and trainer
classes are importable from here (``posttrain.SFTConfig``, ``posttrain.GRPO``, ...).
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "SFTConfig": "posttrain.algorithms.sft", "SFT": "posttrain.algorithms.sft",
    "DPOConfig": "posttrain.algorithms.dpo", "DPO": "posttrain.algorithms.dpo",
    "RewardConfig": "posttrain.algorithms.reward",
    "RewardModelTrainer": "posttrain.algorithms.reward",
    "GRPOConfig": "posttrain.algorithms.grpo", "GRPO": "posttrain.algorithms.grpo",
    "RLOOConfig": "posttrain.algorithms.rloo", "RLOO": "posttrain.algorithms.rloo",
    "REINFORCEppConfig": "posttrain.algorithms.reinforce_pp",
    "REINFORCEpp": "posttrain.algorithms.reinforce_pp",
    "PPOConfig": "posttrain.algorithms.ppo", "PPO": "posttrain.algorithms.ppo",
    "Callback": "posttrain.train.trainer", "Trainer": "posttrain.train.trainer",
    "trainer": "posttrain.api", "make_config": "posttrain.api",
    "run_pipeline": "posttrain.pipeline", "evaluate": "posttrain.evaluation",
}
__all__ = ["sft", "dpo", "reward", "grpo", "rloo", "reinforce_pp", "ppo", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:  # imported on first use: `import posttrain` stays light
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'posttrain' has no attribute {name!r}")


def sft(config=None, *, callbacks=(), model=None, tokenizer=None, **overrides):
    """Supervised fine-tuning (``SFTConfig`` keys)."""
    from posttrain.api import run

    return run("sft", config, callbacks=callbacks, model=model, tokenizer=tokenizer, **overrides)


def dpo(config=None, *, callbacks=(), model=None, tokenizer=None, **overrides):
    """Direct preference optimisation (``DPOConfig`` keys)."""
    from posttrain.api import run

    return run("dpo", config, callbacks=callbacks, model=model, tokenizer=tokenizer, **overrides)


def reward(config=None, *, callbacks=(), model=None, tokenizer=None, **overrides):
    """Reward-model training on preference pairs (``RewardConfig`` keys)."""
    from posttrain.api import run

    return run("reward", config, callbacks=callbacks, model=model, tokenizer=tokenizer,
               **overrides)


def grpo(config=None, *, reward_functions=None, callbacks=(), model=None, tokenizer=None,
         **overrides):
    """GRPO (``GRPOConfig`` keys); ``reward_functions`` (callables) replace the config's
    ``rewards``."""
    from posttrain.api import run

    return run("grpo", config, callbacks=callbacks, model=model, tokenizer=tokenizer,
               reward_functions=reward_functions, **overrides)


def rloo(config=None, *, reward_functions=None, callbacks=(), model=None, tokenizer=None,
         **overrides):
    """RLOO (``RLOOConfig`` keys): leave-one-out baselines."""
    from posttrain.api import run

    return run("rloo", config, callbacks=callbacks, model=model, tokenizer=tokenizer,
               reward_functions=reward_functions, **overrides)


def reinforce_pp(config=None, *, reward_functions=None, callbacks=(), model=None, tokenizer=None,
                 **overrides):
    """REINFORCE++ with a group baseline (``REINFORCEppConfig`` keys)."""
    from posttrain.api import run

    return run("reinforce_pp", config, callbacks=callbacks, model=model, tokenizer=tokenizer,
               reward_functions=reward_functions, **overrides)


def ppo(config=None, *, reward_functions=None, callbacks=(), model=None, tokenizer=None,
        **overrides):
    """PPO with a learned critic (``PPOConfig`` keys)."""
    from posttrain.api import run

    return run("ppo", config, callbacks=callbacks, model=model, tokenizer=tokenizer,
               reward_functions=reward_functions, **overrides)
