"""Direct Preference Optimisation: learn from (prompt, chosen, rejected) without a reward model.

Rafailov et al. 2023, eq. 7, for pairs (x, y_w, y_l):

    L(theta) = -E [ log sigma( beta log pi_theta(y_w|x)/pi_ref(y_w|x)
                              - beta log pi_theta(y_l|x)/pi_ref(y_l|x) ) ]

where log pi(y|x) = sum_t log pi(y_t | x, y_<t) over the response tokens. Variants (cDPO, IPO,
hinge, robust; see ``ops/preference.py``) can be combined with ``loss_weights``, and
``sft_weight`` adds RPO's NLL on the chosen response (Pang et al. 2024: -log pi(y_w|x) / |y_w|).

Both responses of every pair go through the policy in ONE forward pass (chosen rows, then
rejected rows: a [2B, T] batch). Where the reference log-probs come from is ``reference``:

- ``copy``: a separate frozen model (eval mode, no grad) on the same device: 1x extra weights.
- ``adapter``: under LoRA, the policy itself with its adapter switched off: no extra memory.
- ``precomputed``: computed once before training (with the copy, or the adapter switched off),
  cached on disk (safetensors) keyed by the reference weights and the exact token ids; the
  reference model is then freed, so none is in memory while training.
- ``none``: reference-free (log pi_ref := 0).

Each micro-batch returns its share sum(pair losses) / (pairs in the step), so gradient
accumulation is exact (1 x 4 == 4 x 1). Prompt tokens are masked in both sequences.
"""

from __future__ import annotations

import copy
import gc
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from posttrain.algorithms.pairs import (
    PairTrainer,
    TokenizedPair,
    cache_path,
    collate_pairs,
    parameters_fingerprint,
    read_cache,
    response_logps,
    weights_fingerprint,
    write_cache,
)
from posttrain.config import TrainConfig, option
from posttrain.errors import ConfigError
from posttrain.models import (
    add_lora,
    is_peft,
    load_causal_lm,
    load_policy,
)
from posttrain.ops.preference import DPO_LOSS_TYPES, combined_dpo_loss
from posttrain.train.batching import split_micro
from posttrain.train.distributed import all_gather_objects, barrier, my_share, ranks
from posttrain.train.forward import TokenLogprobs

REF_CACHE_ENV = "POSTTRAIN_REF_CACHE"


@dataclass
class DPOConfig(TrainConfig):
    learning_rate: float = option(
        1e-6,
        "Peak AdamW learning rate. DPO wants small steps: ~5e-7..1e-6 for full fine-tunes, "
        "~5e-6..5e-5 for LoRA; the recipes set it explicitly.",
    )
    beta: float = option(
        0.1, "beta of eq. 7: strength of the implicit KL penalty to the reference (0.01..0.5)."
    )
    loss_type: list[str] = option(
        ["sigmoid"],
        f"DPO loss variant(s), any of {list(DPO_LOSS_TYPES)}; several are summed with "
        "loss_weights (e.g. [sigmoid, ipo]).",
    )
    loss_weights: list[float] | None = option(
        None, "One weight per loss_type (default 1.0 each)."
    )
    label_smoothing: float = option(
        0.0, "Assumed probability that a label is flipped (cDPO / robust DPO); 0 = plain DPO."
    )
    sft_weight: float = option(
        0.0, "RPO: add this weight x NLL of the chosen response (per-token mean). 0 = off."
    )
    reference: Literal["auto", "copy", "adapter", "precomputed", "none"] = option(
        "auto",
        "Reference log-probs: copy (frozen copy of the model), adapter (LoRA: adapter "
        "disabled, no extra memory), precomputed (once before training, cached on disk, "
        "reference freed), none (reference-free). auto = adapter under LoRA, else copy.",
    )
    ref_model: str | None = option(
        None, "Reference model name/folder; default: the starting policy (`model`)."
    )
    ref_cache_dir: str | None = option(
        None,
        f"Folder for precomputed reference log-probs; default ${REF_CACHE_ENV} or "
        "~/.cache/posttrain/ref_logprobs. Files are keyed by weights + token ids (safe to share).",
    )

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}; 0.1 is the usual value.")
        unknown = [t for t in self.loss_type if t not in DPO_LOSS_TYPES]
        if not self.loss_type or unknown:
            raise ConfigError(f"loss_type {self.loss_type}: choose from {list(DPO_LOSS_TYPES)}.")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ConfigError(
                f"loss_weights {self.loss_weights} needs one weight per loss_type {self.loss_type}."
            )
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}.")
        if self.sft_weight < 0:
            raise ConfigError(f"sft_weight must be >= 0, got {self.sft_weight}.")
        if self.reference == "adapter" and not self.use_lora:
            raise ConfigError("reference=adapter needs use_lora=true (the reference is the "
                              "model with its LoRA adapter switched off); or use reference=copy.")
        if self.reference == "adapter" and self.ref_model:
            raise ConfigError("reference=adapter uses the policy's own base weights; it cannot "
                              f"use ref_model={self.ref_model!r}. Use reference=copy.")


def reference_source(config: DPOConfig) -> Literal["copy", "adapter"] | None:
    """Which network computes the reference: a frozen copy, the adapter-less policy, or none."""
    if config.reference == "none":
        return None
    if config.reference == "adapter" or (
        config.reference in ("auto", "precomputed") and config.use_lora and not config.ref_model
    ):
        return "adapter"
    return "copy"


# --- the algorithm ------------------------------------------------------------------------------


class DPO(PairTrainer):
    console_keys = ("loss", "rewards/accuracy", "rewards/margins")

    def __init__(self, config: DPOConfig, model=None, tokenizer=None):
        super().__init__(config, tokenizer)
        c = config
        self.model_given = model is not None
        if model is None:
            model = load_policy(c, self.tokenizer)
        elif c.use_lora and not is_peft(model):
            model = add_lora(model, c)
        self.model = model
        self.source = reference_source(c)
        self.ref_model: nn.Module | None = None
        self.accelerator = None
        self.wrapped: nn.Module | None = None

    def attach(self, wrapped, accelerator) -> None:
        """Place the reference: load the copy (a full replica on every process, also under
        FSDP: it has no gradients or optimiser states to shard), or precompute and free it."""
        self.accelerator, self.device, self.wrapped = accelerator, accelerator.device, wrapped
        if self.config.reference == "precomputed":
            self.precompute()
        elif self.source == "copy":
            self.ref_model = self.load_reference().to(self.device)

    # --- the loss ------------------------------------------------------------------------------
    def pair_losses(self, policy: nn.Module, batch: dict[str, torch.Tensor]):
        """Per-pair loss [B] (differentiable) and per-pair statistics for logging."""
        c = self.config
        n = batch["input_ids"].shape[0] // 2
        ref = self.reference_logps(batch, policy)  # [2B] or None; before the policy (memory)
        logps, lengths = response_logps(policy, batch)  # [2B], [2B]
        out = combined_dpo_loss(
            logps[:n], logps[n:],
            None if ref is None else ref[:n], None if ref is None else ref[n:],
            beta=c.beta, loss_types=c.loss_type, loss_weights=c.loss_weights,
            label_smoothing=c.label_smoothing,
            chosen_lengths=lengths[:n], rejected_lengths=lengths[n:],
        )
        per_pair = out.losses  # [B]
        stats = {
            "rewards/chosen": out.chosen_rewards,
            "rewards/rejected": out.rejected_rewards,
            "rewards/margins": out.reward_margins,
            "rewards/accuracy": out.reward_accuracies,
            "logps/chosen": logps[:n].detach(),
            "logps/rejected": logps[n:].detach(),
        }
        if c.sft_weight > 0:
            nll = -logps[:n] / lengths[:n].clamp(min=1)  # [B] per-token NLL of the chosen
            per_pair = per_pair + c.sft_weight * nll
            stats["nll"] = nll.detach()
        return per_pair, stats

    # --- the reference -------------------------------------------------------------------------
    def reference_logps(self, batch: dict[str, torch.Tensor],
                        policy: nn.Module | None = None) -> torch.Tensor | None:
        if self.source is None:
            return None
        if self.config.reference == "precomputed":
            if "ref_logps" not in batch:
                raise RuntimeError("reference=precomputed but the batch has no ref_logps: "
                                   "attach() (which precomputes them) was not called.")
            return batch["ref_logps"]
        with torch.no_grad(), self.reference_network(policy) as ref:
            return response_logps(ref, batch)[0]

    @contextmanager
    def reference_network(self, policy: nn.Module | None = None):
        """A TokenLogprobs for the reference: the frozen copy, or the policy with its adapter
        disabled (in eval mode, so dropout is off as it would be for a separate copy). The
        adapter-less pass goes through ``policy``, the prepared (DDP / FSDP) module when given,
        so that sharded weights are gathered as in any forward."""
        autocast = self.accelerator.autocast() if self.accelerator is not None else nullcontext()
        if self.source == "adapter":
            was_training = self.model.training
            self.model.eval()
            try:
                with self.model.disable_adapter(), autocast:
                    yield policy if policy is not None else TokenLogprobs(self.model)
            finally:
                self.model.train(was_training)
        else:
            if self.ref_model is None:
                raise RuntimeError("no reference model loaded (attach() was not called).")
            with autocast:
                yield TokenLogprobs(self.ref_model)

    def load_reference(self) -> nn.Module:
        """The frozen reference copy: ``ref_model`` or ``model`` loaded again, or (when a model
        object was passed in) a deep copy of it with any LoRA adapter merged."""
        c = self.config
        if c.ref_model or not self.model_given:
            ref = load_causal_lm(c.ref_model or c.model, c.dtype, c.attn_implementation,
                                 c.trust_remote_code)
        else:
            ref = copy.deepcopy(self.model)
            if is_peft(ref):
                ref = ref.merge_and_unload()
        ref.eval().requires_grad_(False)
        return ref

    # --- precomputed reference log-probs ---------------------------------------------------
    def precompute(self) -> None:
        """Fill ``ref_logps`` of every train/eval pair from the disk cache, computing what is
        missing (every process its share, then gathered; process 0 writes the cache);
        afterwards no reference model is held."""
        sets = [(p, spec) for p, spec in ((self.train_pairs, self.config.train_data),
                                          (self.eval_pairs, self.config.eval_data)) if p]
        fingerprint = self.reference_fingerprint()
        for pairs, spec in sets:
            path = cache_path(self.cache_dir(), fingerprint, pairs)
            values = read_cache(path, len(pairs))
            barrier()  # every process has looked before process 0 may write
            if any(all_gather_objects(values is None)):
                if self.source == "copy" and self.ref_model is None:
                    self.ref_model = self.load_reference().to(self.device)
                values = self.compute_reference(pairs)
                if ranks().is_main:
                    write_cache(path, values, {"reference": fingerprint, "data": str(spec)})
            for pair, chosen, rejected in zip(pairs, values[0].tolist(), values[1].tolist()):
                pair.ref_logps = (chosen, rejected)
        self.ref_model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.no_grad()
    def compute_reference(self, pairs: list[TokenizedPair]) -> torch.Tensor:
        """[2, N] reference log-probs (chosen row 0, rejected row 1); each process scores its
        share of the chunks, and the results are gathered on all of them."""
        here = ranks()
        chunks = list(enumerate(split_micro(pairs, self.config.per_device_batch_size)))
        mine: list[tuple[int, torch.Tensor]] = []
        for slot in my_share(chunks, here.rank, here.world):
            index, chunk = slot.item
            batch = {k: v.to(self.device) for k, v in collate_pairs(chunk, self.pad_id).items()}
            batch.pop("ref_logps", None)
            with self.reference_network(self.wrapped) as ref:
                logps = response_logps(ref, batch)[0].float().cpu()  # [2b]
            if slot.real:
                mine.append((index, logps))
        scored = dict(item for part in all_gather_objects(mine) for item in part)
        chosen = [scored[i][: len(chunk)] for i, chunk in chunks]
        rejected = [scored[i][len(chunk):] for i, chunk in chunks]
        return torch.stack([torch.cat(chosen), torch.cat(rejected)])

    def reference_fingerprint(self) -> str:
        c = self.config
        if c.ref_model or not self.model_given:
            ident = weights_fingerprint(c.ref_model or c.model)
        else:
            ident = parameters_fingerprint(self.model)
        return f"{ident}|source={self.source}|dtype={c.dtype}|attn={c.attn_implementation}"

    def cache_dir(self) -> Path:
        default = os.environ.get(REF_CACHE_ENV, "~/.cache/posttrain/ref_logprobs")
        return Path(self.config.ref_cache_dir or default).expanduser()
