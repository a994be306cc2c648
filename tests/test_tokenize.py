"""Exact loss masks from the chat template, padding, packing, truncation."""

from __future__ import annotations

import pytest
import torch

from posttrain.data.formats import SFTExample, to_sft_example
from posttrain.data.tokenize import (
    IGNORE_INDEX,
    collate,
    collate_packed,
    pack,
    tokenize_all,
    tokenize_sft,
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello there"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
]


def trained_text(tokenizer, tokenized) -> list[str]:
    """The labelled tokens, decoded, as contiguous runs."""
    runs, current = [], []
    for token, label in zip(tokenized.input_ids, tokenized.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_multi_turn_masks_are_exact(tiny_tokenizer):
    example = to_sft_example({"messages": CONVERSATION}, "row 0")
    tokenized = tokenize_sft(tiny_tokenizer, example, max_length=512)
    # Both assistant turns, each with its end-of-turn token; nothing else.
    assert trained_text(tiny_tokenizer, tokenized) == ["hello there<|im_end|>", "4<|im_end|>"]
    text = tiny_tokenizer.decode(tokenized.input_ids)
    assert text == tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    # the newline after <|im_end|> is template scaffolding, never trained
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    positions = [i for i, t in enumerate(tokenized.input_ids) if t == im_end]
    trained_im_end = [i for i in positions if tokenized.labels[i] != IGNORE_INDEX]
    assert len(positions) == 5 and len(trained_im_end) == 2
    for i in trained_im_end:
        assert tokenized.labels[i + 1] == IGNORE_INDEX


def test_last_turn_only(tiny_tokenizer):
    example = to_sft_example({"messages": CONVERSATION}, "row 0", last_turn_only=True)
    tokenized = tokenize_sft(tiny_tokenizer, example, max_length=512)
    assert trained_text(tiny_tokenizer, tokenized) == ["4<|im_end|>"]


def test_prompt_completion_trains_only_the_completion(tiny_tokenizer):
    row = {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                      {"role": "user", "content": "and?"}],
           "completion": "fine"}
    tokenized = tokenize_sft(tiny_tokenizer, to_sft_example(row, "r"), max_length=512)
    assert trained_text(tiny_tokenizer, tokenized) == ["fine<|im_end|>"]


def test_eos_is_trained_when_pad_equals_eos():
    from posttrain.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    a = tokenize_sft(tokenizer, to_sft_example({"prompt": "hi", "completion": "yes"}, "a"), 512)
    b = tokenize_sft(tokenizer, to_sft_example({"prompt": "a longer question here",
                                                "completion": "no"}, "b"), 512)
    batch = collate([a, b], tokenizer.pad_token_id)
    for row in range(2):
        labels = batch["labels"][row][batch["attention_mask"][row].bool()]
        trained = labels[labels != IGNORE_INDEX]
        assert trained[-1].item() == tokenizer.eos_token_id  # the model learns to stop
    # padding positions carry no loss even though their id is eos
    pad_positions = batch["attention_mask"] == 0
    assert pad_positions.any()
    assert (batch["labels"][pad_positions] == IGNORE_INDEX).all()


def test_truncation_warns_and_counts(tiny_tokenizer):
    examples = [to_sft_example({"prompt": "hi " * 40, "completion": "ok"}, f"row {i}")
                for i in range(3)]
    examples.append(to_sft_example({"prompt": "hi", "completion": "ok"}, "row 3"))
    with pytest.warns(UserWarning, match="3 of 4 examples were longer"):
        kept = tokenize_all(tiny_tokenizer, examples, [f"row {i}" for i in range(4)], 30)
    assert len(kept) == 1  # truncation removed every response token of the long ones


def test_pack_respects_budget_and_keeps_every_example(tiny_tokenizer):
    examples = [tokenize_sft(tiny_tokenizer, to_sft_example(
        {"prompt": "q" * (i + 1), "completion": "a" * (i + 1)}, "r"), 512) for i in range(9)]
    bins = pack(examples, max_length=64)
    assert sorted(id(e) for b in bins for e in b) == sorted(id(e) for e in examples)
    assert all(sum(len(e.input_ids) for e in b) <= 64 for b in bins)


def test_packing_gives_same_logprobs_as_padding(tiny_tokenizer, tiny_model):
    from posttrain.train.forward import TokenLogprobs

    rows = [{"prompt": "What is 1 + 2?", "completion": "3"},
            {"prompt": "hi", "completion": "hello there, friend"},
            {"prompt": "Tell me a story about a dragon.", "completion": "Once upon a time."}]
    examples = [tokenize_sft(tiny_tokenizer, to_sft_example(r, "r"), 512) for r in rows]
    scorer = TokenLogprobs(tiny_model.eval())

    def response_logprobs(batch):
        targets = batch["labels"][:, 1:]
        logprobs, _ = scorer(batch["input_ids"], targets.clamp(min=0),
                             attention_mask=batch.get("attention_mask"),
                             position_ids=batch.get("position_ids"))
        return logprobs[targets != IGNORE_INDEX]

    with torch.no_grad():
        padded = response_logprobs(collate(examples, tiny_tokenizer.pad_token_id))
        packed = response_logprobs(collate_packed([examples], tiny_tokenizer.pad_token_id))
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)


def test_assistant_first_is_rejected(tiny_tokenizer):
    from posttrain.errors import DataError

    example = SFTExample([{"role": "assistant", "content": "hi"}], [0])
    with pytest.raises(DataError, match="starts with an assistant turn"):
        tokenize_sft(tiny_tokenizer, example, 512, "file.jsonl, line 3")
