"""Online policy-gradient RL: the part GRPO, RLOO, REINFORCE++ and PPO share.

One *round* (the algorithm box of Shao et al. 2024, and of PPO without the critic):

    prompts      <- next prompts_per_step prompts
    rollout      <- policy samples num_generations completions per prompt      (generation)
    rewards      <- reward functions(prompts, completions, columns)            (reward)
    advantages   <- estimator(rewards)       # grpo | rloo | reinforce_pp | gae (PPO)
    old, ref     <- log-probs of the sampled tokens under pi_old and pi_ref     (scoring)
    repeat num_iterations times, over mini_batches mini-batches:               (training)
        loss = aggregate( clipped_surrogate(logp, old, A) + beta * KL(pi || pi_ref) )
        one optimiser step per mini-batch

The estimators differ only in ``estimate_advantages``; PPO (algorithms/ppo.py) overrides it and
adds a critic loss. Everything else, including batching, logging and the time split, is here.

With several processes, a round's prompts are dealt out (prompt i to process i mod N, so a group
never straddles two processes); each process samples and scores its own prompts with per-prompt
seeds, and the scored rollouts are gathered, so every process holds the whole round, computes the
same advantages (group statistics, whitening, logged means) and trains its share of the
micro-batches. The scoring forward passes (pi_old, pi_ref, values) are split the same way and
their [N, C] tables summed. One process and N processes therefore take the same steps.

Hooks a subclass may override (PPO uses all of them; the defaults are GRPO/RLOO/REINFORCE++):
``estimate_advantages(data)`` (may also fill ``data.token_data``, per-token [N, C] tensors that
reach every micro-batch, e.g. old log-probs and values), ``needs_reference()``,
``kl_loss_coef()`` (the KL weight inside the loss), ``training_forward`` (the one forward pass
of the loss; it may return extra outputs such as values) and ``extra_loss`` (e.g. a value loss).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from posttrain.algorithms.online_config import OnlineRLConfig
from posttrain.data.formats import to_prompt_example, validate_rows
from posttrain.data.loading import load_rows
from posttrain.errors import DataError, RewardError
from posttrain.models import is_peft, load_causal_lm, load_policy, load_tokenizer, save_model
from posttrain.ops.advantages import (
    group_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    zero_std_groups,
)
from posttrain.ops.policy import (
    aggregate_token_loss,
    clipped_surrogate,
    kl_estimate,
    truncated_importance_weights,
)
from posttrain.rewards.combine import RewardOutput
from posttrain.rewards.loading import load_reward_set
from posttrain.rollout.backends import make_generator
from posttrain.rollout.base import Rollout, SamplingParams, encode_prompts, merge_rollouts
from posttrain.train.batching import split_micro, step_indices
from posttrain.train.distributed import (
    all_gather_objects,
    all_reduce_max,
    all_reduce_sum,
    my_share,
    ranks,
)
from posttrain.train.forward import TokenLogprobs
from posttrain.train.loop import StepBatch
from posttrain.train.metrics import stat
from posttrain.train.sharding import gathered_for_generation
from posttrain.train.trainer import Trainer


@dataclass
class RoundData:
    """A scored rollout: what every mini-batch of the round draws from."""

    rollout: Rollout
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor | None  # [N] sequence-level, or [N, C] per token; None until set
    keep: list[int]  # rows that are trained (zero-std groups may be dropped)
    metrics: dict[str, float]
    # per-token round tensors [N, C] (C = the round's longest completion; completions are
    # aligned from column 0), sliced into every micro-batch under the same key (PPO: old
    # log-probs, values, returns)
    token_data: dict[str, torch.Tensor] = field(default_factory=dict)
    scoring_s: float = 0.0  # forward passes spent by estimate_advantages (logged as scoring)


class OnlineRL(Trainer):
    """Shared machinery; subclasses set ``config`` defaults and may override
    ``estimate_advantages`` / ``extra_loss`` (PPO's critic)."""

    console_keys = ("rewards/total/mean", "eval/rewards/total/mean", "kl", "completion_length")

    def __init__(self, config: OnlineRLConfig, model=None, tokenizer=None, reward_functions=None):
        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(config.tokenizer or config.model,
                                                     config.trust_remote_code)
        self.rewards = load_reward_set(reward_functions or config.rewards, config.reward_weights,
                                       config.reward_timeout_s, config.reward_on_error,
                                       config.reward_call_style)
        self.prompts = self._load_prompts(config.train_data, config.train_split, config.max_samples)
        self.eval_prompts = (
            self._load_prompts(config.eval_data, config.eval_split, config.eval_max_samples)
            if config.eval_data else []
        )
        for examples, spec in ((self.prompts, config.train_data),
                               (self.eval_prompts, config.eval_data)):
            check_rewards(self.rewards, examples, spec)  # before any model loads
        self.rounds_without_reward = 0
        self.model = model if model is not None else load_policy(config, self.tokenizer)
        self.policy = self.model  # what samples; PPO's ``model`` also holds a critic
        self.reference = None
        if self.needs_reference() and not (config.use_lora and is_peft(self.model)):
            reference = load_causal_lm(config.model, config.dtype, config.attn_implementation,
                                       config.trust_remote_code)
            self.reference = TokenLogprobs(reference.eval().requires_grad_(False))
        self.generator = make_generator(config, self.policy, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id

    @property
    def sampler_is_exact(self) -> bool:
        """The sampler's log-probs are the trainer's own forward (hf backend, no autocast):
        they may stand in for pi_old, and no importance-sampling correction is needed."""
        exact = getattr(self.generator, "exact_sampler", False)
        return exact and self.config.mixed_precision == "no"

    def needs_reference(self) -> bool:
        """Whether pi_ref log-probs are needed (a reference model is loaded unless LoRA)."""
        return self.config.beta > 0

    def kl_loss_coef(self) -> float:
        """Weight of the KL(pi || pi_ref) term inside the loss (0 = no term)."""
        return self.config.beta

    def _load_prompts(self, spec: str, split: str, limit: int | None) -> list:
        c = self.config
        rows = load_rows(spec, split, c.data_subset, c.columns, c.seed).take(limit)
        if c.prompt_column != "prompt":  # e.g. GSM8K's `question`
            rows.rows = [{**r, "prompt": r.get(c.prompt_column)} for r in rows.rows]
        examples = validate_rows(rows, to_prompt_example)
        if c.system_prompt:
            for example in examples:
                if example.prompt[0]["role"] != "system":
                    example.prompt.insert(0, {"role": "system", "content": c.system_prompt})
        return self._fitting(examples, rows.locations, spec)

    def _fitting(self, examples: list, locations: list[str], spec: str) -> list:
        """Prompts whose tokens leave room for max_new_tokens within max_length. Longer ones are
        dropped with one warning that counts them (a prompt longer than the model's positions
        would otherwise fail, or silently degrade, deep inside generation)."""
        room = self.config.max_length - self.config.max_new_tokens
        lengths = [len(ids) for ids in encode_prompts(self.tokenizer, [e.prompt for e in examples])]
        kept = [e for e, n in zip(examples, lengths) if n <= room]
        if len(kept) < len(examples):
            dropped = [where for where, n in zip(locations, lengths) if n > room]
            message = (f"{spec}: {len(dropped)} of {len(examples)} prompts are longer than "
                       f"max_length - max_new_tokens = {room} tokens (first: {dropped[0]}); ")
            if not kept:
                raise DataError(message + "none is left: raise max_length.")
            warnings.warn(message + "they are left out.", stacklevel=3)
        return kept

    # --- batch semantics ----------------------------------------------------------------
    @property
    def steps_per_round(self) -> int:
        return self.config.num_iterations * self.config.mini_batches

    def total_steps(self) -> int:
        c = self.config
        if c.max_steps > 0:
            return c.max_steps
        rounds = math.ceil(len(self.prompts) * c.num_epochs / c.prompts_per_step)
        return max(1, rounds) * self.steps_per_round

    def attach(self, wrapped, accelerator) -> None:
        self.wrapped, self.device = wrapped, accelerator.device
        if self.reference is not None:
            self.reference.to(self.device)

    def sampling_params(self, round_index: int, greedy: bool = False) -> SamplingParams:
        c = self.config
        return SamplingParams(
            n=1 if greedy else c.num_generations,
            temperature=0.0 if greedy else c.temperature,
            top_p=c.top_p, top_k=c.top_k, max_new_tokens=c.max_new_tokens,
            seed=c.seed * 1_000_003 + round_index,
        )

    # --- one round: rollout -> rewards -> advantages -> old/ref log-probs -----------------
    def step_batches(self, start_step: int) -> Iterator[StepBatch]:
        c = self.config
        first_round = start_step // self.steps_per_round
        order = step_indices(len(self.prompts), c.prompts_per_step, c.seed, first_round,
                             shuffle=c.shuffle)
        for round_index, indices in enumerate(order, start=first_round):
            data = self.collect(round_index, [self.prompts[i] for i in indices], indices)
            yield from self.round_step_batches(data, round_index)

    def collect(
        self, round_index: int, examples: list, indices: list[int] | None = None
    ) -> RoundData:
        """Rollout + rewards for ``examples`` (``indices``: their rows in the training data,
        so a failing reward function names the data row). Each process samples and scores
        its share of the prompts; the result holds the whole round on every process."""
        c = self.config
        here = ranks()
        params = self.sampling_params(round_index)
        mine = list(range(here.rank, len(examples), here.world))  # whole groups per process
        t0 = time.time()
        with self.generation_weights():
            self.generator.update_weights(self.policy)  # vllm: the latest step's weights
            local = self.sample([examples[p].prompt for p in mine], params,
                                seeds=[params.seed * 7919 + p for p in mine])
        t1 = time.time()
        rows = [mine[p] for p in local.prompt_index]  # row -> prompt position in the round
        columns = {key: [examples[p].columns.get(key) for p in rows]
                   for key in sorted({k for e in examples for k in e.columns})}
        row_ids = [indices[p] for p in rows] if indices is not None else None
        if rows:
            scored = self.rewards.score([examples[p].prompt for p in rows], local.completions,
                                        local.completion_ids, columns, row_ids=row_ids,
                                        prompt_forms=[examples[p].original for p in rows])
        else:  # more processes than prompts: nothing to score here
            scored = RewardOutput([], {name: [] for name in self.rewards.names})
        t2 = time.time()
        parts = all_gather_objects((mine, local, scored))
        rollout, order = merge_rollouts([(positions, r) for positions, r, _ in parts])
        scored = _merge_scores([part[2] for part in parts], order)
        self.watch_for_missing_rewards(scored, round_index)
        rewards = torch.tensor(scored.totals, dtype=torch.float32)  # [N]

        # [N / G] bool; PPO may sample one completion per prompt: no groups then
        flat = zero_std_groups(rewards, c.num_generations) if c.num_generations > 1 else None
        keep = list(range(len(rewards)))
        if c.skip_zero_std_groups and flat is not None:
            keep = [i for i in keep if not flat[i // c.num_generations]]
        if c.mask_truncated_completions:
            keep = [i for i in keep if rollout.finish_reasons[i] == "stop"]
        lengths = [len(ids) for ids in rollout.completion_ids]
        generation_s, reward_s = all_reduce_max(t1 - t0), all_reduce_max(t2 - t1)
        metrics = {
            **scored.metrics(),
            **({"frac_reward_zero_std": float(flat.float().mean())} if flat is not None else {}),
            "completion_length": sum(lengths) / len(lengths),
            "frac_truncated": rollout.finish_reasons.count("length") / len(lengths),
            "trained_completions": len(keep),
            "time/generation_s": round(generation_s, 3),
            "time/reward_s": round(reward_s, 3),
            "generated_tokens_per_s": sum(lengths) / max(generation_s, 1e-9),
        }
        data = RoundData(rollout, rewards, None, keep, metrics)
        data.advantages = self.estimate_advantages(data)
        return data

    def generation_weights(self):
        """Context in which the policy's weights are whole on this process (a collective
        gather under FSDP / ZeRO-3, entered by every process; nothing otherwise)."""
        return gathered_for_generation(getattr(self, "wrapped", None))

    def watch_for_missing_rewards(self, scored: RewardOutput, round_index: int) -> None:
        """A round where no function gave any value trains on nothing: warn, and stop after
        ``max_rounds_without_reward`` such rounds in a row."""
        if scored.totals and scored.all_none_rows < len(scored.totals):
            self.rounds_without_reward = 0
            return
        self.rounds_without_reward += 1
        limit = self.config.max_rounds_without_reward
        message = (f"round {round_index}: no reward function returned a value for any of the "
                   f"{len(scored.totals)} completions ({self.rounds_without_reward} round(s) in "
                   "a row); check that the data has the columns the rewards read "
                   f"(functions: {self.rewards.names})")
        if self.rounds_without_reward >= limit:
            raise RewardError(message + f"; stopping after {limit} rounds "
                              "(max_rounds_without_reward).")
        warnings.warn(message, stacklevel=2)

    def sample(self, prompts: list, params: SamplingParams,
               seeds: list[int] | None = None) -> Rollout:
        """This process's completions of ``prompts`` (messages); call it inside
        ``generation_weights()``. No prompts: an empty rollout."""
        if not prompts:
            return Rollout([], [], [], [], [], [])
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        return self.generator.generate(prompt_ids, params, seeds=seeds)

    def estimate_advantages(self, data: RoundData) -> torch.Tensor:
        """Sequence-level advantages [N] for the critic-free estimators (from data.rewards)."""
        c = self.config
        G = c.num_generations
        rewards = data.rewards
        if c.advantage_estimator == "grpo":
            return group_advantages(rewards, G, scale=c.scale_rewards)
        if c.advantage_estimator == "rloo":
            return rloo_advantages(rewards, G)
        if c.advantage_estimator == "reinforce_pp":  # group baseline, then batch whitening
            mask = data.rollout.to_padded_tensors(self.pad_id)["completion_mask"]  # [N, C]
            return reinforce_pp_baseline_advantages(rewards, G, mask)  # [N, C], over tokens
        raise ValueError(f"unknown advantage_estimator {c.advantage_estimator!r}")

    def round_step_batches(self, data: RoundData, round_index: int) -> Iterator[StepBatch]:
        """num_iterations passes x mini_batches optimiser steps over the kept rows."""
        c = self.config
        if not data.keep:  # nothing to learn from (all groups flat): steps do nothing
            for _ in range(self.steps_per_round):
                yield StepBatch([], {"sequences": 0, "tokens": 0}, dict(data.metrics))
            return
        generator = torch.Generator().manual_seed(c.seed + round_index)
        t0 = time.time()
        self.score_old_and_ref(data)  # before any update: pi_old is the sampling policy
        scoring_s = time.time() - t0 + data.scoring_s
        for iteration in range(c.num_iterations):
            order = torch.randperm(len(data.keep), generator=generator).tolist()
            rows = [data.keep[i] for i in order] if c.mini_batches > 1 else data.keep
            size = math.ceil(len(rows) / c.mini_batches)
            for m in range(c.mini_batches):
                mini = rows[m * size : (m + 1) * size]
                micro = [self.make_micro(data, r)
                         for r in split_micro(mini, c.per_device_batch_size)]
                tokens = sum(float(mb["completion_mask"].sum()) for mb in micro)
                metrics = dict(data.metrics) if iteration == 0 and m == 0 else {}
                metrics["time/scoring_s"] = round(scoring_s, 3)
                yield StepBatch(micro, {"sequences": len(mini), "tokens": tokens}, metrics)

    def make_micro(self, data: RoundData, rows: list[int]) -> dict[str, Any]:
        batch = self.padded_rows(data.rollout, rows)
        advantages = data.advantages[rows]
        width = batch["completion_mask"].shape[1]  # this micro-batch's own padded C
        if advantages.ndim == 2:  # per-token (PPO): trim to this micro-batch's width
            advantages = advantages[:, :width]
        batch["advantages"] = advantages
        for key, values in data.token_data.items():  # [N, C_round] -> [B, C]
            batch[key] = values[rows][:, :width]
        batch["rows"] = rows
        return batch

    def padded_rows(self, r: Rollout, rows: list[int]) -> dict[str, Any]:
        """``rows`` of the rollout in the one-forward-pass layout (Rollout.to_padded_tensors)."""
        sub = Rollout(
            prompt_ids=[r.prompt_ids[i] for i in rows],
            completion_ids=[r.completion_ids[i] for i in rows],
            completions=[r.completions[i] for i in rows],
            sampler_logprobs=[r.sampler_logprobs[i] for i in rows],
            finish_reasons=[r.finish_reasons[i] for i in rows],
            prompt_index=[r.prompt_index[i] for i in rows],
        )
        return dict(sub.to_padded_tensors(self.pad_id))

    @torch.no_grad()
    def score_tables(self, rollout: Rollout, rows: list[int], score) -> dict[str, torch.Tensor]:
        """Per-token values of ``rows`` as round tables [N, C] (C = the round's longest
        completion, rows aligned from column 0, zeros elsewhere). ``score(mb)`` returns
        ``{key: [B, width]}`` for one micro-batch; each process scores its even share of the
        micro-batches (padding passes keep sharded forwards in step) and the tables are summed
        across processes, so every process ends with all of them."""
        here = ranks()
        N = len(rollout)
        C = max(1, max(len(ids) for ids in rollout.completion_ids))
        tables: dict[str, torch.Tensor] = {}
        for slot in my_share(split_micro(rows, self.config.per_device_batch_size),
                             here.rank, here.world):
            mb = self.padded_rows(rollout, slot.item)
            for key, values in score(mb).items():
                table = tables.setdefault(key, torch.zeros(N, C))
                if slot.real:
                    table[slot.item, : values.shape[1]] = values.float().cpu()
        if not tables:
            return {}
        keys = sorted(tables)
        summed = all_reduce_sum(torch.stack([tables[k] for k in keys]))  # [K, N, C]
        return dict(zip(keys, summed))

    def score_old_and_ref(self, data: RoundData) -> None:
        """pi_old log-probs (only needed when the round takes more than one optimiser step;
        otherwise pi_old = pi_theta exactly and the ratio is 1) and pi_ref log-probs (when the
        loss has a KL term) of the kept rows, into ``data.token_data``. Tables that
        estimate_advantages already filled are kept."""
        need_old = self.steps_per_round > 1 and "old_logprobs" not in data.token_data
        need_ref = self.kl_loss_coef() > 0 and "ref_logprobs" not in data.token_data
        if not (need_old or need_ref):
            return

        def score(mb: dict) -> dict[str, torch.Tensor]:
            out = {}
            if need_old:
                out["old_logprobs"] = self.logprobs(self.wrapped, mb)[0]
            if need_ref:
                out["ref_logprobs"] = self.reference_logprobs(mb)
            return out

        data.token_data.update(self.score_tables(data.rollout, data.keep, score))

    def logprobs(self, scorer, mb: dict, return_entropy: bool = False, **kwargs: Any):
        P = mb["prompt_length"]
        return scorer(
            mb["input_ids"].to(self.device), mb["input_ids"][:, P:].to(self.device),
            attention_mask=mb["attention_mask"].to(self.device),
            position_ids=mb["position_ids"].to(self.device),
            temperature=self.config.temperature, return_entropy=return_entropy, **kwargs,
        )  # [B, C]

    def reference_logprobs(self, mb: dict) -> torch.Tensor:
        if self.reference is not None:
            return self.logprobs(self.reference, mb)[0]
        with self.policy.disable_adapter():  # LoRA: the base model is the reference
            return self.logprobs(self.wrapped, mb)[0]

    # --- the loss ----------------------------------------------------------------------
    def loss(self, wrapped, mb: dict, step_batch: StepBatch):
        c = self.config
        mask = mb["completion_mask"].to(self.device)  # [B, C]
        logprobs, entropy, *extras = self.training_forward(wrapped, mb, c.log_entropy)
        old = self.old_logprobs(mb, logprobs)  # [B, C]
        advantages = mb["advantages"].to(self.device)
        if advantages.ndim == 1:
            advantages = advantages[:, None]  # same advantage for every token of a response
        per_token, clipped_low, clipped_high = clipped_surrogate(
            logprobs, old, advantages, epsilon_low=c.epsilon, epsilon_high=c.epsilon_high)
        metrics = {  # statistics over the step's tokens (train/metrics.py)
            "clip_ratio/low": stat(clipped_low.float(), mask),
            "clip_ratio/high": stat(clipped_high.float(), mask),
        }
        per_token, sampler_metrics = self.correct_for_sampler(per_token, old, mb, mask)
        metrics.update(sampler_metrics)
        kl_coef = self.kl_loss_coef()
        if kl_coef > 0:
            kl = kl_estimate(logprobs, mb["ref_logprobs"].to(self.device), c.kl_estimator)
            per_token = per_token + kl_coef * kl
            metrics["kl"] = stat(kl, mask)
        if entropy is not None:
            metrics["entropy"] = stat(entropy, mask)
        loss = aggregate_token_loss(
            per_token, mask, c.loss_type,
            total_sequences=step_batch.totals["sequences"],
            total_tokens=step_batch.totals["tokens"],
            max_completion_length=c.max_new_tokens,
            num_micro_batches=len(step_batch.micro_batches),
        )
        extra, extra_metrics = self.extra_loss(mb, step_batch, logprobs, *extras)
        return loss + extra, {**metrics, **extra_metrics}

    def correct_for_sampler(self, per_token: torch.Tensor, old: torch.Tensor, mb: dict,
                            mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Log how far the sampler's log-probs are from the trainer's pi_old, every step; when
        the sampler is not exact (paged, vllm, autocast), weight the policy loss by truncated
        importance sampling (``ops.policy.truncated_importance_weights``)."""
        sampler = mb["sampler_logprobs"].to(self.device)  # [B, C]
        metrics = {"sampler/logprob_diff": stat((old - sampler).abs(), mask)}
        c = self.config
        if self.sampler_is_exact or not c.importance_sampling_correction:
            return per_token, metrics
        weights = truncated_importance_weights(old, sampler, c.importance_sampling_cap)  # [B, C]
        metrics["sampler/is_weight"] = stat(weights, mask)
        metrics["sampler/is_capped"] = stat((weights >= c.importance_sampling_cap).float(), mask)
        return per_token * weights, metrics

    def old_logprobs(self, mb: dict, logprobs: torch.Tensor) -> torch.Tensor:
        """pi_old log-probs [B, C] on the training device: the ones scored (or sampled) before
        the round's first update, or, on one-step rounds where none are stored, the current
        ones detached (pi_old = pi_theta, ratio exactly 1). Stored ones may sit on the CPU
        (round-level tables), hence the move."""
        if "old_logprobs" in mb:
            return mb["old_logprobs"].to(self.device)
        return logprobs.detach()

    def training_forward(self, wrapped, mb: dict, return_entropy: bool) -> tuple:
        """The loss's one forward pass through the wrapped (DDP-visible) module:
        (logprobs [B, C], entropy [B, C] | None, *extras); extras go to ``extra_loss``."""
        return self.logprobs(wrapped, mb, return_entropy=return_entropy)

    def extra_loss(
        self, mb: dict, step_batch: StepBatch, logprobs: torch.Tensor, *extras: Any
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """Additional loss terms (PPO's value loss) and their statistics; none for
        critic-free estimators."""
        return 0.0, {}

    # --- evaluation and saving -----------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, wrapped) -> dict[str, float]:
        """Greedy answers to the eval prompts, scored by the same reward functions (for the
        math reward this is the accuracy, counted on the final answer only). Each process
        answers and scores its share of the prompts; the means are over all of them."""
        if not self.eval_prompts:
            return {}
        here = ranks()
        size = self.config.eval_batch_size
        chunks = [self.eval_prompts[i : i + size] for i in range(0, len(self.eval_prompts), size)]
        values: dict[str, list[float]] = {}
        with self.generation_weights():
            answers = [(chunk, self.sample([e.prompt for e in chunk],
                                           self.sampling_params(0, greedy=True)))
                       for chunk in chunks[here.rank :: here.world]]
        for chunk, rollout in answers:
            columns = {k: [e.columns.get(k) for e in chunk]
                       for k in sorted({k for e in chunk for k in e.columns})}
            scored = self.rewards.score([e.prompt for e in chunk], rollout.completions,
                                        rollout.completion_ids, columns,
                                        prompt_forms=[e.original for e in chunk])
            for name, got in [*scored.per_function.items(), ("total", scored.totals)]:
                values.setdefault(name, []).extend(v for v in got if v is not None)
        merged: dict[str, list[float]] = {}
        for part in all_gather_objects(values):
            for name, got in part.items():
                merged.setdefault(name, []).extend(got)
        return {f"rewards/{k}/mean": sum(v) / len(v) for k, v in sorted(merged.items()) if v}

    def save(self, output_dir: str, state_dicts=lambda module: None) -> None:
        from posttrain.config import save_config

        save_model(self.model, self.tokenizer, output_dir, self.config.merge_lora,
                   state_dict=state_dicts(self.model), base_name=self.config.model)
        save_config(self.config, f"{output_dir}/posttrain_config.yaml")


def check_rewards(rewards, examples: list, spec: str | None) -> None:
    """Every reward function, called once on the first row of ``spec`` with an empty completion,
    and every row given to functions that check rows themselves (``validate_rows``)."""
    if not examples:
        return
    first = examples[0]
    rewards.check(first.prompt, first.columns, f"the first row of {spec}", first.original)
    keys = sorted({k for e in examples for k in e.columns})
    columns = {k: [e.columns.get(k) for e in examples] for k in keys}
    for fn in rewards.functions:
        validate = getattr(fn, "validate_rows", None)  # an optional protocol of reward objects
        if callable(validate):
            validate(columns, [f"{spec}, prompt {i}" for i in range(len(examples))])


def _merge_scores(parts: list[RewardOutput], order: list[tuple[int, int]]) -> RewardOutput:
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
