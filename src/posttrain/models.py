"""Loading and saving models: policy, reference, LoRA, tokenizer.

Names go through :func:`posttrain.hub.resolve_model` (hub id, local folder, or an alias such as
``smollm2-135m-instruct`` / ``random:tiny``). Outputs are saved with ``save_pretrained``
(safetensors, Hugging Face layout) so they load unchanged in transformers, vLLM and the hub.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from posttrain.config import TrainConfig
from posttrain.errors import ConfigError, PosttrainError
from posttrain.hub import resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(name: str) -> torch.dtype:
    """'auto' = bfloat16 on a GPU that supports it, else float32 (CPUs here have no fast bf16:
    ~0.3 GFLOP/s bf16 vs ~100 GFLOP/s fp32 measured)."""
    if name != "auto":
        return DTYPES[name]
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _quiet_transformers() -> None:
    """transformers prints a progress bar per load/save; ours is the only one we want."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolve_model(name), trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise PosttrainError(f"could not load the tokenizer {name!r}: {err}") from None
    if tokenizer.pad_token is None:
        # No pad token: reuse eos for padding. Safe here because loss masks come from the chat
        # template, never from pad ids (see data/tokenize.py).
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise PosttrainError(
            f"tokenizer {name!r} has no chat template; posttrain trains chat models. Use an "
            "instruct model, or set tokenizer.chat_template and save the tokenizer folder."
        )
    return tokenizer


def load_causal_lm(
    name: str,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
):
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    kwargs = {"dtype": pick_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(resolve_model(name), **kwargs)
    except OSError as err:
        raise PosttrainError(f"could not load the model {name!r}: {err}") from None


def load_policy(config: TrainConfig, tokenizer=None):
    """The trainable model: full weights or a LoRA adapter, with gradient checkpointing."""
    model = load_causal_lm(
        config.model, config.dtype, config.attn_implementation, config.trust_remote_code
    )
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and config.max_length > positions:
        raise ConfigError(
            f"max_length={config.max_length} is longer than {config.model}'s "
            f"{positions} positions: set max_length <= {positions}."
        )
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.use_lora:
        model = add_lora(model, config)
    return model


def add_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(config.seed)  # the adapter's initialisation: the same in every process
    try:
        model = get_peft_model(model, lora)
    except ValueError as err:
        raise ConfigError(f"lora_target_modules={targets}: {err}") from None
    if config.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-requiring input
    return model


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def save_model(model, tokenizer, folder: str | Path, merge_lora: bool = False,
               state_dict: dict | None = None) -> Path:
    """Save in the Hugging Face layout: full weights, or the LoRA adapter (+ `merged/` on
    request, the adapter folded into the base weights, loadable without peft).

    ``state_dict``: the model's full weights when its parameters are sharded (FSDP / ZeRO-3,
    gathered by ``train.sharding.StateDicts``); None = the model's own ``state_dict()``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    if is_peft(model) and merge_lora:
        if state_dict is None:
            # merge a copy: merge_and_unload rewrites the modules in place, and the caller's
            # model must stay a peft model (e.g. a final evaluation after saving)
            merged = copy.deepcopy(model).merge_and_unload()
        else:  # sharded weights cannot be merged in place: reload the adapter just written
            merged = load_trained(folder).merge_and_unload()
        merged.save_pretrained(folder / "merged", safe_serialization=True)
        tokenizer.save_pretrained(folder / "merged")
    return folder


def load_trained(folder: str | Path, dtype: str = "auto"):
    """Load a model that posttrain saved: full weights, or base + LoRA adapter."""
    folder = Path(resolve_model(str(folder)))
    if (folder / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(folder, dtype=pick_dtype(dtype))
    return load_causal_lm(str(folder), dtype)
