"""Preference pairs, shared by DPO and reward modelling: tokenised (prompt+chosen,
prompt+rejected) pairs, [2B, T] batches (chosen rows then rejected rows, so both go through the
model in one forward pass), summed response log-probs, the on-disk cache of precomputed
per-pair reference log-probs, and ``PairTrainer``: everything the two trainers share (data,
steps, the loss share, evaluation, saving), so each of them only says how a pair is scored.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from posttrain.config import save_config
from posttrain.data.formats import (
    PreferenceExample,
    SFTExample,
    to_preference_example,
    validate_rows,
)
from posttrain.data.loading import load_rows
from posttrain.data.tokenize import IGNORE_INDEX, TokenizedExample, collate, tokenize_sft
from posttrain.errors import DataError
from posttrain.hub import resolve_model
from posttrain.models import load_tokenizer, save_model
from posttrain.train.batching import split_micro, step_indices, total_steps
from posttrain.train.distributed import ranks
from posttrain.train.loop import StepBatch
from posttrain.train.metrics import sharded_means, stats
from posttrain.train.trainer import Trainer

# --- data: tokenised pairs and [2B, T] batches ------------------------------------------------


@dataclass
class TokenizedPair:
    chosen: TokenizedExample  # prompt + chosen; labels only on the response
    rejected: TokenizedExample  # prompt + rejected (same prompt tokens)
    margin: float | None = None
    ref_logps: tuple[float, float] | None = None  # (chosen, rejected) when precomputed


def tokenize_pair(tokenizer, example: PreferenceExample, max_length: int, where: str = ""):
    """Render prompt+chosen and prompt+rejected; every assistant turn of a response is trained."""
    sides = []
    for response in (example.chosen, example.rejected):
        start = len(example.prompt)
        trained = [start + i for i, m in enumerate(response) if m["role"] == "assistant"]
        sides.append(tokenize_sft(tokenizer, SFTExample(example.prompt + response, trained),
                                  max_length, where))
    return TokenizedPair(sides[0], sides[1], example.margin)


def load_pairs(tokenizer, spec, split: str, subset: str | None, limit: int | None,
               max_length: int, columns: dict | None = None, seed: int = 0
               ) -> list[TokenizedPair]:
    """Validated, tokenised preference pairs. Bad rows raise DataError (file, row, field);
    pairs whose chosen or rejected response is cut away entirely by max_length are dropped
    with one warning giving the counts."""
    rows = load_rows(spec, split, subset, columns, seed).take(limit)
    examples = validate_rows(rows, to_preference_example)
    pairs, truncated, dropped = [], 0, 0
    for example, where in zip(examples, rows.locations):
        pair = tokenize_pair(tokenizer, example, max_length, where)
        truncated += pair.chosen.truncated or pair.rejected.truncated
        if all(t == IGNORE_INDEX for t in pair.chosen.labels) or all(
            t == IGNORE_INDEX for t in pair.rejected.labels
        ):
            dropped += 1
            continue
        pairs.append(pair)
    if truncated:
        warnings.warn(f"{spec}: {truncated} of {len(examples)} pairs exceed max_length="
                      f"{max_length} and were truncated; {dropped} lost a whole response and "
                      "were dropped.", stacklevel=2)
    if not pairs:
        raise DataError(f"{spec}: no pair has response tokens within max_length={max_length}.")
    return pairs


def collate_pairs(pairs: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows: input_ids/attention_mask/labels [2B, T]; plus margin [B]
    when any pair has one (missing -> 0) and ref_logps [2B] when precomputed."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    if any(p.margin is not None for p in pairs):
        batch["margin"] = torch.tensor([float(p.margin or 0.0) for p in pairs])  # [B]
    if all(p.ref_logps is not None for p in pairs):
        batch["ref_logps"] = torch.tensor([p.ref_logps[0] for p in pairs]
                                          + [p.ref_logps[1] for p in pairs])  # [2B]
    return batch


def response_logps(module: nn.Module, batch: dict[str, torch.Tensor]):
    """Summed log-probs of the labelled (response) tokens and their count, per row ([N], [N]).
    Only positions from the earliest response token on go through the output layer."""
    labels = batch["labels"]  # [N, T]
    labelled = (labels != IGNORE_INDEX).any(0).nonzero()
    first = max(int(labelled[0]) if len(labelled) else 1, 1)
    targets = labels[:, first:]  # [N, T - first]
    logps, _ = module(batch["input_ids"], targets.clamp(min=0),
                      attention_mask=batch["attention_mask"])  # [N, T - first]
    mask = (targets != IGNORE_INDEX).to(logps.dtype)
    return (logps * mask).sum(-1), mask.sum(-1)


# --- cache of precomputed reference log-probs -------------------------------------------------


def weights_fingerprint(name: str) -> str:
    """Name + (file, size, mtime) of a local model folder's weights and config; for a hub id,
    the cached snapshot path (it contains the commit hash) when there is one."""
    resolved = resolve_model(name)
    folder = Path(resolved)
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*")
                       if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
        stats = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in files]
        digest = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
        return f"{name}@{digest}"
    from huggingface_hub import try_to_load_from_cache

    snapshot = try_to_load_from_cache(resolved, "config.json")
    return f"{name}@{snapshot if isinstance(snapshot, str) else 'hub'}"


def parameters_fingerprint(model: nn.Module) -> str:
    """Hash of the base weights of an in-memory model (LoRA adapter weights left out)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return f"params@{digest.hexdigest()[:16]}"


def cache_path(folder: Path, fingerprint: str, pairs: list[TokenizedPair]) -> Path:
    """Key = reference fingerprint + the exact token ids and labels of every pair, which covers
    data content, tokenizer, chat template, max_length and row selection at once."""
    digest = hashlib.sha256(fingerprint.encode())
    for pair in pairs:
        for side in (pair.chosen, pair.rejected):
            digest.update(torch.tensor(side.input_ids, dtype=torch.int32).numpy().tobytes())
            digest.update(torch.tensor(side.labels, dtype=torch.int32).numpy().tobytes())
    return folder / f"{digest.hexdigest()[:32]}.safetensors"


def read_cache(path: Path, num_pairs: int) -> torch.Tensor | None:
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        values = load_file(path)["ref_logps"]
    except Exception:  # noqa: BLE001 - an unreadable cache file is recomputed
        return None
    return values if values.shape == (2, num_pairs) else None


def write_cache(path: Path, values: torch.Tensor, info: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    save_file({"ref_logps": values.contiguous()}, tmp, metadata=info)
    os.replace(tmp, path)  # atomic: readers never see a half-written file


# --- the part of a trainer that both pair trainers share ----------------------------------------


class PairTrainer(Trainer):
    """Data, steps, loss shares, evaluation and saving for trainers of preference pairs; a
    subclass sets ``self.model`` and implements ``pair_losses(wrapped, batch) -> (per-pair
    loss [B], {metric: [B]})``."""

    def __init__(self, config, tokenizer=None):
        self.config = c = config
        self.tokenizer = tokenizer or load_tokenizer(c.tokenizer or c.model, c.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id
        self.train_pairs = load_pairs(self.tokenizer, c.train_data, c.train_split, c.data_subset,
                                      c.max_samples, c.max_length, c.columns, c.seed)
        self.eval_pairs = (load_pairs(self.tokenizer, c.eval_data, c.eval_split, c.data_subset,
                                      None, c.max_length, c.columns, c.seed)
                           if c.eval_data is not None else [])
        # effective batch: micro x accumulation x processes (train/distributed.py)
        self.examples_per_step = (c.per_device_batch_size * c.gradient_accumulation_steps
                                  * ranks().world)

    def pair_losses(self, wrapped: nn.Module, batch: dict[str, torch.Tensor]):
        raise NotImplementedError

    def total_steps(self) -> int:
        c = self.config
        return total_steps(len(self.train_pairs), self.examples_per_step, c.num_epochs,
                           c.max_steps)

    def step_batches(self, start_step: int) -> Iterator[StepBatch]:
        c = self.config
        for indices in step_indices(len(self.train_pairs), self.examples_per_step, c.seed,
                                    start_step, shuffle=c.shuffle):
            items = [self.train_pairs[i] for i in indices]
            micro = [collate_pairs(chunk, self.pad_id)
                     for chunk in split_micro(items, c.per_device_batch_size)]
            yield StepBatch(micro, {"pairs": len(items)})

    def loss(self, wrapped, batch: dict, step_batch: StepBatch):
        """This micro-batch's share of the step's mean pair loss, and its statistics."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        per_pair, values = self.pair_losses(wrapped, batch)  # [B], {key: [B]}
        return per_pair.sum() / step_batch.totals["pairs"], stats(values)

    @torch.no_grad()
    def evaluate(self, wrapped) -> dict[str, float]:
        if not self.eval_pairs:
            return {}
        was_training = wrapped.training
        wrapped.eval()

        def pair_stats(chunk: list[TokenizedPair]) -> dict[str, torch.Tensor]:
            batch = {k: v.to(self.device) for k, v in collate_pairs(chunk, self.pad_id).items()}
            per_pair, values = self.pair_losses(wrapped, batch)
            return stats({"loss": per_pair, **values})

        means = sharded_means(split_micro(self.eval_pairs, self.config.per_device_batch_size),
                              pair_stats)
        wrapped.train(was_training)
        return means

    def save(self, output_dir: str, state_dicts=lambda module: None) -> None:
        save_model(self.model, self.tokenizer, output_dir, self.config.merge_lora,
                   state_dict=state_dicts(self.model), base_name=self.config.model)
        save_config(self.config, f"{output_dir}/posttrain_config.yaml")
