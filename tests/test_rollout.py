"""HFGenerator against transformers' own generate and a fresh forward pass (tiny model, offline)."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.errors import ConfigError, PosttrainError
from posttrain.ops.logprobs import selective_log_softmax
from posttrain.rollout.base import (
    Generator,
    Rollout,
    SamplingParams,
    encode_prompts,
    resolve_stop_token_ids,
)
from posttrain.rollout.hf import HFGenerator, process_logits
from posttrain.tiny import build_tiny_model, build_tiny_tokenizer

PROMPTS = [
    "hi",
    "What is the capital of France? Tell me a long story about a dragon.",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "12 + 7"}],
    "def add(a, b):",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    # The default init (std 0.02) makes a random model repeat one token forever, which would let
    # a generator that ignores its context pass. Wider weights give context-dependent output.
    model = build_tiny_model(tokenizer)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return encode_prompts(tokenizer, PROMPTS)


def hf_generate_greedy(model, prompts, max_new_tokens, eos_ids, pad_id):
    """transformers' greedy generate on left-padded prompts; completions cut after the first eos."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_ids,
            pad_token_id=pad_id,
        )
    completions = []
    for row in out[:, width:].tolist():
        stops = [i for i, t in enumerate(row) if t in eos_ids]
        completions.append(row[: stops[0] + 1] if stops else row)
    return completions


def fresh_logprobs(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """log p(completion_t | prompt, completion_<t) from one unpadded forward pass; [C]."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]  # [C, V]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def test_encode_prompts_applies_chat_template(tokenizer):
    ids = encode_prompts(tokenizer, ["hi", [{"role": "user", "content": "hi"}]])
    assert ids[0] == ids[1] and all(isinstance(t, int) for t in ids[0])
    text = tokenizer.decode(ids[0])
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nhi<|im_end|>" in text
    with pytest.raises(PosttrainError, match="prompt 0"):
        encode_prompts(tokenizer, [42])


def test_greedy_matches_hf_generate(model, tokenizer, prompts):
    generator = HFGenerator(model, tokenizer)
    assert isinstance(generator, Generator)
    rollout = generator.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=24))
    stop_ids = resolve_stop_token_ids(SamplingParams(), tokenizer, model)
    expected = hf_generate_greedy(model, prompts, 24, stop_ids, tokenizer.pad_token_id)
    assert rollout.completion_ids == expected
    assert len({tuple(c) for c in expected}) == len(prompts)  # the prompts really differ
    assert rollout.completions == tokenizer.batch_decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("compact_fraction", [0.0, 0.25, 2.0])
@pytest.mark.parametrize("max_batch_rows", [None, 3])
def test_early_stops_match_hf_generate(model, tokenizer, prompts, compact_fraction, max_batch_rows):
    # Stop tokens taken from the greedy completions so rows finish at different steps; that
    # exercises finished-row masking, cache compaction and batch chunking.
    full = HFGenerator(model, tokenizer).generate(
        prompts, SamplingParams(temperature=0.0, max_new_tokens=20, stop_token_ids=[])
    )
    stop_ids = sorted({full.completion_ids[0][3], full.completion_ids[1][9]})
    params = SamplingParams(temperature=0.0, max_new_tokens=20, stop_token_ids=stop_ids)
    generator = HFGenerator(
        model, tokenizer, max_batch_rows=max_batch_rows, compact_fraction=compact_fraction
    )
    rollout = generator.generate(prompts, params)
    expected = hf_generate_greedy(model, prompts, 20, stop_ids, tokenizer.pad_token_id)
    assert rollout.completion_ids == expected
    for ids, reason in zip(rollout.completion_ids, rollout.finish_reasons):
        if reason == "stop":
            assert ids[-1] in stop_ids and not any(t in stop_ids for t in ids[:-1])
        else:
            assert len(ids) == 20 and not any(t in stop_ids for t in ids)
    assert rollout.finish_reasons[0] == "stop" and len(rollout.completion_ids[0]) <= 4
    assert "length" in rollout.finish_reasons


def test_default_stop_ids_come_from_tokenizer_and_generation_config(model, tokenizer, prompts):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert resolve_stop_token_ids(SamplingParams(), tokenizer, model) == [im_end]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    first = HFGenerator(model, tokenizer).generate(prompts[:1], greedy).completion_ids[0]
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [im_end, first[2]]
    try:
        rollout = HFGenerator(model, tokenizer).generate(prompts[:1], greedy)
    finally:
        model.generation_config.eos_token_id = old
    assert rollout.finish_reasons == ["stop"]
    assert rollout.completion_ids[0] == first[: first.index(first[2]) + 1]


def test_length_finish_reason(model, tokenizer, prompts):
    params = SamplingParams(max_new_tokens=5, stop_token_ids=[], seed=0)
    rollout = HFGenerator(model, tokenizer).generate(prompts, params)
    assert rollout.finish_reasons == ["length"] * len(prompts)
    assert all(
        len(ids) == 5 and len(lp) == 5
        for ids, lp in zip(rollout.completion_ids, rollout.sampler_logprobs)
    )


def test_n_samples_are_prompt_major(model, tokenizer, prompts):
    generator = HFGenerator(model, tokenizer)
    rollout = generator.generate(prompts[:3], SamplingParams(n=4, max_new_tokens=8, seed=0))
    assert len(rollout) == 12
    assert rollout.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    assert rollout.prompt_ids == [p for p in prompts[:3] for _ in range(4)]
    # Greedy fan-out: each of a prompt's n rows must continue *that* prompt's cache.
    greedy = generator.generate(prompts[:3], SamplingParams(n=3, temperature=0, max_new_tokens=8))
    single = generator.generate(prompts[:3], SamplingParams(temperature=0, max_new_tokens=8))
    assert greedy.completion_ids == [c for c in single.completion_ids for _ in range(3)]


def test_sampler_logprobs_equal_fresh_forward(model, tokenizer, prompts):
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=16, seed=3)
    rollout = HFGenerator(model, tokenizer).generate(prompts, params)
    assert len({tuple(c) for c in rollout.completion_ids}) > 1
    for prompt, completion, logps in zip(
        rollout.prompt_ids, rollout.completion_ids, rollout.sampler_logprobs
    ):
        expected = fresh_logprobs(model, prompt, completion)
        torch.testing.assert_close(torch.tensor(logps), expected, atol=1e-4, rtol=0)


def test_processed_logprobs_follow_temperature_and_top_k(model, tokenizer, prompts):
    params = SamplingParams(temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=10, seed=1)
    rollout = HFGenerator(model, tokenizer).generate(prompts[:2], params)
    for prompt, completion, logps in zip(
        rollout.prompt_ids, rollout.completion_ids, rollout.sampler_logprobs
    ):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
        processed = process_logits(logits[len(prompt) - 1 : -1], 0.7, 20, 0.9)  # [C, V]
        expected = processed.gather(-1, torch.tensor(completion)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(logps), expected, atol=1e-4, rtol=0)
        assert all(math.isfinite(x) for x in logps)


def test_padded_tensors_reproduce_logprobs_in_one_pass(model, tokenizer, prompts):
    params = SamplingParams(n=2, max_new_tokens=12, seed=5, stop_token_ids=[])
    rollout = HFGenerator(model, tokenizer).generate(prompts, params)
    # Cut two rows short by hand so completions have different lengths, as with real stops.
    rollout.completion_ids[0] = rollout.completion_ids[0][:3]
    rollout.sampler_logprobs[0] = rollout.sampler_logprobs[0][:3]
    rollout.completion_ids[5] = rollout.completion_ids[5][:7]
    rollout.sampler_logprobs[5] = rollout.sampler_logprobs[5][:7]
    batch = rollout.to_padded_tensors(pad_id=tokenizer.pad_token_id)
    p_len = batch["prompt_length"]
    assert p_len == max(len(p) for p in prompts)
    assert batch["input_ids"].shape == (8, p_len + 12)
    assert batch["completion_mask"].sum(-1).tolist() == [len(c) for c in rollout.completion_ids]
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).logits
    logps = selective_log_softmax(logits[:, p_len - 1 : -1], batch["input_ids"][:, p_len:])
    mask = batch["completion_mask"]
    torch.testing.assert_close(logps * mask, batch["sampler_logprobs"], atol=1e-4, rtol=0)


def test_seed_reproduces(model, tokenizer, prompts):
    generator = HFGenerator(model, tokenizer)
    a = generator.generate(prompts, SamplingParams(n=2, max_new_tokens=10, seed=7))
    b = generator.generate(prompts, SamplingParams(n=2, max_new_tokens=10, seed=7))
    c = generator.generate(prompts, SamplingParams(n=2, max_new_tokens=10, seed=8))
    assert a.completion_ids == b.completion_ids and a.sampler_logprobs == b.sampler_logprobs
    assert a.completion_ids != c.completion_ids


def test_top_k_one_is_greedy(model, tokenizer, prompts):
    generator = HFGenerator(model, tokenizer)
    greedy = generator.generate(prompts, SamplingParams(temperature=0, max_new_tokens=12))
    top1 = generator.generate(prompts, SamplingParams(top_k=1, max_new_tokens=12, seed=0))
    assert top1.completion_ids == greedy.completion_ids
    assert all(x == pytest.approx(0.0, abs=1e-6) for row in top1.sampler_logprobs for x in row)


def test_restores_train_mode(model, tokenizer, prompts):
    model.train()
    try:
        HFGenerator(model, tokenizer).generate(prompts[:1], SamplingParams(max_new_tokens=2))
        assert model.training
    finally:
        model.eval()


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    probs = process_logits(logits, 1.0, top_p=0.8).exp()[0]
    torch.testing.assert_close(probs, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    probs = process_logits(logits, 1.0, top_p=0.81).exp()[0]
    torch.testing.assert_close(probs, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)
    probs = process_logits(logits, 1.0, top_k=1).exp()[0]
    torch.testing.assert_close(probs, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    probs = process_logits(logits, 0.5).exp()[0]  # temperature 0.5 squares the probabilities
    torch.testing.assert_close(probs, torch.tensor([0.25, 0.09, 0.0225, 0.0025]) / 0.365)


def test_bad_inputs_are_explained(model, tokenizer):
    with pytest.raises(ConfigError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ConfigError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ConfigError, match="n=0"):
        SamplingParams(n=0)
    with pytest.raises(PosttrainError, match="prompt 1 has no tokens"):
        HFGenerator(model, tokenizer).generate([[1, 2], []], SamplingParams())


def test_empty_rollout_padding_is_an_error():
    empty = Rollout([], [], [], [], [], [])
    with pytest.raises(PosttrainError, match="no rows"):
        empty.to_padded_tensors(pad_id=0)
