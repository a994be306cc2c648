"""Checkpoints that resume exactly: trainable weights, optimiser, scheduler, RNG states, the
step counter (which fixes the data position) and any algorithm state.

Layout: ``output_dir/checkpoints/step-000010/`` with ``trainable.safetensors``,
``optimizer.pt``, ``scheduler.pt``, ``rng.pt``, ``state.json``. Only parameters that require
gradients are saved (for LoRA: just the adapter); frozen weights come from the base model again.
Everything is loaded with ``weights_only=True``: no arbitrary pickle.

Checkpoints do not depend on the number of processes: weights and optimiser states are *full*
(gathered from every process under FSDP) and keyed by parameter name (torch's
``get_optimizer_state_dict`` with ``full_state_dict``), so a run written by 2 processes resumes
on 1 or 4, sharded or not. Saving and loading are collective calls: every process calls them,
process 0 writes. (DeepSpeed keeps its own per-process format, written by its engine: those
checkpoints resume on the same number of processes only.)
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """Newest complete checkpoint (state.json is written last, so its presence = complete)."""
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).exists()) if root.exists() else []
    return done[-1] if done else None


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(list(_flatten_python_state(random.getstate())), dtype=torch.int64),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": torch.tensor(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _flatten_python_state(state) -> list[int]:
    version, internal, gauss = state
    return [version, *internal, 0 if gauss is None else 1]


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    values = state["python"].tolist()
    random.setstate((values[0], tuple(values[1:-1]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def trainable_names(root: torch.nn.Module) -> set[str]:
    return {name for name, p in root.named_parameters() if p.requires_grad}


def _is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def save_checkpoint(
    folder: Path,
    accelerator,
    wrapped: torch.nn.Module,
    optimizer,
    scheduler,
    state: dict[str, Any],
    keep: int = 0,
) -> Path:
    """Gather (every process) and write (process 0) one checkpoint of the prepared module."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from posttrain.train.sharding import full_state_dict, gather_full

    root = accelerator.unwrap_model(wrapped)
    names = trainable_names(root)
    full = full_state_dict(accelerator, wrapped)  # a gather under sharding
    if _is_deepspeed(accelerator):
        wrapped.save_checkpoint(str(folder / "deepspeed"))  # its own per-process files
        optim_state = None
    else:  # keyed by parameter name; shards gathered into full tensors
        optim_state = gather_full(get_optimizer_state_dict(root, _inner(optimizer)))
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous().cpu() for k, v in full.items() if k in names}
        save_file(weights, folder / "trainable.safetensors")
        if optim_state is not None:
            torch.save(_to_cpu(optim_state), folder / "optimizer.pt")
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
        torch.save(rng_state(), folder / "rng.pt")
        (folder / STATE_FILE).write_text(json.dumps(state, indent=2))
        if keep > 0:
            old = sorted(p for p in folder.parent.glob("step-*") if p != folder)
            for stale in old[: max(0, len(old) - (keep - 1))]:
                shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def load_checkpoint(folder: Path, accelerator, wrapped: torch.nn.Module, optimizer,
                    scheduler) -> dict[str, Any]:
    """Every process reads the full files and keeps its own share (FSDP) or all of it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    root = accelerator.unwrap_model(wrapped)
    weights = load_file(folder / "trainable.safetensors")
    names = trainable_names(root)
    unknown = sorted(set(weights) - names)
    if unknown:
        raise RuntimeError(
            f"{folder}: checkpoint has trainable weights this run lacks ({unknown[:3]}...): was "
            "it made with a different model, LoRA setting or algorithm (or an older posttrain)?"
        )
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(root, weights, options=options)
    if _is_deepspeed(accelerator):
        wrapped.load_checkpoint(str(folder / "deepspeed"), load_module_strict=False)
    else:
        optim_state = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
        set_optimizer_state_dict(root, _inner(optimizer), optim_state, options=options)
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return json.loads((folder / STATE_FILE).read_text())


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _inner(optimizer):
    """The torch optimiser inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
