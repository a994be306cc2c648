"""RewardModelScorer on a tiny random Qwen2ForSequenceClassification."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from posttrain.errors import ConfigError  # noqa: E402
from posttrain.rewards.loading import load_reward  # noqa: E402
from posttrain.rewards.reward_model import RewardModelScorer, to_messages  # noqa: E402

PROMPTS = [
    "What is 12 + 7?",
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Tell me a story about a dragon."}],
    "hi",
    [{"role": "user", "content": "What is the capital of France?"}],
]
COMPLETIONS = [
    "The answer is \\boxed{19}.",
    "Once upon a time there was a red dragon. The quick brown fox jumps over the lazy dog.",
    "hello",
    "The capital of France is Paris.",
]


def _tiny_rm(tokenizer, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        num_labels=1, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen2ForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    from posttrain.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    folder = tmp_path_factory.mktemp("tiny-rm")
    _tiny_rm(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_scores_are_finite_batch_invariant_and_match_one_by_one(rm_dir):
    batched = RewardModelScorer(rm_dir, batch_size=4)
    scores = batched(PROMPTS, COMPLETIONS, [[]] * 4, answer=[None] * 4)
    assert len(scores) == 4 and all(math.isfinite(s) for s in scores)
    assert len(set(scores)) == 4  # different texts, different scores
    single = RewardModelScorer(rm_dir, batch_size=1)
    one_by_one = [single([p], [c], [[]])[0] for p, c in zip(PROMPTS, COMPLETIONS)]
    assert one_by_one == pytest.approx(scores, abs=1e-5)
    # the same row scored next to a much longer one (so it is padded) keeps its score
    pair = batched([PROMPTS[2], PROMPTS[1]], [COMPLETIONS[2], COMPLETIONS[1] * 3], [[]] * 2)
    assert pair[0] == pytest.approx(scores[2], abs=1e-5)


def test_reads_last_real_token_not_padding(rm_dir):
    scorer = RewardModelScorer(rm_dir)
    ids = scorer.encode(PROMPTS[0], COMPLETIONS[0])
    with torch.no_grad():
        hidden = scorer.model.model(input_ids=torch.tensor([ids])).last_hidden_state
        expected = scorer.model.score(hidden)[0, -1, 0].item()
    assert scorer([PROMPTS[0], PROMPTS[1]], [COMPLETIONS[0], COMPLETIONS[1]], [[]] * 2)[0] == (
        pytest.approx(expected, abs=1e-5))


def test_model_object_and_missing_pad_id(tiny_tokenizer):
    model = _tiny_rm(tiny_tokenizer)
    model.config.pad_token_id = None
    scorer = RewardModelScorer(model, tokenizer=tiny_tokenizer, batch_size=2)
    assert scorer.pad_token_id == tiny_tokenizer.pad_token_id
    assert model.config.pad_token_id == tiny_tokenizer.pad_token_id
    batched = scorer(PROMPTS, COMPLETIONS, [[]] * 4)
    single = [scorer([p], [c], [[]])[0] for p, c in zip(PROMPTS, COMPLETIONS)]
    assert batched == pytest.approx(single, abs=1e-5)
    with pytest.raises(ConfigError, match="no tokenizer"):
        RewardModelScorer(model)


def test_rendering_and_loading(rm_dir, tmp_path):
    assert to_messages("q", "a") == [{"role": "user", "content": "q"},
                                     {"role": "assistant", "content": "a"}]
    scorer = load_reward("reward_model", path=str(rm_dir), batch_size=2)
    assert scorer.__name__ == "reward_model" and scorer.batch_size == 2
    text = scorer.tokenizer.decode(scorer.encode("q", "a"))
    assert text.endswith("<|im_start|>assistant\na<|im_end|>\n")
    with pytest.raises(ConfigError, match="does not exist"):
        RewardModelScorer(tmp_path / "missing")
