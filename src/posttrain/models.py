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


def quiet_transformers() -> None:
    """transformers prints a progress bar per load/save and a LOAD REPORT table for new heads;
    ours is the only progress we want, and posttrain says itself when it adds a head.
    ``POSTTRAIN_VERBOSE=1`` keeps transformers' own messages."""
    import os

    from transformers.utils import logging

    logging.disable_progress_bar()
    if os.environ.get("POSTTRAIN_VERBOSE", "") != "1":
        logging.set_verbosity_error()


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

    quiet_transformers()
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
               state_dict: dict | None = None, base_name: str | None = None) -> Path:
    """Save in the Hugging Face layout: full weights, or the LoRA adapter (+ `merged/` on
    request, the adapter folded into the base weights, loadable without peft).

    ``state_dict``: the model's full weights when its parameters are sharded (FSDP / ZeRO-3,
    gathered by ``train.sharding.StateDicts``); None = the model's own ``state_dict()``.
    ``base_name``: what an adapter records as its base (``adapter_config.json``'s
    ``base_model_name_or_path``): the name trained from (a hub id or a posttrain alias), not
    this machine's cache path, so the folder is portable."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    generation = getattr(model, "generation_config", None)
    if is_peft(model):
        base = model.get_base_model()
        generation = getattr(base, "generation_config", generation)
        if base_name:
            _record_base(folder / "adapter_config.json", base_name)
    if generation is not None and not (folder / "generation_config.json").exists():
        generation.save_pretrained(folder)  # adapters too: chat and serving read it
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


def _record_base(adapter_config: Path, base_name: str) -> None:
    import json

    data = json.loads(adapter_config.read_text())
    data["base_model_name_or_path"] = base_name
    adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_trained(folder: str | Path, dtype: str = "auto"):
    """A causal LM that posttrain saved: full weights, a LoRA adapter (its base resolved the
    way posttrain resolves names, aliases included), or a checkpoint folder
    (``checkpoints/step-N``: the run's base model with the checkpoint's trained weights)."""
    folder = Path(resolve_model(str(folder)))
    if (folder / "manifest.json").exists() and (folder / "trainable.safetensors").exists():
        return load_checkpoint_model(folder, dtype)
    adapter = folder / "adapter_config.json"
    if adapter.exists():
        import json

        from peft import PeftModel

        base_name = json.loads(adapter.read_text())["base_model_name_or_path"]
        base = load_causal_lm(base_name, dtype)
        return PeftModel.from_pretrained(base, folder)
    return load_causal_lm(str(folder), dtype)


def tokenizer_name(name: str) -> str:
    """Where a saved model's tokenizer is: the folder itself, or, for a checkpoint folder
    (which holds weights only), the run's tokenizer / model."""
    import json

    folder = Path(name)
    manifest = folder / "manifest.json"
    if folder.is_dir() and manifest.exists() and not (folder / "tokenizer_config.json").exists():
        config = json.loads(manifest.read_text()).get("config", {})
        return config.get("tokenizer") or config["model"]
    return name


def load_checkpoint_model(folder: Path, dtype: str = "auto"):
    """The policy at a checkpoint: base model (and LoRA adapter) as in the run's recorded
    config, then the checkpoint's trained weights on top."""
    import json

    from safetensors.torch import load_file

    manifest = json.loads((folder / "manifest.json").read_text())
    config = manifest.get("config", {})
    trainer = manifest.get("state", {}).get("trainer", "")
    if trainer == "RewardModelTrainer":
        raise PosttrainError(f"{folder} is a reward-model checkpoint; the finished run's folder "
                             "loads as a reward model (posttrain score --model <output_dir>).")
    prefix = "actor.model." if trainer == "PPO" else "model."
    model = load_causal_lm(config["model"], dtype, trust_remote_code=config.get(
        "trust_remote_code", False))
    if config.get("use_lora"):
        from types import SimpleNamespace

        model = add_lora(model, SimpleNamespace(**{k: config[k] for k in (
            "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "seed")},
            gradient_checkpointing=False))
    weights = {k[len(prefix):]: v for k, v in load_file(folder / "trainable.safetensors").items()
               if k.startswith(prefix)}
    missing = set(weights) - {name for name, _ in model.named_parameters()}
    if missing:
        raise PosttrainError(f"{folder}: its weights do not fit {config['model']} "
                             f"({sorted(missing)[:3]}...)")
    model.load_state_dict(weights, strict=False)
    return model.eval()
