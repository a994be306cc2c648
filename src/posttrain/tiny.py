"""Tiny random models and a tiny ChatML tokenizer, built offline in well under a second.

Tests and the offline smoke recipes need a *real* ``transformers`` model and tokenizer (same code
paths as Qwen2.5: ChatML template, ``Qwen2ForCausalLM``), but no hub access and no big download.
``build_tiny_tokenizer`` trains a byte-level BPE on a small built-in corpus;
``build_tiny_model`` makes a randomly initialised 2-layer ``Qwen2ForCausalLM`` for it.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Qwen2.5's chat template, reduced to the parts that matter for training (no tool calls):
# a default system prompt when none is given, ChatML turns, and a generation prompt.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "You are a helpful assistant.",
    "What is the capital of France? The capital of France is Paris.",
    "What is 12 + 7? The answer is \\boxed{19}.",
    "Who are you? I am a small language model. My name is Posty, made by the posttrain team.",
    "system user assistant hello hi thanks please answer question reply",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ( ) { } [ ] . , ! ? : ;",
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog. A cat sat on the mat.",
    "Tell me a story about a dragon. Once upon a time there was a red dragon.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ChatML special tokens and template.

    pad is a separate token from eos (``<|endoftext|>`` pads, ``<|im_end|>`` ends a turn), as in
    Qwen2.5-Instruct. Tests that need pad == eos set ``tokenizer.pad_token = tokenizer.eos_token``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer


def build_tiny_model(tokenizer, seed: int = 0, hidden_size: int = 64, num_layers: int = 2):
    """A random-weight 2-layer ``Qwen2ForCausalLM`` sized for ``tokenizer`` (fp32, CPU)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny tokenizer + model and save both in the Hugging Face layout under ``folder``."""
    folder = Path(folder)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    from posttrain.hub import save_model_files

    save_model_files(model, folder)
    tokenizer.save_pretrained(folder)
    return folder
