"""Typed configs: dataclasses whose every field carries its meaning, loaded from YAML plus
``key=value`` overrides, validated before any model loads.

Each algorithm subclasses :class:`TrainConfig` and adds its own fields. Keys are flat
(``learning_rate=1e-5``, ``lora_r=16``) so that a command-line override and a YAML line look the
same. ``posttrain <algo> --help-config`` prints every field with its default and help text.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from posttrain.errors import ConfigError


def option(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - "help" reads best
    """A dataclass field with a help text (lists/dicts get a default_factory)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class TrainConfig:
    """Fields shared by every algorithm: model, data, optimisation, checkpoints, logging."""

    # --- model ---------------------------------------------------------------------------
    model: str = option(
        "Qwen/Qwen2.5-0.5B-Instruct",
        "Policy model: a hub id, a local folder, or an alias (`posttrain models` lists them).",
    )
    tokenizer: str | None = option(None, "Tokenizer name/folder; default: the model's own.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", "Weight dtype. auto: bfloat16 on a GPU that supports it, float32 on CPU."
    )
    gradient_checkpointing: bool = option(
        False, "Recompute activations in the backward pass: less memory, ~30% more compute."
    )
    attn_implementation: str | None = option(
        None, "transformers attention backend (sdpa, eager, flash_attention_2); None = default."
    )
    trust_remote_code: bool = option(
        False, "Allow model repositories to run their own Python code. Off unless you trust it."
    )
    # --- LoRA (peft) ---------------------------------------------------------------------
    use_lora: bool = option(False, "Train a LoRA adapter instead of all weights (peft).")
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = option(0.05, "Dropout on the LoRA input.")
    lora_target_modules: list[str] = option(
        ["all-linear"], "Modules that get adapters; ['all-linear'] = every linear but the head."
    )
    merge_lora: bool = option(
        False, "At the end, also save the adapter merged into the base weights (`merged/`)."
    )
    # --- data ----------------------------------------------------------------------------
    train_data: Any = option(
        "",
        "Training data: a .jsonl/.json/.parquet/.csv file, a `datasets.save_to_disk` folder, "
        "`hf:org/name` (a hub dataset), a mixture [{path: a.jsonl, weight: 0.7}, {path: "
        "b.jsonl, weight: 0.3}], or (Python API) a list of row dicts or a datasets.Dataset.",
    )
    train_split: str = option("train", "Split to use when train_data is a hub dataset.")
    data_subset: str | None = option(None, "Hub dataset configuration (subset) name.")
    eval_data: Any = option(None, "Evaluation data (same forms as train_data); null = none.")
    columns: dict[str, Any] = option(
        {},
        "Map the data's columns onto posttrain's fields, e.g. {messages: conversations} "
        "(ShareGPT: from/value turns are converted) or {prompt: [instruction, input], "
        "completion: output} (Alpaca: a list joins the non-empty columns with a blank line).",
    )
    chat_template: bool = option(
        True,
        "Wrap text prompts and completions in the tokenizer's chat template. false: train on "
        "the raw text (prompt + completion, EOS appended), as TRL does for non-chat data; "
        "`text` rows are always raw.",
    )
    eval_split: str = option("test", "Split of a hub eval dataset.")
    max_samples: int | None = option(None, "Use only the first N training rows (quick tries).")
    shuffle: bool = option(
        True, "Visit the training rows in a seeded random order each epoch (false: file order)."
    )
    max_length: int = option(
        1024,
        "Maximum tokens per example (prompt + response): SFT, DPO and reward examples are "
        "truncated to it; online-RL prompts that leave less than max_new_tokens are left out "
        "(a warning counts them). At most the model's positions.",
    )
    # --- optimisation --------------------------------------------------------------------
    learning_rate: float = option(2e-5, "Peak AdamW learning rate.")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay.")
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.999, "AdamW beta2.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = option(
        "cosine", "Learning-rate decay after warm-up."
    )
    warmup_ratio: float = option(0.0, "Fraction of the total steps spent warming up linearly.")
    warmup_steps: int = option(0, "Warm-up steps; overrides warmup_ratio when > 0.")
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this (0 = no clipping).")
    per_device_batch_size: int = option(
        8, "Examples per forward/backward pass on each device (the micro-batch)."
    )
    gradient_accumulation_steps: int = option(
        1, "Micro-batches per optimiser step. Effective batch = micro x accumulation x devices."
    )
    num_epochs: float = option(1.0, "Passes over the training data (fractions allowed).")
    max_steps: int = option(-1, "Stop after this many optimiser steps (overrides num_epochs).")
    mixed_precision: Literal["no", "bf16", "fp16"] = option(
        "no", "accelerate autocast for the forward pass (GPU); keep 'no' on CPU."
    )
    seed: int = option(42, "Seed for data order, dropout and sampling.")
    # --- outputs -------------------------------------------------------------------------
    output_dir: str = option("outputs/run", "Folder for the model, checkpoints and metrics.")
    logging_steps: int = option(1, "Write metrics every N optimiser steps.")
    eval_steps: int = option(0, "Evaluate every N steps (0 = only at the end, if eval data).")
    eval_on_start: bool = option(
        False, "Also evaluate before the first step (the baseline of the learning curve)."
    )
    save_steps: int = option(0, "Checkpoint every N steps (0 = only at the end).")
    save_total_limit: int = option(2, "Keep only the newest N checkpoints (0 = keep all).")
    save_final_checkpoint: bool = option(
        False,
        "Also write a checkpoint at the end (with the optimiser state, ~3x the trained weights), "
        "to continue the run later with --resume. The model folder is always written.",
    )
    push_to_hub: bool = option(
        False, "Upload the finished model folder to the Hugging Face hub (needs a token)."
    )
    hub_model_id: str | None = option(
        None, "Hub repository for push_to_hub, 'user/name'; default: output_dir's name."
    )
    hub_private: bool = option(True, "Create the hub repository as private.")
    resume: bool = option(
        False, "Continue from the newest checkpoint in output_dir/checkpoints (--resume)."
    )
    allow_config_change: bool = option(
        False,
        "Resume even though the config differs from the checkpoint's (the differences are "
        "printed); without it such a resume stops. Logging, evaluation and checkpoint cadence "
        "may always change.",
    )
    report_to: list[str] = option([], "Extra metric sinks: 'tensorboard' and/or 'wandb'.")
    run_name: str | None = option(None, "Name for wandb/tensorboard; default: output_dir's name.")
    progress: bool = option(True, "Show a progress bar with ETA on the console.")

    def validate(self) -> None:
        """Cross-field checks that types alone cannot express. Subclasses extend this."""
        if not self.train_data:
            raise ConfigError("train_data is empty: give a data file or `hf:org/name`.")
        if not str(self.output_dir).strip():
            raise ConfigError("output_dir is empty: give a folder for the model, checkpoints "
                              "and metrics (it would otherwise write into the current folder).")
        positive = ["per_device_batch_size", "gradient_accumulation_steps", "max_length",
                    "logging_steps"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("save_steps", "eval_steps", "warmup_steps", "save_total_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = off), got {getattr(self, name)}.")
        for name in ("learning_rate", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}.")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"max_steps must be >= 1, or -1 to train num_epochs epochs; got "
                              f"{self.max_steps}.")
        if self.max_steps == -1 and not (math.isfinite(self.num_epochs) and self.num_epochs > 0):
            raise ConfigError(f"num_epochs must be > 0 (fractions allowed), got {self.num_epochs}.")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples must be >= 1 (or null for all rows), got "
                              f"{self.max_samples}.")
        unknown_sinks = set(self.report_to) - {"tensorboard", "wandb"}
        if unknown_sinks:
            raise ConfigError(
                f"report_to: unknown sink(s) {sorted(unknown_sinks)}; use tensorboard, wandb."
            )


C = TypeVar("C", bound=TrainConfig)


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def describe(cls: type) -> str:
    """Every field with type, default and help: what ``--help-config`` prints."""
    hints = get_type_hints(cls)
    lines = []
    for name, f in config_fields(cls).items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"{name} ({_type_name(hints[name])}, default {default!r})")
        lines.append(f"    {f.metadata.get('help', '')}")
    return "\n".join(lines)


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: list[str] = (),
    values: dict[str, Any] | None = None,
) -> C:
    """YAML file (optional) + a dict of values (Python API) + ``key=value`` overrides -> a
    validated ``cls`` instance. Later sources win.

    Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key, what
    was expected, and (for unknown keys) the closest valid key names.
    """
    given = values or {}
    values = {}
    source = "command line"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of key: value lines.")
        values.update({str(k): (v, str(path)) for k, v in loaded.items()})
    values.update({str(k): (v, "arguments") for k, v in given.items()})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value.")
        key, raw = item.split("=", 1)
        values[key.strip()] = (_parse_override(raw), source)

    fields = config_fields(cls)
    hints = get_type_hints(cls)
    values = translate_aliases(values, fields, cls.__name__)
    kwargs = {}
    for key, (value, where) in values.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key {key!r} for `{cls.__name__}`.{_hint(key, fields)}\n"
                f"Valid keys: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{where}: {key}")
    config = cls(**kwargs)
    config.validate()
    return config


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """The run's config as YAML; in-memory data (a list of rows, a Dataset) is described."""
    plain = {key: _describe_value(getattr(config, key)) if key in ("train_data", "eval_data")
             else value for key, value in to_dict(config).items()}
    Path(path).write_text(yaml.safe_dump(plain, sort_keys=False))


def _describe_value(value: Any) -> Any:
    """Data given as objects (rows, a Dataset) is named, not copied into the YAML; a mixture
    of files stays as written."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(e, dict) and "path" in e for e in value):
        return value  # a mixture spec
    size = len(value) if hasattr(value, "__len__") else "?"
    return f"<in-memory {type(value).__name__} of {size} rows>"


# --- names from other toolkits ---------------------------------------------------------------

def _hf_dataset(value: Any) -> Any:
    """TRL's dataset_name: a hub id, or a local path."""
    if isinstance(value, str) and not value.startswith("hf:") and not Path(value).exists():
        return f"hf:{value}"
    return value


# TRL / transformers TrainingArguments name -> (posttrain key, value conversion)
ALIASES: dict[str, tuple[str, Any]] = {
    "model_name_or_path": ("model", None),
    "dataset_name": ("train_data", _hf_dataset),
    "dataset_config": ("data_subset", None),
    "dataset_train_split": ("train_split", None),
    "dataset_test_split": ("eval_split", None),
    "per_device_train_batch_size": ("per_device_batch_size", None),
    "per_device_eval_batch_size": ("eval_batch_size", None),
    "num_train_epochs": ("num_epochs", None),
    "max_completion_length": ("max_new_tokens", None),
    "max_seq_length": ("max_length", None),
    "use_peft": ("use_lora", None),
    "use_vllm": ("rollout_backend", lambda v: "vllm" if v is True else "hf" if v is False else v),
    "bf16": ("mixed_precision", lambda v: "bf16" if v is True else "no" if v is False else v),
    "fp16": ("mixed_precision", lambda v: "fp16" if v is True else "no" if v is False else v),
    "lr_scheduler_type": ("lr_scheduler", None),
    "torch_dtype": ("dtype", None),
    "num_ppo_epochs": ("num_iterations", None),
    "ppo_epochs": ("num_iterations", None),
    "cliprange": ("epsilon", None),
    "cliprange_value": ("value_clip", None),
    "vllm_importance_sampling_correction": ("importance_sampling_correction", None),
    "vllm_importance_sampling_cap": ("importance_sampling_cap", None),
}
# names with no counterpart: what to do instead
NO_COUNTERPART = {
    "eval_strategy": "posttrain evaluates every eval_steps steps (0 = only at the end).",
    "save_strategy": "posttrain checkpoints every save_steps steps (0 = only at the end).",
    "logging_strategy": "posttrain logs every logging_steps steps.",
    "max_prompt_length": "posttrain leaves out prompts longer than max_length - max_new_tokens "
                         "(set max_length).",
    "completion_only_loss": "posttrain always trains the completion only (prompts are masked).",
    "assistant_only_loss": "posttrain always trains assistant turns only.",
    "hub_strategy": "posttrain pushes once, at the end (push_to_hub).",
}


def translate_aliases(values: dict[str, tuple[Any, str]], fields: dict, cls_name: str):
    """TRL's names for the same settings (``ALIASES``) become posttrain's; giving both the
    alias and the key is an error, as is an alias whose setting this trainer lacks."""
    out: dict[str, tuple[Any, str]] = {}
    for key, (value, where) in values.items():
        if key in fields or key not in ALIASES:
            out[key] = (value, where)
            continue
        target, convert = ALIASES[key]
        if target not in fields:
            raise ConfigError(f"{where}: {key!r} (TRL's name for {target!r}) does not apply to "
                              f"`{cls_name}`.")
        if target in values or target in out:
            raise ConfigError(f"{where}: {key!r} and {target!r} are the same setting (TRL's "
                              "name and posttrain's): give only one.")
        out[target] = (convert(value) if convert else value, f"{where} (as {key})")
    return out


def _hint(key: str, fields: dict) -> str:
    if key in NO_COUNTERPART:
        return f" {NO_COUNTERPART[key]}"
    close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.75)
    return f" Did you mean {', '.join(close)}?" if close else ""


# --- value parsing -------------------------------------------------------------------------


def _parse_override(raw: str) -> Any:
    """Parse an override's value as YAML (so `true`, `3`, `[a, b]` work); fall back to text."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp)) if get_origin(tp) is None else str(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``, converting the obvious cases
    (YAML reads `1e-5` as a string; an int is a fine float)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}.")
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool):  # YAML reads no/off/false as False, yes/on/true as True
            words = ("no", "off", "false", "none") if not value else ("yes", "on", "true")
            value = next((w for w in words if w in choices), value)
        if value in choices:
            return value
        raise ConfigError(f"{where}: expected one of {list(choices)}, got {value!r}.")
    if origin in (list, typing.List):  # noqa: UP006
        (item_type,) = get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `report_to=wandb` means a one-element list
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}.")
        return [_coerce(v, item_type, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}.")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}.")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected text, got {value!r}.")
    return value
