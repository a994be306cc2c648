"""Evaluation on any data with any rewards: scoring and summaries against hand-computed values
(a scripted generator, no model), several models side by side, and `posttrain eval --rewards`
end to end on the tiny random model."""

from __future__ import annotations

import json

import pytest

from posttrain.cli import main
from posttrain.data.formats import to_prompt_example
from posttrain.evaluation.common import Answer
from posttrain.evaluation.compare import comparison_table, metric_names, side_by_side
from posttrain.evaluation.reward_eval import ScoredPrompt, score_groups, summarise
from posttrain.rewards.loading import load_reward_set


def examples(*answers: str):
    return [to_prompt_example({"prompt": f"What is {a}?", "answer": a}, f"row {i}")
            for i, a in enumerate(answers)]


def answers(*texts: str, reason: str = "stop") -> list[Answer]:
    return [Answer(t, len(t.split()), reason, list(range(len(t.split())))) for t in texts]


def test_rewards_per_function_accuracy_and_pass_at_k_by_hand():
    rows = examples("4", "9")
    groups = [answers("\\boxed{4}", "\\boxed{5}", "\\boxed{4}"),
              answers("\\boxed{1}", "nine", "\\boxed{1}", reason="length")]

    def half(prompts, completions, completion_ids, **columns):
        return [0.5] * len(completions)

    scored = score_groups(rows, groups, load_reward_set(["math", half]))
    assert scored[0].rewards["math"] == [1.0, 0.0, 1.0] and scored[0].totals == [1.5, 0.5, 1.5]
    summary = summarise(scored)
    assert summary["rewards/math/mean"] == pytest.approx(2 / 6)
    assert summary["rewards/half/mean"] == 0.5
    assert summary["rewards/total/mean"] == pytest.approx((1.5 + 0.5 + 1.5 + 0.5 * 3) / 6)
    assert summary["accuracy"] == pytest.approx(2 / 6)  # total >= 1.0
    # prompt 1: n=3, c=2 -> pass@1 = 2/3, pass@2 = 1; prompt 2: c=0
    assert summary["pass@1"] == pytest.approx((2 / 3 + 0) / 2)
    assert summary["pass@2"] == pytest.approx((1 + 0) / 2)
    assert summary["pass@3"] == pytest.approx(0.5)
    # maj@3: prompt 1 votes 4 (twice) -> right; prompt 2 votes 1 (twice) -> wrong
    assert summary["maj@3"] == 0.5 and summary["maj@1"] == 0.5
    assert summary["truncated_rate"] == 0.5
    assert summary["completion_length"] == pytest.approx((1 + 1 + 1 + 1 + 1 + 1) / 6)
    # a stricter threshold: nothing reaches 2.0
    assert summarise(scored, success_threshold=2.0)["accuracy"] == 0.0


def test_majority_vote_goes_to_the_first_answer_on_a_tie():
    prompt = ScoredPrompt("q", ["\\boxed{7}", "\\boxed{8}"], [0.0, 1.0],
                          {"math": [0.0, 1.0]}, [1, 1], ["stop", "stop"])
    assert summarise([prompt])["maj@2"] == 0.0  # 7 and 8 tie: 7 (seen first, wrong) wins
    assert summarise([prompt])["pass@2"] == 1.0


def test_greedy_answers_have_no_pass_at_k_and_none_rewards_are_left_out():
    def only_even(prompts, completions, completion_ids, answer, **columns):
        return [1.0 if int(a) % 2 == 0 else None for a in answer]

    scored = score_groups(examples("4", "9"), [answers("\\boxed{4}"), answers("x")],
                          load_reward_set([only_even]))
    summary = summarise(scored)
    assert "pass@1" not in summary
    assert summary["rewards/only_even/mean"] == 1.0  # the None of row 2 is not a 0
    assert summary["rewards/total/mean"] == 0.5  # a row with no reward totals 0


def test_several_models_side_by_side():
    a = {"model": "base", "accuracy": 0.25, "completion_length": 30.0, "pass@2": 0.5,
         "rewards/math/mean": 0.25, "records": [{"prompt": "What is 2+2?", "completion": "5"}]}
    b = {"model": "outputs/a/very/long/path/to/the/trained/model", "accuracy": 0.75,
         "completion_length": 20.0, "pass@2": 0.9, "rewards/math/mean": 0.75,
         "records": [{"prompt": "What is 2+2?", "completions": ["4", "4"]}]}
    assert metric_names([a, b]) == ["accuracy", "rewards/math/mean", "pass@2",
                                    "completion_length"]
    table = comparison_table([a, b]).splitlines()
    assert table[0].split()[1] == "base" and table[0].split()[2].startswith("...")
    assert table[1].split() == ["accuracy", "0.2500", "0.7500"]
    shown = side_by_side([a, b])
    assert "What is 2+2?" in shown and "base: 5" in shown and ": 4" in shown


def test_eval_command_with_rewards_and_two_models(tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1)})
                            + "\n" for i in range(3)))
    out, summary = tmp_path / "answers.jsonl", tmp_path / "summary.json"
    assert main(["eval", "--model", "random:tiny", "random:tiny", "--data", str(data),
                 "--rewards", "math", "format", "--samples", "2", "--max-new-tokens", "4",
                 "--output", str(out), "--json", str(summary)]) == 0
    printed = capsys.readouterr().out
    assert "pass@2" in printed and "rewards/format/mean" in printed
    results = json.loads(summary.read_text())
    assert len(results) == 2 and results[0]["n"] == 3 and results[0]["rewards"] == ["math",
                                                                                     "format"]
    assert results[0]["pass@2"] == results[1]["pass@2"]  # same model, same seed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and records[0]["model"] == "random:tiny"
    assert len(records[0]["completions"]) == 2 and "reward/math" in records[0]


def test_eval_command_mistakes_exit_2_before_loading(tmp_path, capsys, monkeypatch):
    import posttrain.models as models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_trained", no_model)
    monkeypatch.setattr(models, "load_tokenizer", no_model)
    assert main(["eval", "--model", "random:tiny"]) == 2
    assert "needs a built-in task" in capsys.readouterr().err
    assert main(["eval", "--model", "random:tiny", "--data", str(tmp_path / "no.jsonl"),
                 "--rewards", "math"]) == 2
    assert "no.jsonl" in capsys.readouterr().err
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "hi"}\n')
    assert main(["eval", "--model", "random:tiny", "--data", str(data), "--rewards",
                 "maths"]) == 2
    assert "maths" in capsys.readouterr().err
