"""Rejection sampling (best-of-K): choice of the best sample, threshold, CLI output."""

from __future__ import annotations

import json

from posttrain.cli import main
from posttrain.curation.rejection import best_of_k, rejection_sample
from posttrain.data.formats import PromptExample
from posttrain.rewards.combine import RewardSet
from posttrain.rollout.base import Rollout, SamplingParams


def test_best_of_k_by_hand():
    # groups of 3: [0, 2, 1] -> 1 ; [5, 5, 0] -> 0 (first on ties)
    assert best_of_k([0, 2, 1, 5, 5, 0], 3) == [1, 0]


class ScriptedGenerator:
    """Returns fixed completions, so the test knows which one must win."""

    def __init__(self, completions):
        self.completions = completions

    def generate(self, prompts, params):
        n = params.n
        rows = len(prompts) * n
        texts = self.completions[:rows]
        return Rollout(prompt_ids=[p for p in prompts for _ in range(n)],
                       completion_ids=[[1]] * rows, completions=texts,
                       sampler_logprobs=[[0.0]] * rows, finish_reasons=["stop"] * rows,
                       prompt_index=[i for i in range(len(prompts)) for _ in range(n)])


def test_keeps_the_best_completion_and_applies_the_threshold(tiny_tokenizer):
    def exact(prompts, completions, completion_ids, answer, **_):
        return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

    examples = [PromptExample([{"role": "user", "content": "1+1?"}], {"answer": "2"}),
                PromptExample([{"role": "user", "content": "2+2?"}], {"answer": "4"})]
    generator = ScriptedGenerator(["3", "2", "2 ", "5", "6", "7"])
    rows, stats = rejection_sample(generator, tiny_tokenizer, examples, RewardSet([exact]),
                                   SamplingParams(n=3, temperature=1.0), threshold=1.0)
    assert [r["completion"] for r in rows] == ["2"]  # second prompt: no correct sample, dropped
    assert rows[0]["answer"] == "2" and rows[0]["reward"] == 1.0
    assert stats.summary()["keep_rate"] == 0.5
    assert stats.summary()["mean_sample_reward"] == (2 / 3 + 0) / 2


def test_cli_sample_writes_sft_ready_rows(tmp_path, capsys):
    from posttrain.data.formats import to_sft_example

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Count to {i}"}) + "\n" for i in range(3)))
    reward = tmp_path / "r.py"
    reward.write_text("def length(prompts, completions, completion_ids, **_):\n"
                      "    return [float(len(c)) for c in completions]\n")
    out = tmp_path / "sft.jsonl"
    code = main(["sample", "--model", "random:tiny", "--data", str(data), "--output", str(out),
                 "--k", "3", "--rewards", f"{reward}:length", "--max-new-tokens", "5"])
    assert code == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3
    for i, row in enumerate(rows):
        to_sft_example(row, f"row {i}")  # directly usable by `posttrain sft`
    assert '"keep_rate": 1.0' in capsys.readouterr().out
