"""Configuration of online RL (GRPO, RLOO, REINFORCE++, PPO): batch semantics and defaults.

Batch semantics, checked before any model loads:

* one *round* samples ``prompts_per_step`` prompts x ``num_generations`` completions
  (N completions; GRPO's group size G = num_generations);
* the round's completions are trained ``num_iterations`` times (mu in the GRPO paper), each pass
  split into ``mini_batches`` optimiser steps: steps per round = num_iterations x mini_batches;
* ``per_device_batch_size`` is the number of completions per forward/backward pass (the
  micro-batch). Gradient accumulation follows from the above (micro-batches per mini-batch),
  so ``gradient_accumulation_steps`` must stay 1 here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from posttrain.config import TrainConfig, option
from posttrain.errors import ConfigError


@dataclass
class OnlineRLConfig(TrainConfig):
    # Completions per prompt that the estimator needs (group baselines: 2; PPO's critic: 1).
    # A plain class attribute (no annotation), not a config key.
    min_generations = 2

    learning_rate: float = option(1e-6, "Peak AdamW learning rate (GRPO papers: 1e-6 to 3e-6).")
    lr_scheduler: Literal["constant", "linear", "cosine"] = option(
        "constant", "Learning-rate decay after warm-up (RL usually keeps it constant)."
    )
    gradient_accumulation_steps: int = option(
        1, "Must stay 1 in online RL: accumulation follows from the round (a mini-batch is "
        "split into micro-batches of per_device_batch_size, all in one optimiser step)."
    )
    # --- data and rewards ------------------------------------------------------------
    rewards: list[Any] = option(
        ["math"],
        "Reward functions: built-in names (math, format, think_format, boxed_format, code, "
        "reward_model), 'module:function' or 'file.py:function', or mappings "
        "{name: ..., weight: ..., <options>}.",
    )
    reward_weights: list[float] | None = option(None, "One weight per reward (default 1 each).")
    reward_timeout_s: float | None = option(
        300.0, "A reward call that runs longer is a fault (see reward_on_error); null = no limit."
    )
    reward_on_error: Literal["raise", "zero", "skip"] = option(
        "raise",
        "What a reward fault (exception, sys.exit, timeout, a bad value) does: raise = stop "
        "with the function and rows named; zero = 0.0 for that function on the batch; skip = "
        "None (not applicable). Faults are counted as rewards/<name>/errors.",
    )
    reward_call_style: Literal["auto", "posttrain", "trl"] = option(
        "auto",
        "How your reward functions are called: posttrain = f(prompts, completions, "
        "completion_ids, **columns); trl = keyword arguments, completions as messages for "
        "conversational prompts; auto = trl for functions that take no three positional "
        "arguments (f(completions, **kwargs)). Built-in rewards are unaffected. docs/rewards.md.",
    )
    max_rounds_without_reward: int = option(
        3, "Stop when this many rounds in a row got no value from any reward function."
    )
    prompt_column: str = option(
        "prompt", "Column holding the prompt (e.g. `question` for GSM8K); text or messages."
    )
    system_prompt: str | None = option(
        None, "A system message put before every prompt (e.g. 'answer in \\boxed{}')."
    )
    eval_max_samples: int | None = option(None, "Use only the first N eval prompts.")
    eval_batch_size: int = option(32, "Prompts per greedy generation call during evaluation.")
    # --- sampling ----------------------------------------------------------------------
    prompts_per_step: int = option(4, "Prompts sampled per round.")
    num_generations: int = option(
        8, "Completions per prompt (G). Groups need >= 2 to have a baseline."
    )
    max_new_tokens: int = option(256, "Completion length cap; longer ones end as 'truncated'.")
    temperature: float = option(
        1.0, "Sampling temperature; 1.0 keeps the sampler equal to the policy (ratio = 1)."
    )
    top_p: float = option(1.0, "Nucleus sampling (1.0 = off).")
    top_k: int = option(0, "Top-k sampling (0 = off).")
    generation_batch_rows: int | None = option(
        None, "At most this many completions decode together (bounds memory); None = all."
    )
    rollout_backend: Literal["hf", "paged", "vllm"] = option(
        "hf",
        "Generation engine: hf = posttrain's decode loop (exact sampler log-probs, per-prompt "
        "seeds; best on CPU); paged = transformers' continuous batching (generate_batch, paged "
        "attention, CUDA graphs on GPU); vllm = a colocated vLLM engine (experimental, "
        "pip install 'posttrain[vllm]'). See docs/distributed.md.",
    )
    importance_sampling_correction: bool = option(
        True,
        "When the sampler's log-probs are not the trainer's (paged, vllm, or mixed_precision "
        "training), weight each token's policy loss by min(pi_old / pi_sampler, cap) "
        "(truncated importance sampling). The mismatch is logged either way.",
    )
    importance_sampling_cap: float = option(
        3.0, "The cap C of truncated importance sampling (>= 1)."
    )
    vllm_gpu_memory_utilization: float = option(
        0.3, "vllm: fraction of GPU memory the colocated engine may take (weights + KV cache)."
    )
    vllm_max_model_len: int | None = option(
        None, "vllm: longest prompt + completion the engine plans for (None = the model's)."
    )
    vllm_sleep: bool = option(
        True, "vllm: release the engine's memory between rollouts (sleep level 2, wake per round)."
    )
    # --- the objective -----------------------------------------------------------------
    scale_rewards: Literal["group", "batch", "none"] = option(
        "group",
        "GRPO's advantage scale: divide by the group std (paper), the batch std, or not at "
        "all (Dr. GRPO: avoids favouring groups whose rewards barely differ). Read by GRPO only.",
    )
    beta: float = option(
        0.0,
        "KL(pi || pi_ref) coefficient. 0 (current practice, DAPO/Dr. GRPO) loads no reference "
        "model at all; under LoRA the reference is the base model (adapter disabled).",
    )
    kl_estimator: Literal["k1", "k2", "k3"] = option(
        "k3", "KL estimator (Schulman 2020); GRPO uses k3 (unbiased, >= 0)."
    )
    epsilon: float = option(0.2, "Clip range: ratio clipped to [1 - epsilon, 1 + epsilon_high].")
    epsilon_high: float | None = option(
        None, "Upper clip (DAPO clip-higher, e.g. 0.28); None = epsilon."
    )
    num_iterations: int = option(
        1, "Passes over each round's completions (mu). 1 = strictly on-policy: ratio = 1."
    )
    mini_batches: int = option(1, "Optimiser steps per pass over a round's completions.")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = option(
        "dapo",
        "How per-token losses become one number: grpo = mean of per-sequence means (long "
        "answers' tokens weigh less); dapo = mean over all tokens of the step; dr_grpo = sum / "
        "(sequences x max_new_tokens); bnpo = per-micro-batch token mean (depends on the split).",
    )
    mask_truncated_completions: bool = option(
        False, "Leave completions that hit max_new_tokens out of the loss (DAPO)."
    )
    skip_zero_std_groups: bool = option(
        False,
        "Leave groups whose rewards are all equal out of the training pass. With beta = 0 their "
        "advantages are 0 and they carry no gradient, but they still cost a forward and "
        "backward. Note: the loss normaliser (tokens or sequences) then counts only the kept "
        "completions, so each kept token weighs a little more than without skipping.",
    )
    kl_stop: float | None = option(
        None,
        "Early stop: when a step's approx KL(pi_old || pi) exceeds this, the round's remaining "
        "optimiser steps do nothing (the step count stays fixed). None = off; e.g. 0.02.",
    )
    log_entropy: bool = option(
        True, "Log the policy's mean token entropy (one extra output-layer pass, no grad)."
    )

    def validate(self) -> None:
        super().validate()
        if self.reward_timeout_s is not None and not self.reward_timeout_s > 0:
            raise ConfigError(f"reward_timeout_s must be > 0 (or null), got {self.reward_timeout_s}.")
        for name in ("prompts_per_step", "num_iterations", "max_new_tokens", "eval_batch_size",
                     "max_rounds_without_reward"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.generation_batch_rows is not None and self.generation_batch_rows < 1:
            raise ConfigError("generation_batch_rows must be >= 1 (or null for all), got "
                              f"{self.generation_batch_rows}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}.")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}.")
        if not self.beta >= 0:
            raise ConfigError(f"beta (the KL weight) must be >= 0, got {self.beta}.")
        if not 0.0 < self.epsilon < 1.0:
            raise ConfigError(f"epsilon (the clip range) must be in (0, 1), e.g. 0.2; got "
                              f"{self.epsilon}.")
        if self.max_new_tokens >= self.max_length:
            raise ConfigError(
                f"max_new_tokens={self.max_new_tokens} leaves no room for the prompt in "
                f"max_length={self.max_length} (prompt + completion tokens); raise max_length.")
        if self.num_generations < self.min_generations:
            raise ConfigError(
                f"num_generations={self.num_generations}: group baselines need at least 2 "
                "completions per prompt."
                if self.min_generations >= 2 else
                f"num_generations={self.num_generations}: must be >= {self.min_generations}."
            )
        if self.gradient_accumulation_steps != 1:
            raise ConfigError(
                "gradient_accumulation_steps is derived in online RL: one optimiser step "
                "covers (prompts_per_step x num_generations / mini_batches) completions in "
                "micro-batches of per_device_batch_size. Leave it at 1."
            )
        completions = self.prompts_per_step * self.num_generations
        if self.mini_batches < 1 or completions % self.mini_batches:
            raise ConfigError(
                f"mini_batches={self.mini_batches} must divide the round's "
                f"{completions} completions (prompts_per_step x num_generations)."
            )
        steps_per_round = self.num_iterations * self.mini_batches
        if self.save_steps and self.save_steps % steps_per_round:
            raise ConfigError(
                f"save_steps={self.save_steps} must be a multiple of the {steps_per_round} "
                "optimiser steps per round (num_iterations x mini_batches): a checkpoint in "
                "the middle of a round could not resume it."
            )
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0 for RL sampling (0 would be greedy).")
        if self.importance_sampling_cap < 1.0:
            raise ConfigError(
                f"importance_sampling_cap={self.importance_sampling_cap}: the cap of "
                "min(pi_old / pi_sampler, cap) must be >= 1 (3 is a common value)."
            )
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise ConfigError("vllm_gpu_memory_utilization must be in (0, 1], got "
                              f"{self.vllm_gpu_memory_utilization}.")
        if self.kl_stop is not None and self.kl_stop <= 0:
            raise ConfigError(f"kl_stop must be > 0 (e.g. 0.02) or null, got {self.kl_stop}.")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ConfigError("epsilon_high must be >= epsilon (it widens the upper clip).")
