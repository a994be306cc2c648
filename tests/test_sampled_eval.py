"""pass@k and maj@k against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from posttrain.errors import PosttrainError
from posttrain.evaluation.sampling import maj_at_k, pass_at_k, sampled_summary


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 1, 2 / 5),  # pass@1 is the fraction correct
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (10, 3, 3, 1 - 35 / 120),  # 1 - C(7,3)/C(10,3)
    (5, 2, 4, 1.0),  # only 3 wrong samples: every 4-subset has a correct one
    (4, 0, 2, 0.0),
    (3, 3, 1, 1.0),
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_binomial_formula_and_not_the_biased_one():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)
    assert pass_at_k(5, 2, 2) != pytest.approx(1 - (1 - 2 / 5) ** 2)  # 0.7 vs 0.64


def test_maj_at_k_by_hand():
    answers = ["4", "5", "4", None, "5"]
    assert maj_at_k(answers, "4", 3) == 1.0  # 4 twice, 5 once
    assert maj_at_k(answers, "4", 5) == 1.0  # 2-2 tie: the answer seen first wins
    assert maj_at_k(answers, "5", 5) == 0.0
    assert maj_at_k(["5", None, None], "5", 3) == 1.0  # no-answer never outvotes an answer
    assert maj_at_k([None, None], "5", 2) == 0.0


def test_sampled_summary_means_over_prompts():
    summary = sampled_summary([[True, False], [False, False]], [1, 2],
                              answers=[["7", "8"], ["1", "2"]], gold=["7", "3"])
    assert summary == pytest.approx({"pass@1": 0.25, "pass@2": 0.5, "maj@1": 0.5, "maj@2": 0.5})


def test_impossible_k_is_an_error():
    with pytest.raises(PosttrainError, match="k <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(PosttrainError, match="k=3 but 2 answers"):
        maj_at_k(["1", "2"], "1", 3)


class SamplesGenerator:
    """Returns the listed samples of each prompt (prompt-major, as a real generator does)."""

    def __init__(self, samples: list[list[str]]) -> None:
        self.samples, self.params = list(samples), []

    def generate(self, prompts, params):
        from posttrain.rollout.base import Rollout

        self.params.append(params)
        texts, index = [], []
        for i in range(len(prompts)):
            row = self.samples.pop(0)
            assert len(row) == params.n
            texts += row
            index += [i] * len(row)
        ids = [[1] * len(t.split()) for t in texts]
        return Rollout(prompt_ids=prompts, completion_ids=ids, completions=texts,
                       sampler_logprobs=[[0.0] * len(i) for i in ids],
                       finish_reasons=["stop"] * len(texts), prompt_index=index)


def test_sampled_arithmetic_by_hand(tiny_tokenizer):
    from posttrain.evaluation.sampling import evaluate_arithmetic_sampled

    rows = [{"prompt": "What is 2 + 2?", "answer": "4"}, {"prompt": "What is 3 * 3?", "answer": "9"}]
    generator = SamplesGenerator([
        [r"\boxed{4}", r"\boxed{5}", r"\boxed{5}", r"\boxed{4}"],  # c = 2, vote tied: 4 first
        [r"\boxed{6}", r"\boxed{6}", r"\boxed{9}", "no idea"],  # c = 1, vote: 6
    ])
    result = evaluate_arithmetic_sampled(None, tiny_tokenizer, rows, samples=4, temperature=0.7,
                                         batch_size=1, generator=generator)
    assert [p.n for p in generator.params] == [4, 4]
    assert all(p.temperature == 0.7 for p in generator.params)
    assert result["pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert result["pass@2"] == pytest.approx(((1 - 1 / 6) + (1 - 3 / 6)) / 2)  # 1 - C(2,2)/C(4,2), 1 - C(3,2)/C(4,2)
    assert result["pass@4"] == 1.0
    assert result["maj@1"] == pytest.approx(0.5) and result["maj@4"] == pytest.approx(0.5)
    assert result["mean_sample_accuracy"] == pytest.approx(3 / 8)
    assert result["records"][1]["correct"] == [False, False, True, False]


def test_eval_samples_from_the_command_line(capsys):
    import json

    from posttrain.cli import main

    assert main(["eval", "--model", "random:tiny", "--task", "arithmetic", "--limit", "2",
                 "--samples", "2", "--max-new-tokens", "4", "--batch-size", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["samples_per_prompt"] == 2 and summary["n"] == 2
    assert {"pass@1", "pass@2", "maj@1", "maj@2"} <= set(summary)
    assert 0.0 <= summary["pass@1"] <= summary["pass@2"] <= 1.0
    assert main(["eval", "--model", "random:tiny", "--task", "identity", "--samples", "2"]) == 2
    for bad in (["--batch-size", "0"], ["--temperature", "0"]):
        assert main(["eval", "--model", "random:tiny", "--task", "arithmetic", "--limit", "1",
                     "--samples", "2", *bad]) == 2, bad
