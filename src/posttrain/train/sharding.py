"""Sharded training (FSDP2, DeepSpeed ZeRO) through accelerate: the three places where it shows.

How the run is sharded is accelerate's business (``accelerate launch --config_file
recipes/accelerate/fsdp.yaml ...``); the shared loop calls ``accelerator.prepare`` on the
wrapped model and never looks at a parameter's layout. Sharding shows in only three places:

1. **Starting** (:func:`make_accelerator`). accelerate picks FSDP only on accelerators: on a CPU
   it silently falls back to plain DDP, and DeepSpeed needs CUDA. Both are told here, before any
   model loads. ``POSTTRAIN_FSDP_ON_CPU=1`` forces accelerate's FSDP2 path on CPU (gloo), which
   torch supports; the tests use it to run the real sharded code without a GPU.
2. **Sampling** (:func:`gathered_for_generation`). Generation calls the policy one token at a
   time, a different number of times on each process. Sharded layers all-gather their weights in
   every forward, which would need every process in step; so for the rollout the weights are
   gathered once (FSDP2 ``unshard`` without resharding after forward; ZeRO-3
   ``GatheredParameters``), generation runs on plain tensors, and they are freed afterwards.
3. **Saving** (:class:`StateDicts`, :func:`gather_full`). Process 0 writes a plain Hugging Face
   folder (and checkpoints) from full tensors that every process helped gather.

Frozen models are not sharded: the reference copy and a reward model are full replicas on every
process (they take no gradients or optimiser states, the memory that sharding saves), and PPO's
critic trains, so it is part of the prepared module and sharded with the policy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from posttrain.errors import ConfigError

FSDP_ON_CPU_ENV = "POSTTRAIN_FSDP_ON_CPU"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def check_launch() -> None:
    """Refuse, before any model loads, the launches accelerate would silently downgrade (FSDP
    on a CPU becomes plain DDP) or fail deep inside (DeepSpeed without CUDA)."""
    from posttrain.train.distributed import ranks, use_cpu

    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "DeepSpeed ZeRO was requested (an accelerate config with distributed_type: "
                "DEEPSPEED) but no CUDA GPU is visible: ZeRO-2/3 need CUDA. On CPU use "
                "recipes/accelerate/ddp.yaml (or fsdp.yaml with POSTTRAIN_FSDP_ON_CPU=1)."
            )
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ConfigError("DeepSpeed was requested but is not installed: "
                              "pip install 'posttrain[deepspeed]'") from None
    if (_env_flag("ACCELERATE_USE_FSDP") and use_cpu() and ranks().world > 1
            and not _env_flag(FSDP_ON_CPU_ENV)):
        raise ConfigError(
            "FSDP was requested (an accelerate config with distributed_type: FSDP) but this "
            "run is on the CPU, where accelerate does not shard: it would silently run plain "
            "DDP. Use recipes/accelerate/ddp.yaml here, or set "
            f"{FSDP_ON_CPU_ENV}=1 to force FSDP2 on CPU with gloo (slow; meant for tests)."
        )


def make_accelerator(mixed_precision: str):
    """``accelerate.Accelerator`` for this launch (after :func:`check_launch`)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from posttrain.train.distributed import use_cpu

    check_launch()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=use_cpu())
    if (_env_flag("ACCELERATE_USE_FSDP") and accelerator.num_processes > 1
            and accelerator.distributed_type != DistributedType.FSDP):
        # only reached with POSTTRAIN_FSDP_ON_CPU=1: accelerate's own FSDP2 path, on gloo
        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables of the config
        if mixed_precision != "no":
            plugin.set_mixed_precision(mixed_precision)
        from accelerate import PartialState

        # both states: AcceleratorState re-reads the process state when it is asked again
        PartialState().distributed_type = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    return accelerator


def fsdp_modules(module: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def _zero3_params(module: nn.Module) -> list[torch.nn.Parameter]:
    """Parameters that DeepSpeed ZeRO-3 has partitioned (they carry a ``ds_id``)."""
    return [p for p in module.parameters() if hasattr(p, "ds_id")]


@contextmanager
def gathered_for_generation(module: nn.Module | None) -> Iterator[None]:
    """Inside: every parameter of ``module`` (the prepared root, or any module containing the
    policy) is a full tensor on this process and forwards run no collectives, so each process
    can decode as many steps as it needs. Outside: the weights are sharded again."""
    if module is None:
        yield
        return
    shards = fsdp_modules(module)
    if shards:
        root = shards[0]
        try:  # FSDP needs one forward through its root before its modules are called directly
            root._get_fsdp_state()._lazy_init()
        except (AttributeError, RuntimeError):
            pass
        for shard in shards:
            shard.unshard()
        root.set_reshard_after_forward(False)
        try:
            yield
        finally:
            from accelerate.state import AcceleratorState

            plugin = getattr(AcceleratorState(), "fsdp_plugin", None)
            after = bool(getattr(plugin, "reshard_after_forward", True))
            root.set_reshard_after_forward(after)
            root.set_reshard_after_forward(False, recurse=False)  # FSDP2's default for the root
            for shard in shards:
                shard.reshard()
        return
    partitioned = _zero3_params(module)
    if partitioned:
        import deepspeed

        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
            yield
        return
    yield


def gather_full(value: Any) -> Any:
    """``value`` (a tensor, or dicts / lists of them, e.g. an optimiser state dict) with every
    FSDP2 shard (DTensor) replaced by its full tensor on the CPU. A collective call when there
    are shards: every process gathers; other values pass through unchanged."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.full_tensor().cpu()
    if isinstance(value, dict):
        return {k: gather_full(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(gather_full(v) for v in value)
    return value


def full_state_dict(accelerator: Any, wrapped: nn.Module) -> dict[str, torch.Tensor]:
    """The prepared root's state dict with full tensors (keys of the unwrapped root). Under
    FSDP2 every process gathers layer by layer; ZeRO-3 goes through accelerate (which needs
    ``stage3_gather_16bit_weights_on_model_save: true``); otherwise the live tensors."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.get_state_dict(wrapped)
    root = accelerator.unwrap_model(wrapped)
    state = root.state_dict()
    if not fsdp_modules(root):
        return state
    first: dict[int, str] = {}  # tied weights (one parameter, two names) stay one tensor
    canonical = {name: first.setdefault(id(p), name)
                 for name, p in root.named_parameters(remove_duplicate=False)}
    full: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        source = canonical.get(key, key)
        full[key] = full[source] if source in full else gather_full(value)
    return full


class StateDicts:
    """Full state dicts of the modules inside the prepared root, for saving.

    Built on every process (under sharding, building it is the collective gather; without
    sharding it gathers nothing); ``state_dicts(module)`` is then used on process 0 only and
    returns ``module``'s keys and full tensors, or None when the module's own ``state_dict()``
    is already full (then ``save_pretrained`` reads it itself)."""

    def __init__(self, accelerator: Any, wrapped: nn.Module):
        self.root = accelerator.unwrap_model(wrapped)
        self.sharded = bool(fsdp_modules(self.root) or _zero3_params(self.root))
        self.full = full_state_dict(accelerator, wrapped) if self.sharded else None

    def __call__(self, module: nn.Module) -> dict[str, torch.Tensor] | None:
        if not self.sharded:
            return None
        prefix = next((name for name, m in self.root.named_modules() if m is module), None)
        if prefix is None:
            raise ValueError(f"{type(module).__name__} is not part of the trained module")
        start = f"{prefix}." if prefix else ""
        return {k[len(start):]: v for k, v in (self.full or {}).items() if k.startswith(start)}


def no_split_modules(*models: nn.Module) -> list[str]:
    """The decoder-layer class names of wrapped Hugging Face models (``_no_split_modules``),
    which accelerate's FSDP auto-wrap policy reads from the prepared root module."""
    names: list[str] = []
    for model in models:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        for name in getattr(base, "_no_split_modules", None) or []:
            if name not in names:
                names.append(name)
    return names


def is_deepspeed(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def deepspeed_backward(engine: Any, loss: torch.Tensor, last: bool) -> None:
    """Backward under DeepSpeed, with the loop's own accumulation: the engine must not divide
    the loss by its gradient_accumulation_steps (our shares are already normalised by the
    whole step) and must step exactly after the step's last micro-batch (``last``), also when a
    ragged step has fewer micro-batches. EXPERIMENTAL: written against DeepSpeed's documented
    engine API (set_gradient_accumulation_boundary, backward(scale_wrt_gas=...), step); not run
    here, as ZeRO needs CUDA."""
    engine.set_gradient_accumulation_boundary(last)
    engine.backward(loss, scale_wrt_gas=False)
    if last:
        engine.step()  # clips (the config's gradient_clipping), steps AdamW, zeroes grads
