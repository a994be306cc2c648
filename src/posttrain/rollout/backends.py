"""``rollout_backend: hf | paged | vllm``: one ``Generator`` for online RL, built lazily so that
the optional backends cost nothing when unused.

| backend | what                                          | install        | per-prompt seeds | exact pi_old |
|---------|-----------------------------------------------|----------------|------------------|--------------|
| hf      | our decode loop (``hf.py``), default           | -              | yes              | yes          |
| paged   | ``model.generate_batch`` (paged attention,     | transformers   | no (one per call)| no           |
|         | continuous batching, CUDA graphs on GPU)      | >= 5.10        |                  |              |
| vllm    | colocated vLLM engine with sleep/wake          | posttrain[vllm]| yes              | no           |

"exact pi_old": the sampler's log-probs equal the trainer's forward, so they can serve as pi_old
and no importance-sampling correction is needed. For the other two, online RL scores pi_old with
the trainer and weights the policy loss with truncated importance sampling.
"""

from __future__ import annotations

from typing import Any

import torch

from posttrain.errors import ConfigError


def make_generator(config: Any, policy: torch.nn.Module, tokenizer: Any):
    """The configured backend over ``policy`` (the module the optimiser trains)."""
    backend = getattr(config, "rollout_backend", "hf")
    if backend == "hf":
        from posttrain.rollout.hf import HFGenerator

        return HFGenerator(policy, tokenizer, max_batch_rows=config.generation_batch_rows)
    if backend == "paged":
        from posttrain.rollout.paged import PagedGenerator

        return PagedGenerator(policy, tokenizer)
    if backend == "vllm":
        from posttrain.hub import resolve_model
        from posttrain.rollout.vllm import VLLMGenerator

        return VLLMGenerator(
            resolve_model(config.model), policy, tokenizer,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            max_model_len=config.vllm_max_model_len, dtype=config.dtype, seed=config.seed,
            sleep=config.vllm_sleep,
        )
    raise ConfigError(f"rollout_backend={backend!r}: choose hf, paged or vllm.")
