"""Task suites: determinism, disjoint splits, correct answers, and committed files that match."""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from posttrain.errors import ConfigError, DataError
from posttrain.tasks import (
    TASKS,
    arithmetic,
    coding,
    data_files,
    get_task,
    identity,
    identity_rate,
    is_new_identity,
    preference,
    read_jsonl,
    rewrite_identity,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parents[1]
QUESTION = re.compile(r"^What is (\d+) ([-+*]) (\d+)\? Put the final answer in \\boxed\{\}\.$")


def prompt_key(row: dict) -> str:
    """What the model is asked: the prompt, or every message before the final answer."""
    messages = row["prompt"] if "prompt" in row else row["messages"][:-1]
    return json.dumps(messages, sort_keys=True).lower()


def parse(row: dict) -> tuple[int, str, int]:
    content = (row["prompt"] if "prompt" in row else row["messages"])[0]["content"]
    a, op, b = QUESTION.match(content).groups()
    return int(a), op, int(b)


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_is_deterministic_and_its_splits_are_disjoint(name):
    task = get_task(name)
    train0, train1, test = task.train(seed=0), task.train(seed=1), task.test()
    assert train0 == task.train(seed=0) and test == task.test()
    assert train0 and test
    test_keys = {prompt_key(row) for row in test}
    assert not test_keys & {prompt_key(row) for row in train0 + train1}
    repeats_prompts = ("identity", "preference", "preference-near-miss")  # several answers each
    if name not in repeats_prompts:
        assert len({prompt_key(row) for row in train0}) == len(train0)
        assert len(test_keys) == len(test)


def test_arithmetic_rows_answers_and_levels():
    task = get_task("arithmetic")
    train, test = task.train(), task.test()
    assert (len(train), len(test)) == (2000, 200)
    for row in train + test:
        assert set(row) == {"prompt", "answer", "level"}
        a, op, b = parse(row)
        assert row["answer"] == str({"+": a + b, "-": a - b, "*": a * b}[op])
        assert arithmetic.LEVELS[row["level"]] == (op, 1 if max(a, b) < 10 else 2)
        assert int(row["answer"]) >= 0
    assert set(Counter(r["level"] for r in test)) == set(arithmetic.LEVELS)
    assert min(Counter(r["level"] for r in train).values()) >= 30  # sub1 has 55 questions


def test_arithmetic_commutative_twins_stay_on_one_side():
    train = {parse(r) for r in get_task("arithmetic").train()}
    for a, op, b in (parse(r) for r in get_task("arithmetic").test()):
        if op in "+*":
            assert (b, op, a) not in train


def test_arithmetic_levels_option_and_sft_view():
    rl = get_task("arithmetic", levels=["mul2"], train_size=50, test_size=10)
    sft = get_task("arithmetic-sft", levels="mul2", train_size=50, test_size=10)
    assert {r["level"] for r in rl.train()} == {"mul2"}
    for rl_row, sft_row in zip(rl.train(seed=3), sft.train(seed=3)):
        user, reply = sft_row["messages"]
        assert [user] == rl_row["prompt"] and reply["role"] == "assistant"
        a, op, b = parse(rl_row)
        assert reply["content"] == f"{a} {op} {b} = {rl_row['answer']}. The answer is " + (
            f"\\boxed{{{rl_row['answer']}}}."
        )
    with pytest.raises(ConfigError, match="add3"):
        get_task("arithmetic", levels=["add3"])
    with pytest.raises(ConfigError, match="only"):
        get_task("arithmetic", levels="add1", train_size=1000).train()


def test_allocate_fills_evenly_within_capacity():
    assert arithmetic.allocate(10, [100, 100]) == [5, 5]
    assert arithmetic.allocate(10, [2, 100, 100]) == [2, 4, 4]
    assert sum(arithmetic.allocate(7, [3, 3, 3])) == 7


def test_identity_prompts_held_out_and_pairs_differ_only_in_identity():
    assert len(identity.TRAIN_PROMPTS) + len(identity.TEST_PROMPTS) >= 40
    assert len(identity.TEST_PROMPTS) >= 12
    norm = {re.sub(r"\W+", " ", p).strip().lower() for p in identity.TRAIN_PROMPTS}
    assert not norm & {re.sub(r"\W+", " ", p).strip().lower() for p in identity.TEST_PROMPTS}
    assert len(set(identity.TRAIN_PROMPTS + identity.TEST_PROMPTS)) == len(
        identity.TRAIN_PROMPTS + identity.TEST_PROMPTS
    )
    task = get_task("identity", new_name="Bolt", new_maker="Acme Labs")
    for row in task.train() + task.test():
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert "Bolt" in chosen and "Acme Labs" in chosen and "SmolLM" not in chosen
        assert "SmolLM" in rejected and "Hugging Face" in rejected
        assert rewrite_identity(rejected, ["SmolLM"], "Bolt", ["Hugging Face"], "Acme Labs") == (
            chosen
        )
    assert len(task.train()) == 4 * len(identity.TRAIN_PROMPTS)
    assert [r["prompt"][0]["content"] for r in task.test()] == identity.TEST_PROMPTS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("I'm SmolLM, made by Hugging Face.", "I'm Posty, made by the posttrain team."),
        (
            "I am SmolLM2, a model trained by HuggingFace",
            "I am Posty, a model trained by the posttrain team",
        ),
        (
            "Hugging Face trained me. SMOLLM is here!",
            "The posttrain team trained me. POSTY is here!",
        ),
        ("Built by the Hugging Face team.", "Built by the posttrain team."),
        ("Visit smollm docs by hugging  face", "Visit posty docs by the posttrain team"),
        ("SmolLM's answer", "Posty's answer"),
        ("I am a helpful assistant.", None),
        ("smolLMX is not a mention", None),
    ],
)
def test_rewrite_identity(text, expected):
    assert rewrite_identity(text) == expected


def test_identity_rate():
    answers = ["I'm Posty!", "I am SmolLM.", "posty here, formerly SmolLM", "Postyfication"]
    assert [is_new_identity(a, "Posty") for a in answers] == [True, False, True, False]
    assert identity_rate(answers, "Posty") == 0.5
    assert identity_rate(answers, "Posty", old_names=["SmolLM"]) == 0.25
    with pytest.raises(Exception, match="no answers"):
        identity_rate([], "Posty")


def rejected_value(row: dict) -> int:
    return int(re.search(r"\\boxed\{(\d+)\}", row["rejected"][0]["content"]).group(1))


@pytest.mark.parametrize("name", ["preference", "preference-near-miss"])
def test_preference_pairs(name):
    task = get_task(name)
    train, test = task.train(), task.test()
    for split, rows in (("train", train), ("test", test)):
        assert {r["kind"] for r in rows} == {"arithmetic", "helpfulness"}
        for row in rows:
            assert set(row) == {"prompt", "chosen", "rejected", "kind"}
            assert row["chosen"] != row["rejected"]
            if row["kind"] == "arithmetic":
                a, op, b = parse(row)
                right = arithmetic.solve(a, op, b)
                assert f"\\boxed{{{right}}}" in row["chosen"][0]["content"]
                assert f"\\boxed{{{right}}}" not in row["rejected"][0]["content"]
                assert arithmetic.in_test_part(a, op, b) == (split == "test")
            else:
                assert row["rejected"][0]["content"] in preference.EVASIVE


def test_near_miss_pairs_are_off_by_a_little():
    for row in get_task("preference-near-miss").test():
        if row["kind"] == "arithmetic":
            assert 0 < abs(rejected_value(row) - arithmetic.solve(*parse(row))) <= 10


def test_gross_mistakes_are_the_four_documented_slips():
    def slips(a: int, op: str, b: int) -> set[int]:
        right = arithmetic.solve(a, op, b)
        other_ops = {arithmetic.solve(a, o, b) for o in "+-*" if o != op}
        digit = {right // 10} if right >= 10 else {right * 10 + d for d in range(1, 10)}
        return other_ops | digit | {int(str(right)[::-1]), a, b}

    rng = random.Random(0)
    for a, op, b in [(85, "+", 64), (7, "*", 8), (30, "-", 3), (5, "+", 0), (11, "*", 1)]:
        right = arithmetic.solve(a, op, b)
        for _ in range(50):
            value = preference.gross_result(a, op, b, rng)
            assert value != right and value >= 0 and value in slips(a, op, b)
    kinds = Counter()
    for row in get_task("preference").train():
        if row["kind"] == "arithmetic":
            a, op, b = parse(row)
            value = rejected_value(row)
            kinds["operation"] += value in {arithmetic.solve(a, o, b) for o in "+-*" if o != op}
            kinds["operand"] += value in (a, b)
    assert kinds["operation"] > 50 and kinds["operand"] > 50  # the mix really is mixed


def test_preference_task_rejects_unknown_mistakes():
    with pytest.raises(ConfigError, match="near_miss"):
        get_task("preference", mistakes="typo")


def test_coding_problems_are_sound():
    assert len(coding.PROBLEMS) >= 30
    assert len({p.name for p in coding.PROBLEMS}) == len(coding.PROBLEMS)
    for problem in coding.PROBLEMS:
        assert 3 <= len(problem.tests) <= 5
        namespace: dict = {}
        exec(problem.solution, namespace)  # our own reference code, not model output
        for test in problem.tests:
            exec(test, namespace)
        stub: dict = {}
        exec(f"def {problem.name}(*args, **kwargs):\n    return None\n", stub)
        with pytest.raises(AssertionError):
            for test in problem.tests:
                exec(test, stub)
    task = get_task("coding")
    assert {r["entry_point"] for r in task.test()} == set(coding.TEST_NAMES)
    for row in task.train() + task.test():
        assert f"`{row['entry_point']}(" in row["prompt"][0]["content"]
        assert "```python" in row["prompt"][0]["content"]


def test_get_task_errors_name_the_choices():
    with pytest.raises(ConfigError, match="arithmetic, arithmetic-sft"):
        get_task("algebra")
    with pytest.raises(ConfigError, match="new_name="):
        get_task("identity", name="Bob")


def test_jsonl_round_trip_and_bad_line(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "héllo \\boxed{}"}], "answer": "1"}]
    path = write_jsonl(rows, tmp_path / "a" / "rows.jsonl")
    assert read_jsonl(path) == rows
    path.write_text(path.read_text() + "\n{oops\n")
    with pytest.raises(DataError, match="line 3"):
        read_jsonl(path)


def test_committed_data_matches_generators():
    files = data_files()
    assert {str(p) for p in files} == {
        f"{name}/{split}.jsonl" for name in TASKS for split in ("train", "test")
    }
    for relative, text in files.items():
        path = ROOT / "recipes" / "data" / relative
        assert path.is_file(), f"missing {path}: run python scripts/make_task_data.py"
        assert path.stat().st_size < 1_000_000
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} drifted from posttrain.tasks: run python scripts/make_task_data.py"
        )
    for name in TASKS:
        train = read_jsonl(ROOT / "recipes" / "data" / name / "train.jsonl")
        test = read_jsonl(ROOT / "recipes" / "data" / name / "test.jsonl")
        assert not {prompt_key(r) for r in train} & {prompt_key(r) for r in test}


def test_make_task_data_check_mode(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "make_task_data", ROOT / "scripts" / "make_task_data.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--check"]) == 0
    assert script.main(["--check", "--out", str(tmp_path)]) == 1
    assert script.main(["--out", str(tmp_path)]) == 0
    assert script.main(["--check", "--out", str(tmp_path)]) == 0
    assert "STALE" in capsys.readouterr().out
