"""The parts of an online-RL round that are not the algorithm: the round's data, the advantage
estimator's contract, prompt loading, reward checks and the merge of sharded reward scores.

``online.OnlineRL`` runs the round; an ``AdvantageEstimator`` (``grpo.py``, ``rloo.py``,
``reinforce_pp.py``, ``ppo.py``) turns its rewards into advantages and says how the KL to the
reference enters; PPO adds a critic (``ppo.Critic``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from posttrain.data.formats import to_prompt_example, validate_rows
from posttrain.data.loading import load_rows
from posttrain.errors import DataError, RewardError
from posttrain.rewards.combine import RewardOutput
from posttrain.rollout.base import Rollout, encode_prompts

if TYPE_CHECKING:
    from posttrain.algorithms.online import OnlineRL
    from posttrain.algorithms.online_config import OnlineRLConfig


@dataclass
class RoundData:
    """A scored rollout: what every mini-batch of the round draws from."""

    rollout: Rollout
    rewards: torch.Tensor  # [N]
    keep: list[int]  # rows that are trained (zero-std groups, truncated ones may be dropped)
    metrics: dict[str, float]
    advantages: torch.Tensor | None = None  # [N] per completion, or [N, C] per token
    # per-token round tensors [N, C] (C = the round's longest completion; completions are
    # aligned from column 0), sliced into every micro-batch under the same key (pi_old and
    # pi_ref log-probs; PPO: old values, returns)
    token_data: dict[str, torch.Tensor] = field(default_factory=dict)
    scoring_s: float = 0.0  # forward passes spent by the estimator (logged as time/scoring_s)


class AdvantageEstimator:
    """How a round's rewards become advantages, and how the KL to pi_ref enters the objective.

    The default KL handling is GRPO's: ``beta * KL`` inside the loss (no reference model at all
    when beta = 0). PPO's estimator shapes the KL into per-token rewards instead."""

    name = ""

    def __init__(self, config: OnlineRLConfig):
        self.config = config

    def advantages(self, data: RoundData, rl: OnlineRL) -> torch.Tensor:
        """[N] (one advantage per completion, shared by its tokens) or [N, C] (per token).
        May put per-token tables into ``data.token_data`` and metrics into ``data.metrics``."""
        raise NotImplementedError

    def needs_reference(self) -> bool:
        """Whether pi_ref log-probs are needed (a reference model is loaded unless LoRA)."""
        return self.config.beta > 0

    def kl_loss_coef(self) -> float:
        """Weight of the KL(pi || pi_ref) term inside the loss (0 = no term)."""
        return self.config.beta

    def state_dict(self) -> dict[str, Any]:
        """State a checkpoint must carry (PPO: the adaptive KL coefficient)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` on resume."""


def load_prompts(config: OnlineRLConfig, tokenizer: Any, spec: str, split: str,
                 limit: int | None) -> list:
    """The prompts of ``spec`` as PromptExamples (``prompt_column`` renamed, ``system_prompt``
    put first), without those too long to leave room for a completion."""
    c = config
    rows = load_rows(spec, split, c.data_subset, c.columns, c.seed).take(limit)
    if c.prompt_column != "prompt":  # e.g. GSM8K's `question`
        rows.rows = [{**r, "prompt": r.get(c.prompt_column)} for r in rows.rows]
    examples = validate_rows(rows, to_prompt_example)
    if c.system_prompt:
        for example in examples:
            if example.prompt[0]["role"] != "system":
                example.prompt.insert(0, {"role": "system", "content": c.system_prompt})
    return _fitting(config, tokenizer, examples, rows.locations, spec)


def _fitting(config: OnlineRLConfig, tokenizer: Any, examples: list, locations: list[str],
             spec: str) -> list:
    """Prompts whose tokens leave room for max_new_tokens within max_length. Longer ones are
    dropped with one warning that counts them (a prompt longer than the model's positions
    would otherwise fail, or silently degrade, deep inside generation)."""
    room = config.max_length - config.max_new_tokens
    lengths = [len(ids) for ids in encode_prompts(tokenizer, [e.prompt for e in examples])]
    kept = [e for e, n in zip(examples, lengths) if n <= room]
    if len(kept) < len(examples):
        dropped = [where for where, n in zip(locations, lengths) if n > room]
        message = (f"{spec}: {len(dropped)} of {len(examples)} prompts are longer than "
                   f"max_length - max_new_tokens = {room} tokens (first: {dropped[0]}); ")
        if not kept:
            raise DataError(message + "none is left: raise max_length.")
        warnings.warn(message + "they are left out.", stacklevel=3)
    return kept


def columns_of(examples: list) -> dict[str, list]:
    """The examples' dataset columns (what reward functions receive), one list per column."""
    keys = sorted({k for e in examples for k in e.columns})
    return {k: [e.columns.get(k) for e in examples] for k in keys}


def check_rewards(rewards, examples: list, spec: str | None) -> None:
    """Every reward function, called once on the first row of ``spec`` with an empty completion,
    and every row given to functions that check rows themselves (``validate_rows``)."""
    if not examples:
        return
    first = examples[0]
    rewards.check(first.prompt, first.columns, f"the first row of {spec}", first.original)
    columns = columns_of(examples)
    for fn in rewards.functions:
        validate = getattr(fn, "validate_rows", None)  # an optional protocol of reward objects
        if callable(validate):
            validate(columns, [f"{spec}, prompt {i}" for i in range(len(examples))])


class MissingRewardWatch:
    """A round where no function gave any value trains on nothing: warn, and stop after
    ``limit`` such rounds in a row (a data column the rewards read is probably missing)."""

    def __init__(self, limit: int, names: list[str]):
        self.limit, self.names, self.in_a_row = limit, names, 0

    def __call__(self, scored: RewardOutput, round_index: int) -> None:
        if scored.totals and scored.all_none_rows < len(scored.totals):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        message = (f"round {round_index}: no reward function returned a value for any of the "
                   f"{len(scored.totals)} completions ({self.in_a_row} round(s) in a row); "
                   f"check that the data has the columns the rewards read (functions: "
                   f"{self.names})")
        if self.in_a_row >= self.limit:
            raise RewardError(message + f"; stopping after {self.limit} rounds "
                              "(max_rounds_without_reward).")
        warnings.warn(message, stacklevel=3)


def merge_scores(parts: list[RewardOutput], order: list[tuple[int, int]]) -> RewardOutput:
    """The processes' reward outputs in the merged rollout's row order (see merge_rollouts)."""
    names = list(parts[0].per_function)
    return RewardOutput(
        totals=[parts[k].totals[row] for k, row in order],
        per_function={name: [parts[k].per_function[name][row] for k, row in order]
                      for name in names},
        all_none_rows=sum(part.all_none_rows for part in parts),
        weights=parts[0].weights,
        errors={name: sum(part.errors.get(name, 0) for part in parts)
                for name in {n for part in parts for n in part.errors}},
    )


def padded_rows(rollout: Rollout, rows: list[int], pad_id: int) -> dict[str, Any]:
    """``rows`` of the rollout in the one-forward-pass layout (Rollout.to_padded_tensors)."""
    r = rollout
    sub = Rollout(
        prompt_ids=[r.prompt_ids[i] for i in rows],
        completion_ids=[r.completion_ids[i] for i in rows],
        completions=[r.completions[i] for i in rows],
        sampler_logprobs=[r.sampler_logprobs[i] for i in rows],
        finish_reasons=[r.finish_reasons[i] for i in rows],
        prompt_index=[r.prompt_index[i] for i in rows],
    )
    return dict(sub.to_padded_tensors(pad_id))
