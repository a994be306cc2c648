"""Rollouts through transformers' own continuous batching (``rollout_backend: paged``).

``model.generate_batch`` (transformers >= 5.10) keeps a paged KV cache, schedules requests as
they finish (no row waits for the longest one), forks a prompt's ``n`` samples from one prefill
with shared cache blocks, and on a GPU captures CUDA graphs. It runs on the very module the
optimiser updates, so there are no weights to copy after a step.

What it does not promise: per-prompt seeds (it has one seed per call) and bitwise agreement with
the trainer's forward (a different attention kernel and batch layout). So its samples depend on
batch composition and process count, and online RL treats its log-probs as a *different
sampler*: pi_old comes from the trainer's forward and the truncated importance-sampling
correction applies (``ops.policy.truncated_importance_weights``). On CPU it works but is slow
(a background thread polls for work); it is meant for GPUs.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from posttrain.errors import PosttrainError
from posttrain.rollout.base import Rollout, SamplingParams, resolve_stop_token_ids


class PagedGenerator:
    """``Generator`` over ``model.generate_batch`` (paged attention, continuous batching)."""

    exact_sampler = False  # its log-probs are not the trainer's forward, bit for bit

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_batch_tokens: int | None = None):
        if not hasattr(model, "generate_batch"):
            raise PosttrainError(
                "rollout_backend=paged needs transformers >= 5.10 (model.generate_batch, "
                "continuous batching); upgrade transformers or use rollout_backend=hf."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_tokens = max_batch_tokens

    def update_weights(self, model: torch.nn.Module) -> None:
        """Nothing to copy: generation runs on the module the optimiser updates."""
        self.model = model

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> Rollout:
        """Sample ``params.n`` completions per prompt; rows come back prompt-major. Only the
        first seed is used (one seed per call)."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        if not prompts:
            return Rollout([], [], [], [], [], [])
        stop_ids = resolve_stop_token_ids(params, self.tokenizer, self.model)
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        generation = GenerationConfig(
            do_sample=not params.greedy,
            temperature=params.temperature if not params.greedy else None,
            top_k=params.top_k if params.top_k > 0 else None,
            top_p=params.top_p if params.top_p < 1.0 else None,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=stop_ids,
            pad_token_id=pad_id if pad_id is not None else stop_ids[0],
            num_return_sequences=params.n,
        )
        seed = seeds[0] if seeds else params.seed
        batching = ContinuousBatchingConfig(return_logprobs=True, seed=seed,
                                            max_batch_tokens=self.max_batch_tokens)
        start = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                outputs = self.model.generate_batch(
                    [list(p) for p in prompts], generation_config=generation,
                    continuous_batching_config=batching, progress_bar=False)
        finally:
            self.model.train(was_training)
        seconds = time.perf_counter() - start
        results = list(outputs.values())  # per prompt: its n samples together, in input order
        failed = [r.request_id for r in results if r.error is not None]
        if len(results) != len(prompts) * params.n or failed:
            raise PosttrainError(
                f"continuous batching returned {len(results)} of {len(prompts) * params.n} "
                f"completions (failed: {failed[:3]}); retry with rollout_backend=hf."
            )
        stop = set(stop_ids)
        completion_ids = [list(r.generated_tokens) for r in results]
        logprobs = [[0.0] * len(ids) if params.greedy else [float(x) for x in r.logprobs]
                    for r, ids in zip(results, completion_ids)]  # greedy: a point mass
        n_tokens = sum(len(c) for c in completion_ids)
        return Rollout(
            prompt_ids=[list(p) for p in prompts for _ in range(params.n)],
            completion_ids=completion_ids,
            completions=self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
            sampler_logprobs=logprobs,
            finish_reasons=["stop" if ids and ids[-1] in stop else "length"
                            for ids in completion_ids],
            prompt_index=[i for i in range(len(prompts)) for _ in range(params.n)],
            stats={"generation_seconds": seconds, "generated_tokens": float(n_tokens),
                   "tokens_per_second": n_tokens / seconds if seconds > 0 else 0.0},
        )
