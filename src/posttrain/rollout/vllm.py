"""Rollouts through vLLM, colocated with the trainer (``rollout_backend: vllm``). EXPERIMENTAL.

Written against vLLM's documented offline API (``vllm.LLM``, ``SamplingParams``, sleep mode);
this project's machines cannot run vLLM (no GPU here, and its wheels are too large for the GPU
machine we borrow), so only the logic around it is tested, with a stand-in module
(tests/test_rollout_backends.py). docs/distributed.md says what ran and what did not.

One engine per training process, in the process (``distributed_executor_backend=
"external_launcher"`` under torchrun, ``tensor_parallel_size=1``), sharing the GPU with the
trainer through ``gpu_memory_utilization``. Between rollouts the engine sleeps (level 2: weights
and KV cache released) so training gets the memory back; each rollout wakes the weights, pushes
the policy's current weights into them, wakes the KV cache, generates and sleeps again. So the
sampler always has the weights of the latest optimiser step. LoRA policies are merged for the
push (and unmerged after), so vLLM serves plain weights.

vLLM's log-probs (``logprobs_mode="processed_logprobs"``: after temperature and top-k/top-p) are
not the trainer's forward: online RL computes pi_old with the trainer and corrects with
truncated importance sampling (``ops.policy.truncated_importance_weights``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import torch

from posttrain.errors import ConfigError, PosttrainError
from posttrain.rollout.base import Rollout, SamplingParams, resolve_stop_token_ids


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise ConfigError(
            "rollout_backend=vllm needs vLLM: pip install 'posttrain[vllm]' (CUDA GPUs only); "
            "or use rollout_backend=paged (transformers' continuous batching, no extra install)."
        ) from None
    return vllm


def vllm_weight_name(name: str) -> str | None:
    """A policy parameter's name as vLLM's ``load_weights`` expects it (the Hugging Face
    checkpoint name), or None for a parameter vLLM must not receive (LoRA factors: the adapter
    is merged into the base weights before the push). Handles peft's wrapping
    (``base_model.model.``, ``.base_layer``, ``modules_to_save``) and FSDP / activation
    checkpointing wrappers."""
    if "lora_" in name or "original_module" in name:
        return None
    for prefix in ("base_model.model.",):
        if name.startswith(prefix):
            name = name[len(prefix):]
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.",
                    "modules_to_save.default."):
        name = name.replace(wrapper, "")
    return name.replace(".base_layer", "")


def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(vLLM name, tensor) of every parameter of ``model`` (tied ones once; buffers such as
    rotary frequencies are vLLM's own); a peft model must be merged first. Parameters are read
    with ``named_parameters``: inside ``gathered_for_generation`` they are full tensors even
    under FSDP / ZeRO-3."""
    seen: set[str] = set()
    for name, tensor in model.named_parameters():
        target = vllm_weight_name(name)
        if target is None or target in seen:
            continue
        seen.add(target)
        yield target, tensor.detach()


def to_rollout(outputs: list, prompts: list[list[int]], params: SamplingParams, tokenizer,
               seconds: float) -> Rollout:
    """vLLM ``RequestOutput``s (one per prompt, ``params.n`` samples each) as a Rollout. The
    sampled token's log-prob is looked up by token id (vLLM returns it among ``logprobs=0``'s
    entries); greedy rows get 0.0 (a point mass), as everywhere in posttrain."""
    completion_ids, logprobs, reasons = [], [], []
    for request in outputs:
        for sample in request.outputs:
            ids = list(sample.token_ids)
            completion_ids.append(ids)
            if params.greedy:
                logprobs.append([0.0] * len(ids))
            else:
                logprobs.append([float(step[token].logprob)
                                 for token, step in zip(ids, sample.logprobs)])
            reasons.append("stop" if sample.finish_reason == "stop" else "length")
    n_tokens = sum(len(c) for c in completion_ids)
    return Rollout(
        prompt_ids=[list(p) for p in prompts for _ in range(params.n)],
        completion_ids=completion_ids,
        completions=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        sampler_logprobs=logprobs,
        finish_reasons=reasons,
        prompt_index=[i for i in range(len(prompts)) for _ in range(params.n)],
        stats={"generation_seconds": seconds, "generated_tokens": float(n_tokens),
               "tokens_per_second": n_tokens / seconds if seconds > 0 else 0.0},
    )


class VLLMGenerator:
    """``Generator`` over a colocated ``vllm.LLM``; see the module docstring."""

    exact_sampler = False

    def __init__(self, model_path: str, model: torch.nn.Module, tokenizer: Any,
                 gpu_memory_utilization: float = 0.3, max_model_len: int | None = None,
                 dtype: str = "auto", seed: int = 0, sleep: bool = True):
        vllm = import_vllm()
        if not torch.cuda.is_available():
            raise ConfigError("rollout_backend=vllm needs a CUDA GPU; on CPU use "
                              "rollout_backend=hf.")
        from posttrain.train.distributed import ranks

        here = ranks()
        kwargs: dict[str, Any] = dict(
            model=model_path, tensor_parallel_size=1,
            gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
            seed=seed + here.rank,  # each engine draws its own samples
            enable_sleep_mode=sleep, logprobs_mode="processed_logprobs",
            max_num_batched_tokens=4096,
        )
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if here.world > 1:  # one engine per torchrun process, inside that process
            kwargs["distributed_executor_backend"] = "external_launcher"
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.llm = vllm.LLM(**kwargs)
        self.vllm = vllm
        self.model = model
        self.tokenizer = tokenizer
        self.sleep_between = sleep
        self.asleep = False
        if sleep:
            self._sleep()

    # --- weights ---------------------------------------------------------------------------
    def _loader(self):
        """The engine's model, whose ``load_weights`` takes (name, tensor) pairs (the path
        TRL uses for a colocated engine)."""
        try:
            return self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            raise PosttrainError(
                "this vLLM version does not expose llm_engine.model_executor.driver_worker."
                "model_runner.model; posttrain's colocated weight sync needs it. Use a vLLM "
                "release that does (0.10-0.11 era) or rollout_backend=paged."
            ) from None

    def update_weights(self, model: torch.nn.Module) -> None:
        """Sample from ``model``'s current weights from now on: pushed at once when the
        engine is awake, else on the next wake (a level-2 sleep discards the weights anyway)."""
        self.model = model
        if not self.asleep:
            self._push()

    def _push(self) -> None:
        """Copy every policy weight into the engine; LoRA merged for the copy, then unmerged."""
        model = self.model
        merged = hasattr(model, "merge_adapter")
        if merged:
            model.merge_adapter()
        try:
            loader = self._loader()
            for name, tensor in policy_weights(model):
                loader.load_weights([(name, tensor)])
        finally:
            if merged:
                model.unmerge_adapter()
        self.llm.reset_prefix_cache()

    def _sleep(self) -> None:
        self.llm.sleep(level=2)  # weights and KV cache released; weights are pushed on wake
        self.asleep = True

    def _wake(self) -> None:
        """Weights first, then the KV cache, so the push never meets a full cache's memory."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
            self._push()
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False

    # --- sampling --------------------------------------------------------------------------
    def sampling_params(self, params: SamplingParams, seed: int | None, stop_ids: list[int]):
        return self.vllm.SamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
            seed=seed, logprobs=0, stop_token_ids=stop_ids, detokenize=False,
        )

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> Rollout:
        """Sample ``params.n`` completions per prompt, one request per prompt with its own seed
        (so vLLM's samples, too, do not depend on batch composition)."""
        if not prompts:
            return Rollout([], [], [], [], [], [])
        stop_ids = resolve_stop_token_ids(params, self.tokenizer, self.model)
        if seeds is None:
            seeds = [None if params.seed is None else params.seed + i for i in range(len(prompts))]
        per_request = [self.sampling_params(params, seed, stop_ids) for seed in seeds]
        start = time.perf_counter()
        self._wake()  # (awake between calls when sleep is off: update_weights pushed already)
        try:
            outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts],
                                        sampling_params=per_request, use_tqdm=False)
        finally:
            if self.sleep_between:
                self._sleep()
        return to_rollout(outputs, prompts, params, self.tokenizer, time.perf_counter() - start)
