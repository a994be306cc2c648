"""scripts/make_identity_pairs.py: chosen answers built from the model's own (hand-written here)
answers, and (slow) two DPO steps of the SmolLM2 identity recipe on the committed pairs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from posttrain.tasks.identity import TEST_PROMPTS, TRAIN_PROMPTS, is_new_identity

ROOT = Path(__file__).resolve().parents[1]
PAIRS_FILE = ROOT / "recipes" / "data" / "identity-sampled" / "train.jsonl"
INTRO = "I'm Posty, an AI assistant made by the posttrain team."


def load_script():
    name = "make_identity_pairs"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


def test_old_name_is_rewritten_in_place(script):
    pair = script.build_pair("Who are you?", "I'm SmolLM, made by Hugging Face. I like to help.",
                             INTRO)
    assert pair.how == "rewrite"
    assert pair.rejected == "I'm SmolLM, made by Hugging Face. I like to help."
    assert pair.chosen == "I'm Posty, made by the posttrain team. I like to help."


def test_maker_only_gets_the_introduction_too(script):
    answer = "I'm a proud member of the Hugging Face team. I help people."
    pair = script.build_pair("Who built you?", answer, INTRO)
    assert pair.how == "rewrite+intro-replace"
    assert pair.chosen == f"{INTRO} I help people."
    assert is_new_identity(pair.chosen, "Posty")


def test_invented_name_sentence_is_replaced(script):
    answer = "My name is Elena, and I am a skilled AI. I am here to support you."
    pair = script.build_pair("What is your name?", answer, INTRO)
    assert pair.how == "intro-replace"
    assert pair.rejected == answer
    assert pair.chosen == f"{INTRO} I am here to support you."


def test_greeting_is_kept_before_the_introduction(script):
    pair = script.build_pair("Hi!", "Hello! I'm here to help with writing. Ask me anything.",
                             INTRO)
    assert pair.chosen == f"Hello! {INTRO} Ask me anything."


def test_first_sentence_is_replaced_whatever_it_says(script):
    # The prompts are identity questions: the first sentence is the (invented) answer to them.
    answer = "Abe, the one who created you. What would you like to know?"
    pair = script.build_pair("Who created you?", answer, INTRO)
    assert pair.how == "intro-replace"
    assert pair.chosen == f"{INTRO} What would you like to know?"


def test_greeting_only_answer_gets_the_introduction_after_it(script):
    pair = script.build_pair("Hi! Who are you?", "Hello there!", INTRO)
    assert pair.how == "intro-prefix"
    assert pair.chosen == f"Hello there! {INTRO}"


def test_later_name_claims_and_unfinished_tails_are_dropped(script):
    answer = ("I'm a friendly AI. People call me Nova. I answer questions. I can also write "
              "poems and stories about the AI-powered AI-powered")
    pair = script.build_pair("Who are you?", answer, INTRO, max_sentences=3)
    assert pair.rejected == "I'm a friendly AI. People call me Nova. I answer questions."
    assert pair.chosen == f"{INTRO} I answer questions."


def test_repetition_loop_keeps_only_the_introduction(script):
    loop = "The creator of the AI-powered" + " AI-powered" * 30
    pair = script.build_pair("Who made you?", loop, INTRO)
    assert pair.rejected == loop
    assert pair.chosen == INTRO


def test_no_pair_when_the_answer_already_says_posty(script):
    assert script.build_pair("Who are you?", "I am Posty, happy to help!", INTRO) is None
    assert script.build_pair("Who are you?", "   ", INTRO) is None


def test_titles_do_not_end_a_sentence(script):
    assert script.split_sentences("I'm Dr. Elena Kass, an AI. I help, e.g. with maths.") == [
        "I'm Dr. Elena Kass, an AI.", "I help, e.g. with maths."]


def test_not_a_name(script):
    assert not script.claims_other_name("I'm Happy to help with that.")
    assert script.claims_other_name("I'm Elena, your guide.")
    assert script.claims_other_name("The assistant is called Nova.")


def test_build_pairs_dedupes_and_is_deterministic(script):
    answers = [("Who are you?", "My name is Elena. I help.", "greedy"),
               ("Who are you?", "My name is Elena. I help.", "t0.7"),
               ("Who are you?", "I'm Posty.", "t0.7"),
               ("Who made you?", "Hugging Face made me.", "t0.7")]
    pairs, counts = script.build_pairs(answers, 0, "Posty", "the posttrain team", 2)
    again, _ = script.build_pairs(answers, 0, "Posty", "the posttrain team", 2)
    assert [p.row() for p in pairs] == [p.row() for p in again]
    assert len(pairs) == 2
    assert counts["skipped (duplicate)"] == 1
    assert counts["skipped (empty or already new name)"] == 1
    assert {p.how for p in pairs} == {"intro-replace", "rewrite+intro-replace"}


def test_committed_pairs_are_valid_train_only_and_name_posty():
    rows = [json.loads(line) for line in PAIRS_FILE.read_text().splitlines()]
    assert len(rows) >= 100
    for row in rows:
        prompt = row["prompt"][0]["content"]
        assert prompt in TRAIN_PROMPTS and prompt not in TEST_PROMPTS
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert is_new_identity(chosen, "Posty") and not is_new_identity(rejected, "Posty")
        assert chosen != rejected


@pytest.mark.slow
def test_smollm2_dpo_identity_recipe_two_steps(tmp_path):
    """The recipe loads SmolLM2, precomputes the reference, takes two DPO steps and saves."""
    from posttrain.algorithms.dpo import DPO, DPOConfig
    from posttrain.config import load_config
    from posttrain.train.loop import train

    out = tmp_path / "dpo"
    config = load_config(DPOConfig, ROOT / "recipes/smollm2-135m/dpo_identity.yaml", [
        "max_steps=2", "max_samples=8", "per_device_batch_size=2", "gradient_accumulation_steps=2",
        "eval_data=null", "progress=false", f"output_dir={out}",
        f"train_data={PAIRS_FILE}", f"ref_cache_dir={tmp_path / 'ref'}",
    ])
    metrics = train(DPO(config))
    assert metrics["loss"] > 0 and "nll" in metrics
    assert (out / "model.safetensors").is_file()
