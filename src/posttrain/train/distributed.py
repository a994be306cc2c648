"""The data-parallel contract, in one place (used by the loop and every algorithm).

With N processes (``torchrun`` / ``accelerate launch``), one optimiser step is

    effective batch = per_device_batch_size x gradient_accumulation_steps x N

Every process builds the same step batch (the data order is a pure function of seed and step,
``batching.py``) and takes its own share of the micro-batches with :func:`my_share`. The shares
are *even*: every process runs the same number of forward/backward passes, because DDP's
gradient all-reduce, FSDP's parameter all-gathers and DeepSpeed all wait for every process to
arrive. A process with fewer real micro-batches than the others (a ragged last step, or fewer
micro-batches than processes) runs a padding pass: a copy of a real micro-batch whose loss and
metrics count zero. So no process is ever idle or waits forever.

Losses are shares of the whole step (normalised by totals counted over all processes' micro-
batches), metrics are sums and counts (``metrics.py``), and both are summed across processes
before they are logged, once, by process 0; only process 0 writes files.

Online RL splits a round's *prompts* across processes, whole groups on one process, generates and
scores there, and then gathers the scored rollouts (:func:`all_gather_objects`), so that group
statistics, whitening and logged reward means see the whole round, and the training step
afterwards is exactly the one a single process would take.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def use_cpu() -> bool:
    """Run on the CPU: asked for (``ACCELERATE_USE_CPU``, set by ``accelerate launch --cpu``) or
    no accelerator present. Then ``torchrun --nproc_per_node 2`` runs 2 CPU processes (gloo)
    without any flag; accelerate alone would treat each as a lone process."""
    if os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes"):
        return True
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return not accelerator.is_available()
    return not torch.cuda.is_available()


def ranks() -> Ranks:
    """This process's rank and the number of processes. Asks accelerate's process state (which
    starts the process group when a launcher set one up), so an algorithm built before the loop
    already knows the world size its batches are split over."""
    from accelerate import PartialState

    state = PartialState(cpu=use_cpu())
    return Ranks(state.process_index, state.num_processes)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class Share:
    """One slot of a process's share: the item, and whether it counts (padding slots don't)."""

    item: Any
    real: bool = True


def my_share(items: list[T], rank: int, world: int) -> list[Share]:
    """Items ``rank, rank + world, ...`` of ``items``, padded with copies of ``items[0]`` marked
    ``real=False`` so that every process gets ``ceil(len(items) / world)`` slots."""
    if not items:
        return []
    slots = -(-len(items) // world)  # ceil
    mine = [Share(item) for item in items[rank::world]]
    return mine + [Share(items[0], real=False) for _ in range(slots - len(mine))]


def sharded_sum(items: list[T], compute) -> torch.Tensor:
    """``sum(compute(item))`` over all ``items``, each process computing its even share (padding
    slots are computed, so sharded forwards stay in step, and then dropped): e.g. an eval set's
    summed NLL and token count. ``compute`` returns a float64 tensor of sums."""
    here = ranks()
    total: torch.Tensor | None = None
    for slot in my_share(items, here.rank, here.world):
        value = compute(slot.item).detach().double().cpu() * (1.0 if slot.real else 0.0)
        total = value if total is None else total + value
    if total is None:  # no items at all
        raise ValueError("sharded_sum needs at least one item")
    return all_reduce_sum(total)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a copy; float64 on the CPU stays exact for counts). No-op with one."""
    if not is_distributed():
        return tensor
    device = _collective_device()
    out = tensor.to(device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_reduce_max(value: float) -> float:
    if not is_distributed():
        return value
    out = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return float(out)


def all_gather_objects(obj: T) -> list[T]:
    """``[obj of process 0, obj of process 1, ...]`` (picklable Python objects: token lists,
    rewards). One process: ``[obj]``."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
