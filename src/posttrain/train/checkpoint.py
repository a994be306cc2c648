"""Checkpoints that resume exactly: trainable weights, optimiser, scheduler, RNG states, the
step counter (which fixes the data position) and any algorithm state.

Layout: ``output_dir/checkpoints/step-000010/`` with ``trainable.safetensors``,
``optimizer.pt``, ``scheduler.pt``, ``rng.pt``, ``state.json``. Only parameters that require
gradients are saved (for LoRA: just the adapter); frozen weights come from the base model again.
Everything is loaded with ``weights_only=True``: no arbitrary pickle.
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


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().contiguous().cpu()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: dict[str, Any],
    keep: int = 0,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), folder / "trainable.safetensors")
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    torch.save(rng_state(), folder / "rng.pt")
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2))
    if keep > 0:
        old = sorted(p for p in folder.parent.glob("step-*") if p != folder)
        for stale in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
    return folder


def load_checkpoint(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler
) -> dict[str, Any]:
    weights = load_file(folder / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RuntimeError(
            f"{folder}: checkpoint has weights the model lacks ({missing[:3]}...): was it made "
            "with a different model or LoRA setting?"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return json.loads((folder / STATE_FILE).read_text())
