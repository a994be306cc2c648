"""Sampling from a Hugging Face causal LM with our own decode loop.

Why not ``model.generate``: RL needs three things it does not give cheaply. (1) GRPO samples G
completions of the same prompt; ``generate(num_return_sequences=G)`` copies the prompt G times and
prefills every copy, while we prefill each unique prompt once and repeat its KV cache G-fold.
(2) The sampler's log-prob of each chosen token under the distribution it was drawn from, which
``generate`` only offers as full-vocabulary score tensors. (3) Dropping finished rows from the
batch, so a few long completions do not keep paying for many short ones.

The loop is plain: left-padded prefill (only the last position's logits are computed), repeat the
cache n-fold, then sample / record / stop-check / feed one token per step until every row has
produced a stop token or ``max_new_tokens`` is reached.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import torch
from transformers import DynamicCache

from posttrain.errors import PosttrainError
from posttrain.rollout.base import Rollout, SamplingParams, resolve_stop_token_ids


def process_logits(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Log-probs of the distribution we actually sample from: temperature, top-k, top-p.

    logits: [R, V] (any float dtype). Returns float32 [R, V] log-probs with -inf on removed
    tokens. Order as in ``transformers``' samplers (temperature, then top-k, then top-p), so the
    same parameters mean the same distribution in both. ``temperature`` must be > 0.
    """
    z = logits.float() / temperature  # [R, V]
    if 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]  # [R, 1]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)  # [R, V]
        probs = torch.softmax(sorted_z, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # [R, V]: mass of strictly likelier tokens
        # Keep the smallest prefix whose mass reaches top_p (the first token always survives).
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return torch.log_softmax(z, dim=-1)


def sample_tokens(
    logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; returns (tokens [R] long, their log-probs [R] float32).

    Sampling is by inverse CDF: row r takes the first token whose cumulative probability exceeds
    ``uniforms[r]`` (one number in [0, 1) per row, from that row's own random stream). So a
    row's sample depends only on its own logits and its own stream, never on which other rows
    share the batch: the same seed gives the same completions with any batch size, any
    ``max_batch_rows`` and any number of processes. ``uniforms=None`` draws them from the global
    generator. Greedy (temperature 0) takes the argmax; its log-prob is 0.0 because a point mass
    is the distribution it was drawn from.
    """
    if params.greedy:
        tokens = logits.argmax(dim=-1)  # [R]
        return tokens, torch.zeros(tokens.shape, dtype=torch.float32, device=logits.device)
    logp = process_logits(logits, params.temperature, params.top_k, params.top_p)  # [R, V]
    if uniforms is None:
        uniforms = torch.rand(logp.shape[0], device=logp.device)
    cdf = logp.exp().cumsum(-1)  # [R, V]
    # strictly above the threshold: a zero-probability token never starts a new CDF step
    threshold = (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(-1)  # [R, 1]
    tokens = torch.searchsorted(cdf, threshold, right=True).squeeze(-1)  # [R]
    tokens = tokens.clamp(max=logp.shape[-1] - 1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def row_uniforms(seeds: list[int], n: int, steps: int, device: torch.device) -> torch.Tensor:
    """[len(seeds) * n, steps] uniforms in [0, 1): sample j of prompt i reads row i * n + j, a
    stream that depends only on (seeds[i], j)."""
    rows = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed) % (2**63))
        rows.append(torch.rand(n, steps, generator=generator, dtype=torch.float64))
    return torch.cat(rows).to(device)


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` during 5.x; pick what forward takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class HFGenerator:
    """``Generator`` over a ``transformers`` causal LM that shares the policy's module.

    max_batch_rows: at most this many rows (prompts x n) decode together; bounds memory
        (None = all prompts in one batch).
    compact_fraction: drop finished rows from the batch (and the KV cache) once they are at
        least this fraction of it. A compaction copies the cache once, about what one decode
        step of ``DynamicCache`` growth costs, so the default (0: compact as soon as any row
        finishes) measured fastest on CPU and GPU (benchmarks/generation.py); >1 never compacts.
    """

    # its log-probs are the trainer's own forward (to 1e-4, tests/test_rollout.py), so online RL
    # may use them as pi_old and needs no importance-sampling correction
    exact_sampler = True

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        max_batch_rows: int | None = None,
        compact_fraction: float = 0.0,
    ) -> None:
        if max_batch_rows is not None and max_batch_rows < 1:
            raise PosttrainError(f"HFGenerator: max_batch_rows={max_batch_rows} must be >= 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self.compact_fraction = compact_fraction
        self._cache_kw = _cache_kwarg(model)

    def update_weights(self, model: torch.nn.Module) -> None:
        """No copy needed: we sample from the very module the optimiser updates."""
        self.model = model
        self._cache_kw = _cache_kwarg(model)

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> Rollout:
        """Sample ``params.n`` completions per prompt; rows come back prompt-major. ``seeds``:
        one per prompt (default ``params.seed + i``); a prompt's completions depend only on its
        own seed (see ``sample_tokens``)."""
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise PosttrainError(
                    f"HFGenerator.generate: prompt {i} has no tokens; every prompt needs at least "
                    "one (apply the chat template with add_generation_prompt=True)."
                )
        stop_ids = resolve_stop_token_ids(params, self.tokenizer, self.model)
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        if pad_id is None:  # the pad value is masked out everywhere; any valid id will do
            pad_id = stop_ids[0] if stop_ids else 0
        if seeds is None:
            base = params.seed if params.seed is not None else int(torch.randint(2**62, ()))
            seeds = [base + i for i in range(len(prompts))]
        if len(seeds) != len(prompts):
            raise PosttrainError(f"HFGenerator.generate: {len(seeds)} seeds for "
                                 f"{len(prompts)} prompts; give one seed per prompt.")

        per_chunk = len(prompts) or 1
        if self.max_batch_rows is not None:
            per_chunk = max(1, self.max_batch_rows // params.n)
        rows: list[tuple[list[int], list[float], str]] = []
        start = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for first in range(0, len(prompts), per_chunk):
                    chunk = prompts[first : first + per_chunk]
                    chunk_seeds = seeds[first : first + per_chunk]
                    rows += self._generate_chunk(chunk, params, stop_ids, pad_id, chunk_seeds)
        finally:
            self.model.train(was_training)
        seconds = time.perf_counter() - start

        completion_ids = [r[0] for r in rows]
        n_tokens = sum(len(c) for c in completion_ids)
        return Rollout(
            prompt_ids=[list(p) for p in prompts for _ in range(params.n)],
            completion_ids=completion_ids,
            completions=self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
            sampler_logprobs=[r[1] for r in rows],
            finish_reasons=[r[2] for r in rows],
            prompt_index=[i for i in range(len(prompts)) for _ in range(params.n)],
            stats={
                "generation_seconds": seconds,
                "generated_tokens": float(n_tokens),
                "tokens_per_second": n_tokens / seconds if seconds > 0 else 0.0,
            },
        )

    def _forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        attention_mask: torch.Tensor,  # [B, past + T]
        position_ids: torch.Tensor,  # [B, T]
        cache: DynamicCache,
    ) -> torch.Tensor:
        """Next-token logits [B, V] at the last position; the cache is extended in place."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,  # the prefill would otherwise build [B, T, V] logits for nothing
            **{self._cache_kw: cache},
        )
        return out.logits[:, -1, :]

    def _generate_chunk(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        stop_ids: list[int],
        pad_id: int,
        seeds: list[int],
    ) -> list[tuple[list[int], list[float], str]]:
        """Decode one batch of prompts; returns (completion ids, log-probs, reason) per row."""
        device = next(self.model.parameters()).device
        n, max_new = params.n, params.max_new_tokens
        n_rows = len(prompts) * n
        p_len = max(len(p) for p in prompts)

        # Prefill each unique prompt once, left-padded so every row's next token is column -1.
        input_ids = torch.full((len(prompts), p_len), pad_id, dtype=torch.long)  # [B, P]
        attention_mask = torch.zeros((len(prompts), p_len), dtype=torch.long)  # [B, P]
        for i, prompt in enumerate(prompts):
            input_ids[i, p_len - len(prompt) :] = torch.tensor(prompt)
            attention_mask[i, p_len - len(prompt) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, P]
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids, attention_mask, position_ids, cache)  # [B, V]

        # Then fan out: row r = prompt r // n, sample r % n (prompt-major).
        if n > 1:
            logits = logits.repeat_interleave(n, dim=0)  # [R, V]
            attention_mask = attention_mask.repeat_interleave(n, dim=0)  # [R, P]
            cache.batch_repeat_interleave(n)
        next_pos = position_ids[:, -1:].repeat_interleave(n, dim=0) + 1  # [R, 1]

        tokens_out = torch.full((n_rows, max_new), pad_id, dtype=torch.long, device=device)
        logps_out = torch.zeros((n_rows, max_new), dtype=torch.float32, device=device)
        lengths = torch.full((n_rows,), max_new, dtype=torch.long, device=device)  # [R]
        stopped = torch.zeros(n_rows, dtype=torch.bool, device=device)  # [R]
        stop_tensor = torch.tensor(stop_ids, dtype=torch.long, device=device)
        batch_rows = torch.arange(n_rows, device=device)  # [R'] output row of each batch row
        live = torch.ones(n_rows, dtype=torch.bool, device=device)  # [R'] still generating
        uniforms = None if params.greedy else row_uniforms(seeds, n, max_new, device)  # [R, T]

        for step in range(max_new):
            row_u = None if uniforms is None else uniforms[batch_rows, step]  # [R']
            tokens, logps = sample_tokens(logits, params, row_u)  # [R'], [R']
            # Rows that finished earlier but are still in the batch write past their length;
            # the final trim drops that, so no masking (and no host sync) is needed here.
            tokens_out[batch_rows, step] = tokens
            logps_out[batch_rows, step] = logps
            hit = live & torch.isin(tokens, stop_tensor)  # [R']
            hit_rows = torch.zeros_like(stopped).index_put_((batch_rows,), hit)  # [R]
            lengths = torch.where(hit_rows, step + 1, lengths)
            stopped = stopped | hit_rows
            live = live & ~hit
            n_live = int(live.sum())  # the loop's one host sync per step
            if step == max_new - 1 or n_live == 0:
                break
            n_dead = live.numel() - n_live
            if n_dead > 0 and n_dead >= self.compact_fraction * live.numel():
                keep = live.nonzero().squeeze(-1)  # [R'']
                cache.batch_select_indices(keep)
                attention_mask, next_pos = attention_mask[keep], next_pos[keep]
                tokens, batch_rows, live = tokens[keep], batch_rows[keep], live[keep]
            attention_mask = torch.cat(
                [attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=-1
            )  # [R', past + 1]
            logits = self._forward(tokens[:, None], attention_mask, next_pos, cache)
            next_pos = next_pos + 1

        tokens_cpu, logps_cpu = tokens_out.cpu(), logps_out.cpu()
        lengths_cpu, stopped_cpu = lengths.cpu().tolist(), stopped.cpu().tolist()
        return [
            (
                tokens_cpu[r, : lengths_cpu[r]].tolist(),
                logps_cpu[r, : lengths_cpu[r]].tolist(),
                "stop" if stopped_cpu[r] else "length",
            )
            for r in range(n_rows)
        ]
