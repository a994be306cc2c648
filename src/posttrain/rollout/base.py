"""The generation interface that online RL (PPO, GRPO) and rejection sampling talk to.

A trainer only needs three things from a generator: token ids of sampled completions, the
sampler's own log-probs of those tokens (the "old" policy in the PPO/GRPO ratio), and a tensor
layout it can push through the policy in one forward pass. ``Rollout`` carries the first two and
builds the third; ``Generator`` is the protocol a backend (Hugging Face today, vLLM later)
implements, so trainers never depend on a particular backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, runtime_checkable

import torch

from posttrain.errors import ConfigError, PosttrainError


@dataclass
class SamplingParams:
    """How to sample completions.

    n: completions per prompt (GRPO's group size G).
    temperature: logits are divided by it; 0 means greedy (argmax).
    top_p: nucleus sampling, keep the smallest set of tokens whose probability reaches top_p
        (1.0 = off).
    top_k: keep only the k most likely tokens (0 = off).
    max_new_tokens: completion length cap; a row that hits it finishes with reason "length".
    stop_token_ids: a row finishes (reason "stop") right after sampling one of these. ``None``
        means the tokenizer's eos plus the model's ``generation_config.eos_token_id``(s).
    seed: makes sampling reproducible (a private ``torch.Generator``; the global RNG is untouched).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop_token_ids: list[int] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        # Checked here so a bad recipe fails before any model is loaded.
        where = "SamplingParams"
        if self.n < 1:
            raise ConfigError(f"{where}.n={self.n}: need at least one sample per prompt.")
        if self.temperature < 0:
            raise ConfigError(
                f"{where}.temperature={self.temperature}: must be >= 0 (0 means greedy)."
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"{where}.top_p={self.top_p}: must be in (0, 1]; 1.0 turns it off.")
        if self.top_k < 0:
            raise ConfigError(f"{where}.top_k={self.top_k}: must be >= 0; 0 turns it off.")
        if self.max_new_tokens < 1:
            raise ConfigError(f"{where}.max_new_tokens={self.max_new_tokens}: must be >= 1.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class PaddedRollout(TypedDict):
    """One-forward-pass layout of a rollout (see ``Rollout.to_padded_tensors``)."""

    input_ids: torch.Tensor  # [N, P + C] long: left-padded prompt | right-padded completion
    attention_mask: torch.Tensor  # [N, P + C] long: 1 on real tokens
    position_ids: torch.Tensor  # [N, P + C] long: 0 at each row's first real token
    completion_mask: torch.Tensor  # [N, C] float: 1 on real completion tokens
    sampler_logprobs: torch.Tensor  # [N, C] float32: 0 on padding
    prompt_length: int  # P: completion logits are logits[:, P - 1 : -1]


@dataclass
class Rollout:
    """One batch of generated completions; rows are prompt-major (prompt 0's n samples first).

    ``completion_ids`` include the stop token when one was sampled and nothing after it.
    ``sampler_logprobs[i][t]`` is log pi_sampler(completion_ids[i][t] | ...) under the *processed*
    distribution the token was actually drawn from: logits / temperature, then top-k, then top-p,
    renormalised. At temperature 1 with no top-k/top-p this equals the model's log_softmax, which
    makes the PPO/GRPO ratio exactly 1 on the first update. Greedy (temperature 0) samples from a
    point mass, so its log-probs are 0.0.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    completions: list[str]
    sampler_logprobs: list[list[float]]
    finish_reasons: list[str]  # "stop" | "length"
    prompt_index: list[int]  # row -> index of its prompt in the generate() call
    stats: dict[str, float] = field(default_factory=dict)  # timings, token counts (for logs)

    def __len__(self) -> int:
        return len(self.completion_ids)

    def to_padded_tensors(self, pad_id: int, device: torch.device | str = "cpu") -> PaddedRollout:
        """Prompts left-padded to P, completions right-padded to C, in one [N, P + C] tensor.

        Why this layout: every completion starts at column P, so the trainer takes the logits
        that predict completion tokens with one slice, ``logits[:, P - 1 : -1]`` ([N, C, V]), and
        the targets are ``input_ids[:, P:]``. Position ids come from the attention mask's cumsum
        so left padding does not shift the rotary positions (matching what generation used).
        """
        if not self.completion_ids:
            raise PosttrainError("Rollout.to_padded_tensors: the rollout has no rows.")
        n_rows = len(self.completion_ids)
        p_len = max(len(p) for p in self.prompt_ids)
        c_len = max(1, max(len(c) for c in self.completion_ids))
        input_ids = torch.full((n_rows, p_len + c_len), pad_id, dtype=torch.long)  # [N, P+C]
        attention_mask = torch.zeros((n_rows, p_len + c_len), dtype=torch.long)  # [N, P+C]
        completion_mask = torch.zeros((n_rows, c_len), dtype=torch.float32)  # [N, C]
        logprobs = torch.zeros((n_rows, c_len), dtype=torch.float32)  # [N, C]
        for i, (prompt, completion) in enumerate(zip(self.prompt_ids, self.completion_ids)):
            if prompt:
                input_ids[i, p_len - len(prompt) : p_len] = torch.tensor(prompt)
                attention_mask[i, p_len - len(prompt) : p_len] = 1
            if completion:
                input_ids[i, p_len : p_len + len(completion)] = torch.tensor(completion)
                attention_mask[i, p_len : p_len + len(completion)] = 1
                completion_mask[i, : len(completion)] = 1.0
                logprobs[i, : len(completion)] = torch.tensor(self.sampler_logprobs[i])
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [N, P+C]
        return PaddedRollout(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            completion_mask=completion_mask.to(device),
            sampler_logprobs=logprobs.to(device),
            prompt_length=p_len,
        )


def merge_rollouts(
    parts: list[tuple[list[int], Rollout]],
) -> tuple[Rollout, list[tuple[int, int]]]:
    """Rollouts of disjoint sets of prompts (e.g. one per process) back into one, prompt-major
    in the order of the original prompt list. ``parts[k] = (positions, rollout)``: the rollout's
    prompt i is prompt ``positions[i]`` of the whole list. Returns the merged rollout and, for
    each of its rows, ``(k, row)``: where it came from, so per-row data can follow."""
    order = sorted(
        ((positions[r.prompt_index[row]], k, row)
         for k, (positions, r) in enumerate(parts) for row in range(len(r))),
    )  # (prompt position, part, row): a prompt's samples stay in their sampled order
    picked = [(parts[k][1], row) for _, k, row in order]
    merged = Rollout(
        prompt_ids=[r.prompt_ids[i] for r, i in picked],
        completion_ids=[r.completion_ids[i] for r, i in picked],
        completions=[r.completions[i] for r, i in picked],
        sampler_logprobs=[r.sampler_logprobs[i] for r, i in picked],
        finish_reasons=[r.finish_reasons[i] for r, i in picked],
        prompt_index=[position for position, _, _ in order],
    )
    return merged, [(k, row) for _, k, row in order]


@runtime_checkable
class Generator(Protocol):
    """What a trainer needs from a generation backend."""

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> Rollout:
        """Sample ``params.n`` completions for each prompt (token ids, chat template applied).
        ``seeds``: one per prompt, so that a prompt's samples do not depend on which other
        prompts (or processes) share the call, where the backend can promise that."""
        ...

    def update_weights(self, model: torch.nn.Module) -> None:
        """Make the backend sample from ``model``'s current weights (after an optimiser step)."""
        ...


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def resolve_stop_token_ids(
    params: SamplingParams, tokenizer: Any = None, model: Any = None
) -> list[int]:
    """``params.stop_token_ids`` or, when None, tokenizer eos + generation_config eos (deduped).

    Both sources matter: chat models often end a turn with a token (``<|im_end|>``) that only
    the generation config lists, while the tokenizer's eos may be ``<|endoftext|>``.
    """
    if params.stop_token_ids is not None:
        return sorted(set(_as_id_list(params.stop_token_ids)))
    ids = _as_id_list(getattr(tokenizer, "eos_token_id", None))
    generation_config = getattr(model, "generation_config", None)
    ids += _as_id_list(getattr(generation_config, "eos_token_id", None))
    if not ids:
        raise ConfigError(
            "SamplingParams.stop_token_ids is None and neither the tokenizer nor the model's "
            "generation_config has an eos token: pass stop_token_ids explicitly."
        )
    return sorted(set(ids))


def encode_prompts(
    tokenizer: Any, prompts: list[str] | list[list[dict[str, str]]]
) -> list[list[int]]:
    """Chat-template prompts into token ids ending with the assistant generation prompt.

    Each prompt is either a string (sent as one user message) or a list of
    ``{"role": ..., "content": ...}`` messages. In transformers 5,
    ``apply_chat_template(tokenize=True)`` returns a ``BatchEncoding``; both that and a plain
    list are accepted so the helper works across versions.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise PosttrainError(
            "encode_prompts: the tokenizer has no chat_template. Use an instruct/chat "
            "tokenizer, or set tokenizer.chat_template before generating."
        )
    encoded: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and all(
            isinstance(m, dict) and "role" in m and "content" in m for m in prompt
        ):
            messages = prompt
        else:
            raise PosttrainError(
                f"encode_prompts: prompt {i} is {type(prompt).__name__}; expected a string or a "
                "list of {'role': ..., 'content': ...} messages."
            )
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if not isinstance(out, list) else out
        if ids and isinstance(ids[0], list):  # some versions batch a single conversation
            ids = ids[0]
        encoded.append([int(t) for t in ids])
    return encoded
