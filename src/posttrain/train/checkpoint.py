"""Checkpoints that resume exactly and survive crashes, full disks and bit rot.

A checkpoint holds the trainable weights, optimiser, scheduler, RNG states, the step counter
(which fixes the data position) and any algorithm state. Layout:
``output_dir/checkpoints/step-000010/`` with ``trainable.safetensors``, ``optimizer.pt``,
``scheduler.pt``, ``rng.pt`` and ``manifest.json``. Only parameters that require gradients are
saved (for LoRA: just the adapter); frozen weights come from the base model again. Everything is
loaded with ``weights_only=True``: no arbitrary pickle.

**Crash-proof writing.** A checkpoint is written into a hidden temporary folder next to the
others, every file fsynced, then ``manifest.json`` (step, state, config, library versions, and
each file's size and SHA-256) written and fsynced, and the folder renamed into place (atomic on
POSIX) and its parent fsynced. A crash at any moment leaves either the previous checkpoints alone
or a complete new one. A full disk raises ``CheckpointError`` saying so; the partial folder is
removed and the previous checkpoint stays intact. Only the newest ``keep`` are kept, pruned
after a successful write.

**Verified reading.** ``find_resumable`` walks the checkpoints newest first and takes the first
whose manifest parses and whose files have the recorded sizes and checksums, reporting each one
it had to skip (torn, truncated, flipped bits) and why.

**Any number of processes.** Weights and optimiser states are *full* (gathered from every
process under FSDP) and keyed by parameter name (torch's ``get_optimizer_state_dict``), so a run
written by 2 processes resumes on 1 or 4, sharded or not. Saving and loading are collective
calls: every process calls them, process 0 writes. (DeepSpeed keeps its own per-process format,
written by its engine: those checkpoints resume on the same number of processes only.)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from posttrain.errors import PosttrainError

MANIFEST = "manifest.json"
FORMAT = 2


class CheckpointError(PosttrainError):
    """A checkpoint could not be written or read (the message says why and what is intact)."""


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders that reached their final name (each has a manifest), oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / MANIFEST).is_file())


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """Newest checkpoint by name (not verified; ``find_resumable`` verifies)."""
    folders = checkpoint_folders(output_dir)
    return folders[-1] if folders else None


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder.name}: manifest.json unreadable ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{folder.name}: not a format-{FORMAT} posttrain manifest")
    return manifest


def verify(folder: Path) -> dict[str, Any]:
    """The manifest, once every file it lists has its recorded size and SHA-256."""
    manifest = read_manifest(folder)
    for name, info in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder.name}: {name} is missing")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"{folder.name}: {name} has {size} bytes, the manifest says "
                                  f"{info['bytes']} (truncated or rewritten)")
        if _sha256(path) != info["sha256"]:
            raise CheckpointError(f"{folder.name}: {name} does not match its checksum "
                                  "(corrupted on disk)")
    return manifest


def find_resumable(output_dir: str | Path) -> tuple[Path | None, dict[str, Any], list[str]]:
    """(newest checkpoint that verifies, its manifest, why each newer one was skipped)."""
    skipped: list[str] = []
    root = Path(output_dir) / "checkpoints"
    candidates = sorted(root.glob("step-*"), reverse=True) if root.is_dir() else []
    for folder in candidates:
        if not (folder / MANIFEST).is_file():
            skipped.append(f"{folder.name}: no manifest.json (written by an interrupted save, "
                           "or by an older posttrain)")
            continue
        try:
            return folder, verify(folder), skipped
        except CheckpointError as err:
            skipped.append(str(err))
    return None, {}, skipped


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


def versions() -> dict[str, str]:
    import transformers

    from posttrain import __version__

    return {"posttrain": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def save_checkpoint(
    folder: Path,
    accelerator,
    wrapped: torch.nn.Module,
    optimizer,
    scheduler,
    state: dict[str, Any],
    keep: int = 0,
    config: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
) -> Path:
    """Gather (every process) and write (process 0) one checkpoint of the prepared module.
    ``rng``: the RNG states to record (default: the current ones)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from posttrain.train.sharding import full_state_dict, gather_full

    root = accelerator.unwrap_model(wrapped)
    names = trainable_names(root)
    full = full_state_dict(accelerator, wrapped)  # a gather under sharding
    optim_state = None
    if not _is_deepspeed(accelerator):  # keyed by parameter name; shards gathered
        optim_state = gather_full(get_optimizer_state_dict(root, _inner(optimizer)))
    if accelerator.is_main_process:
        weights = {k: v.detach().contiguous().cpu() for k, v in full.items() if k in names}
        contents = {"trainable.safetensors": ("safetensors", weights),
                    "scheduler.pt": ("torch", scheduler.state_dict()),
                    "rng.pt": ("torch", rng if rng is not None else rng_state())}
        if optim_state is not None:
            contents["optimizer.pt"] = ("torch", _to_cpu(optim_state))
        write_atomically(folder, contents, state, config or {}, engine=(
            wrapped if _is_deepspeed(accelerator) else None))
        prune(folder.parent, keep, newest=folder)
    accelerator.wait_for_everyone()
    return folder


def write_atomically(folder: Path, contents: dict[str, tuple[str, Any]], state: dict[str, Any],
                     config: dict[str, Any], engine=None) -> None:
    """Write ``contents`` (name -> (kind, value)) and a manifest into ``folder``, atomically."""
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        files = {}
        for name, (kind, value) in contents.items():
            path = tmp / name
            if kind == "safetensors":
                save_file(value, path)
            else:
                torch.save(value, path)
            _fsync(path)
            files[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        if engine is not None:  # DeepSpeed's own files, outside the manifest's checksums
            engine.save_checkpoint(str(tmp / "deepspeed"))
        manifest = {"format": FORMAT, "step": state["step"], "state": state, "files": files,
                    "config": config, "versions": versions(),
                    "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        _fsync(tmp / MANIFEST)
        _fsync(tmp)
        if folder.exists():  # the same step written again (a resumed run's final checkpoint)
            stale = parent / f".old-{folder.name}-{os.getpid()}"
            os.replace(folder, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, folder)
        _fsync(parent)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(err, parent):
            newest = latest_checkpoint(parent.parent)
            raise CheckpointError(
                f"disk full while writing checkpoint {folder.name} to {parent} "
                f"({shutil.disk_usage(parent).free / 2**20:.0f} MiB free): free some space or "
                f"move output_dir; the previous checkpoint "
                f"{newest.name if newest else '(none)'} is intact."
            ) from None
        raise


def prune(root: Path, keep: int, newest: Path) -> None:
    """Keep the newest ``keep`` checkpoints (0 = all); ``newest`` is never removed."""
    if keep <= 0:
        return
    old = [p for p in checkpoint_folders(root.parent) if p != newest]
    for stale in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(folder: Path, accelerator, wrapped: torch.nn.Module, optimizer,
                    scheduler) -> dict[str, Any]:
    """Every process reads the (verified) files and keeps its own share (FSDP) or all of it.
    Returns the manifest's ``state``."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    manifest = read_manifest(folder)
    root = accelerator.unwrap_model(wrapped)
    try:
        weights = load_file(folder / "trainable.safetensors")
        optim_state = (None if _is_deepspeed(accelerator) else
                       torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu"))
        scheduler_state = torch.load(folder / "scheduler.pt", weights_only=True)
        rng = torch.load(folder / "rng.pt", weights_only=True)
    except Exception as err:  # noqa: BLE001 - verified files that still fail: say which
        raise CheckpointError(f"{folder}: could not be read ({type(err).__name__}: {err})") from None
    names = trainable_names(root)
    unknown = sorted(set(weights) - names)
    if unknown:
        raise CheckpointError(
            f"{folder}: checkpoint has trainable weights this run lacks ({unknown[:3]}...): was "
            "it made with a different model, LoRA setting or algorithm?"
        )
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(root, weights, options=options)
    if optim_state is None:
        wrapped.load_checkpoint(str(folder / "deepspeed"), load_module_strict=False)
    else:
        set_optimizer_state_dict(root, _inner(optimizer), optim_state, options=options)
    scheduler.load_state_dict(scheduler_state)
    set_rng_state(rng)
    return manifest["state"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full(err: BaseException, where: Path) -> bool:
    """ENOSPC / EDQUOT, also when torch or safetensors wrapped it in their own error."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(err).lower()
    if "no space left" in text or "file write failed" in text or "disk quota" in text:
        return True
    try:
        return shutil.disk_usage(where).free < (1 << 20)
    except OSError:
        return False


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
