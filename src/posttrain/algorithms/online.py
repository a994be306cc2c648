"""Online policy-gradient RL: the round GRPO, RLOO, REINFORCE++ and PPO share.

One *round* (the algorithm box of Shao et al. 2024; PPO's without the critic):

    prompts      <- next prompts_per_step prompts
    rollout      <- policy samples num_generations completions per prompt      (generation)
    rewards      <- reward functions(prompts, completions, columns)            (reward)
    advantages   <- estimator(rewards)          # grpo.py | rloo.py | reinforce_pp.py | ppo.py
    old, ref     <- log-probs of the sampled tokens under pi_old and pi_ref     (scoring)
    repeat num_iterations times, over mini_batches mini-batches:               (training)
        loss = aggregate( clipped_surrogate(logp, old, A) + kl_coef * KL(pi || pi_ref) )
               [+ the critic's value loss]
        one optimiser step per mini-batch

An algorithm is this round composed with two parts, named by its trainer class:
``estimator_class`` (an ``rounds.AdvantageEstimator``: the advantages, and how the KL to pi_ref
enters) and, for PPO only, ``critic_class`` (a trainable value model with its own loss, trained
in the same optimiser step). Everything else, including batching, logging and the time split,
is here.

With several processes, a round's prompts are dealt out (prompt i to process i mod N, so a group
never straddles two processes); each process samples and scores its own prompts with per-prompt
seeds, and the scored rollouts are gathered, so every process holds the whole round, computes the
same advantages (group statistics, whitening, logged means) and trains its share of the
micro-batches. The scoring forward passes (pi_old, pi_ref, values) are split the same way and
their [N, C] tables summed. One process and N processes therefore take the same steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posttrain.algorithms.online_config import OnlineRLConfig
from posttrain.algorithms.rounds import (
    AdvantageEstimator,
    MissingRewardWatch,
    RoundData,
    check_rewards,
    columns_of,
    load_prompts,
    merge_scores,
    padded_rows,
)
from posttrain.models import is_peft, load_causal_lm, load_policy, load_tokenizer, save_model
from posttrain.ops.advantages import zero_std_groups
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


class OnlineRL(Trainer):
    """The shared round; an algorithm's trainer class names its estimator (and critic)."""

    estimator_class: type[AdvantageEstimator]
    critic_class: type | None = None  # PPO: ppo.Critic
    console_keys = ("rewards/total/mean", "eval/rewards/total/mean", "kl", "completion_length")

    def __init__(self, config: OnlineRLConfig, model=None, tokenizer=None, reward_functions=None,
                 critic: nn.Module | None = None):
        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(config.tokenizer or config.model,
                                                     config.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id
        self.rewards = load_reward_set(reward_functions or config.rewards, config.reward_weights,
                                       config.reward_timeout_s, config.reward_on_error,
                                       config.reward_call_style)
        self.prompts = load_prompts(config, self.tokenizer, config.train_data, config.train_split,
                                    config.max_samples)
        self.eval_prompts = load_prompts(config, self.tokenizer, config.eval_data,
                                         config.eval_split, config.eval_max_samples
                                         ) if config.eval_data else []
        for examples, spec in ((self.prompts, config.train_data),
                               (self.eval_prompts, config.eval_data)):
            check_rewards(self.rewards, examples, spec)  # before any model loads
        self.watch_for_missing_rewards = MissingRewardWatch(config.max_rounds_without_reward,
                                                            self.rewards.names)
        self.estimator = self.estimator_class(config)
        self.policy = model if model is not None else load_policy(config, self.tokenizer)
        if critic is not None and self.critic_class is None:
            raise TypeError(f"{type(self).__name__} has no critic; critic= is for PPO.")
        self.critic = (self.critic_class(config, self.tokenizer, critic)
                       if self.critic_class is not None else None)
        # what the loop optimises: the policy, or policy + critic in one module
        self.model = (self.critic.with_policy(self.policy) if self.critic is not None
                      else self.policy)
        self.reference = None
        if self.estimator.needs_reference() and not (config.use_lora and is_peft(self.policy)):
            reference = load_causal_lm(config.model, config.dtype, config.attn_implementation,
                                       config.trust_remote_code)
            self.reference = TokenLogprobs(reference.eval().requires_grad_(False))
        self.generator = make_generator(config, self.policy, self.tokenizer)

    @property
    def sampler_is_exact(self) -> bool:
        """The sampler's log-probs are the trainer's own forward (hf backend, no autocast):
        they may stand in for pi_old, and no importance-sampling correction is needed."""
        exact = getattr(self.generator, "exact_sampler", False)
        return exact and self.config.mixed_precision == "no"

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

    def wrap(self, model: nn.Module) -> nn.Module:
        return self.critic.wrap(model) if self.critic is not None else TokenLogprobs(model)

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

    # --- one round: rollout -> rewards -> advantages -> old/ref log-probs -> steps ------------
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
        """Rollout, rewards and advantages for ``examples`` (``indices``: their rows in the
        training data, so a failing reward function names the data row). Each process samples
        and scores its share of the prompts; the result holds the whole round everywhere."""
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
        row_ids = [indices[p] for p in rows] if indices is not None else None
        if rows:
            scored = self.rewards.score(
                [examples[p].prompt for p in rows], local.completions, local.completion_ids,
                columns_of([examples[p] for p in rows]), row_ids=row_ids,
                prompt_forms=[examples[p].original for p in rows])
        else:  # more processes than prompts: nothing to score here
            scored = RewardOutput([], {name: [] for name in self.rewards.names})
        t2 = time.time()
        parts = all_gather_objects((mine, local, scored))
        rollout, order = merge_rollouts([(positions, r) for positions, r, _ in parts])
        scored = merge_scores([part[2] for part in parts], order)
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
        data = RoundData(rollout, rewards, keep, metrics)
        data.advantages = self.estimator.advantages(data, self)
        return data

    def generation_weights(self):
        """Context in which the policy's weights are whole on this process (a collective
        gather under FSDP / ZeRO-3, entered by every process; nothing otherwise)."""
        return gathered_for_generation(getattr(self, "wrapped", None))

    def sample(self, prompts: list, params: SamplingParams,
               seeds: list[int] | None = None) -> Rollout:
        """This process's completions of ``prompts`` (messages); call it inside
        ``generation_weights()``. No prompts: an empty rollout."""
        if not prompts:
            return Rollout([], [], [], [], [], [])
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        return self.generator.generate(prompt_ids, params, seeds=seeds)

    def round_step_batches(self, data: RoundData, round_index: int) -> Iterator[StepBatch]:
        """num_iterations passes x mini_batches optimiser steps over the kept rows. With
        ``kl_stop``, once a trained step measured approx KL(pi_old || pi) above it (read from
        that step's outcome, reduced over all processes, so they all decide alike), the round's
        remaining steps are empty (no gradient, no update): the step count stays fixed."""
        c = self.config
        if not data.keep:  # nothing to learn from (all groups flat): steps do nothing
            for _ in range(self.steps_per_round):
                yield StepBatch([], {"sequences": 0, "tokens": 0}, dict(data.metrics))
            return
        generator = torch.Generator().manual_seed(c.seed + round_index)
        t0 = time.time()
        self.score_old_and_ref(data)  # before any update: pi_old is the sampling policy
        scoring_s = time.time() - t0 + data.scoring_s
        previous: StepBatch | None = None
        stopped = False
        for iteration in range(c.num_iterations):
            order = torch.randperm(len(data.keep), generator=generator).tolist()
            rows = [data.keep[i] for i in order] if c.mini_batches > 1 else data.keep
            size = math.ceil(len(rows) / c.mini_batches)
            for m in range(c.mini_batches):
                metrics = dict(data.metrics) if iteration == 0 and m == 0 else {}
                metrics["time/scoring_s"] = round(scoring_s, 3)
                if c.kl_stop is not None and previous is not None and not stopped:
                    stopped = previous.outcome.get("approx_kl", 0.0) > c.kl_stop
                if stopped:
                    step = StepBatch([], {"sequences": 0, "tokens": 0},
                                     {**metrics, "kl_stop/skipped": 1.0})
                else:
                    mini = rows[m * size : (m + 1) * size]
                    micro = [self.make_micro(data, r)
                             for r in split_micro(mini, c.per_device_batch_size)]
                    tokens = sum(float(mb["completion_mask"].sum()) for mb in micro)
                    step = StepBatch(micro, {"sequences": len(mini), "tokens": tokens}, metrics)
                yield step
                previous = step

    def make_micro(self, data: RoundData, rows: list[int]) -> dict[str, Any]:
        batch = padded_rows(data.rollout, rows, self.pad_id)
        advantages = data.advantages[rows]
        width = batch["completion_mask"].shape[1]  # this micro-batch's own padded C
        if advantages.ndim == 2:  # per-token: trim to this micro-batch's width
            advantages = advantages[:, :width]
        batch["advantages"] = advantages
        for key, values in data.token_data.items():  # [N, C_round] -> [B, C]
            batch[key] = values[rows][:, :width]
        batch["rows"] = rows
        return batch

    # --- scoring forward passes over the round ---------------------------------------------
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
            mb = padded_rows(rollout, slot.item, self.pad_id)
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
        loss has a KL term) of the kept rows, into ``data.token_data``. Tables that the
        estimator already filled are kept."""
        need_old = self.steps_per_round > 1 and "old_logprobs" not in data.token_data
        need_ref = self.estimator.kl_loss_coef() > 0 and "ref_logprobs" not in data.token_data
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
        """``scorer``'s outputs on a micro-batch: (logprobs [B, C], entropy | None) for a
        policy; with a critic, ``parts=`` selects values too (value.ActorCriticForward)."""
        P = mb["prompt_length"]
        return scorer(
            mb["input_ids"].to(self.device), mb["input_ids"][:, P:].to(self.device),
            attention_mask=mb["attention_mask"].to(self.device),
            position_ids=mb["position_ids"].to(self.device),
            temperature=self.config.temperature, return_entropy=return_entropy, **kwargs,
        )

    def reference_logprobs(self, mb: dict) -> torch.Tensor:
        if self.reference is not None:
            return self.logprobs(self.reference, mb)[0]
        with self.policy.disable_adapter():  # LoRA: the base model is the reference
            return self.logprobs(self.wrapped, mb)[0]

    def old_logprobs(self, mb: dict, logprobs: torch.Tensor) -> torch.Tensor:
        """pi_old log-probs [B, C] on the training device: the ones scored (or sampled) before
        the round's first update, or, on one-step rounds where none are stored, the current
        ones detached (pi_old = pi_theta, ratio exactly 1). Stored ones may sit on the CPU
        (round-level tables), hence the move."""
        if "old_logprobs" in mb:
            return mb["old_logprobs"].to(self.device)
        return logprobs.detach()

    # --- the loss ----------------------------------------------------------------------
    def loss(self, wrapped, mb: dict, step_batch: StepBatch):
        c = self.config
        mask = mb["completion_mask"].to(self.device)  # [B, C]
        if self.critic is not None:  # one forward through the module DDP sees: policy and critic
            logprobs, entropy, values = self.logprobs(wrapped, mb, c.log_entropy, parts="both")
        else:
            logprobs, entropy = self.logprobs(wrapped, mb, c.log_entropy)  # [B, C] each
        old = self.old_logprobs(mb, logprobs)  # [B, C]
        advantages = mb["advantages"].to(self.device)
        if advantages.ndim == 1:
            advantages = advantages[:, None]  # same advantage for every token of a response
        per_token, clipped_low, clipped_high = clipped_surrogate(
            logprobs, old, advantages, epsilon_low=c.epsilon, epsilon_high=c.epsilon_high)
        log_ratio = logprobs.detach() - old  # [B, C]
        metrics = {  # statistics over the step's tokens (train/metrics.py)
            "clip_ratio/low": stat(clipped_low.float(), mask),
            "clip_ratio/high": stat(clipped_high.float(), mask),
            "approx_kl": stat(0.5 * log_ratio**2, mask),  # k2 estimate of KL(pi_old || pi)
        }
        per_token, sampler_metrics = self.correct_for_sampler(per_token, old, mb, mask)
        metrics.update(sampler_metrics)
        kl_coef = self.estimator.kl_loss_coef()
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
        if self.critic is not None:
            value_loss, value_metrics = self.critic.loss(values, mb, step_batch, self.device)
            loss = loss + value_loss
            metrics.update(value_metrics)
        return loss, metrics

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

    # --- evaluation, resumable state, saving ---------------------------------------------
    @torch.no_grad()
    def evaluate(self, wrapped) -> dict[str, float]:
        """Greedy answers to the eval prompts, scored by the same reward functions and
        summarised by the code ``posttrain eval --rewards`` runs (``evaluation.reward_eval``):
        mean reward per function (for the math reward this is the accuracy, counted on the
        final answer only), accuracy, completion length, truncation. Each process answers and
        scores its share of the prompts; the means are over all of them."""
        from posttrain.evaluation.common import rollout_groups
        from posttrain.evaluation.reward_eval import score_groups, summarise

        if not self.eval_prompts:
            return {}
        here = ranks()
        size = self.config.eval_batch_size
        chunks = [self.eval_prompts[i : i + size] for i in range(0, len(self.eval_prompts), size)]
        with self.generation_weights():
            answers = [(chunk, self.sample([e.prompt for e in chunk],
                                           self.sampling_params(0, greedy=True)))
                       for chunk in chunks[here.rank :: here.world]]
        mine = []
        for chunk, rollout in answers:
            mine += score_groups(chunk, rollout_groups(rollout, len(chunk), strip=False),
                                 self.rewards)
        return summarise([p for part in all_gather_objects(mine) for p in part])

    def state_dict(self) -> dict[str, Any]:
        return self.estimator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.estimator.load_state_dict(state)

    def save(self, output_dir: str, state_dicts=lambda module: None) -> None:
        """The policy in ``output_dir`` (Hugging Face layout), the critic, if any, in
        ``output_dir/value_model``, and the config."""
        from posttrain.config import save_config

        save_model(self.policy, self.tokenizer, output_dir, self.config.merge_lora,
                   state_dict=state_dicts(self.policy), base_name=self.config.model)
        if self.critic is not None:
            self.critic.save(Path(output_dir) / "value_model", state_dicts)
        save_config(self.config, f"{output_dir}/posttrain_config.yaml")
