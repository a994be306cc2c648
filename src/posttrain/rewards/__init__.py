"""Reward functions for online RL (GRPO, PPO) and rejection sampling.

A reward function is a plain callable
``f(prompts, completions, completion_ids, **columns) -> list[float | None]``: one value per
completion, ``None`` where the reward does not apply, and every extra dataset column (``answer``,
``tests``, ...) arrives as a keyword list of the same length, so functions must accept
``**kwargs``. ``RewardSet`` combines several with weights and checks what they return.

Importing this package is cheap (no torch); ``RewardModelScorer`` loads torch when built.
"""

from posttrain.rewards.code_reward import CodeReward, code_reward, extract_code, make_code_reward
from posttrain.rewards.combine import RewardOutput, RewardSet, reward_name
from posttrain.rewards.format_reward import boxed_format, make_format_reward, think_answer_format
from posttrain.rewards.loading import BUILTIN_REWARDS, load_reward, load_reward_set
from posttrain.rewards.math_reward import answers_match, extract_final_answer, math_reward
from posttrain.rewards.sandbox import SandboxResult, SandboxUnavailable, run_python_sandboxed


def __getattr__(name: str):
    if name == "RewardModelScorer":  # lazy: pulls in torch + transformers
        from posttrain.rewards.reward_model import RewardModelScorer

        return RewardModelScorer
    raise AttributeError(f"module 'posttrain.rewards' has no attribute {name!r}")


__all__ = [
    "BUILTIN_REWARDS",
    "CodeReward",
    "RewardModelScorer",
    "RewardOutput",
    "RewardSet",
    "SandboxResult",
    "SandboxUnavailable",
    "answers_match",
    "boxed_format",
    "code_reward",
    "extract_code",
    "extract_final_answer",
    "load_reward",
    "load_reward_set",
    "make_code_reward",
    "make_format_reward",
    "math_reward",
    "reward_name",
    "run_python_sandboxed",
    "think_answer_format",
]
