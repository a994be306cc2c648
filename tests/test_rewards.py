"""Math / format rewards, reward loading and RewardSet combination."""

from __future__ import annotations

import math
import textwrap
import threading

import pytest

from posttrain.errors import ConfigError, RewardError
from posttrain.rewards import (
    RewardSet,
    boxed_format,
    extract_final_answer,
    load_reward,
    load_reward_set,
    make_format_reward,
    math_reward,
    think_answer_format,
)
from posttrain.rewards.math_reward import answers_match

# (completion, gold, expected reward)
MATH_CASES = [
    ("So the probability is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{1}{2}}", "$\\frac12$", 1.0),
    ("The answer is 1,000.", "1000", 1.0),
    ("\\boxed{1{,}000}", "1000", 1.0),
    ("The total is \\boxed{1000}", "1,000", 1.0),
    ("\\boxed{-7}", "-7", 1.0),
    ("\\boxed{7}", "-7", 0.0),
    ("The answer is \u22124", "-4", 1.0),
    ("The answer is 12.", "12", 1.0),
    ("The answer is 12.", "13", 0.0),
    ("First I guessed \\boxed{3}, but actually it is \\boxed{4}.", "4", 1.0),
    ("First I guessed \\boxed{4}, but actually it is \\boxed{3}.", "4", 0.0),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt2}{2}", 1.0),
    ("\\boxed{\\left(\\frac{1}{2}, \\frac{3}{4}\\right)}", "(1/2, 3/4)", 1.0),
    ("40 + 92 = 136 is the answer to 40 + 92", "132", 0.0),
    ("What is 40 + 92? 40 + 92 = 132? I am not sure. Let me restate: 40 + 92.", "132", 0.0),
    ("", "3", 0.0),
    ("   \n  ", "3", 0.0),
    ("lorem ipsum dolor sit amet", "3", 0.0),
    ("\\boxed{}", "3", 0.0),
    ("\\boxed{banana}", "3", 0.0),
    ("Final Answer: The final answer is $\\dfrac{3}{4}$. I hope it is correct.", "0.75", 1.0),
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72", 1.0),
    ("The answer is $18 \\text{ dollars}$.", "18", 1.0),
    ("She pays 20 dollars first.\nThe answer is 18 dollars.", "18", 1.0),
    ("**Answer:** 42", "42", 1.0),
    ("Final answer:\n12", "12", 1.0),
    ("Solving gives x = 5, so the answer is x = 5", "5", 1.0),
    ("She ate 3/4 of the pie", "0.75", 1.0),
    ("The answer is 3.50", "3.5", 1.0),
    ("The answer is $\\pi$", "\\pi", 1.0),
    ("\\boxed{(1, 2)}", "(1,2)", 1.0),
    ("The answer is B.", "B", 1.0),
    ("\\boxed{\\text{B}}", "B", 1.0),
    ("We get\n\\[ \\frac{7}{2} \\]", "3.5", 1.0),
    ("\\boxed{12}", "#### 12", 1.0),  # gold given as a GSM8K solution
    ("\\boxed{12}", "\\boxed{12}", 1.0),
    ("The answer is 12345678901234567891", "12345678901234567890", 0.0),
    ("It is \\boxed{10\\%}", "10\\%", 1.0),
    ("so 2 + 2 = 4. Then 4 * 3 = 12.\nSo she has 12 apples left.", "12", 1.0),
    ("so 2 + 2 = 4. Then 4 * 3 = 12.\nSo she has 12 apples left.", "4", 0.0),
    # the question copied into the box: math-verify would evaluate it; a number was asked for
    ("\\boxed{47 * 38}", "1786", 0.0),
    ("\\boxed{47 \\times 38}", "1786", 0.0),
    ("The final answer is $47 \\cdot 38$.", "1786", 0.0),
    ("\\boxed{1786 + 0}", "1786", 0.0),
    ("\\boxed{2^{10}}", "1024", 0.0),
    ("\\boxed{-3 - 2}", "-5", 0.0),
    ("\\boxed{1786}", "1786", 1.0),
    ("\\boxed{-5}", "-5", 1.0),
    ("\\boxed{x^2+1}", "x^2 + 1", 1.0),  # a symbolic gold may be an expression
]


@pytest.mark.parametrize(("completion", "gold", "expected"), MATH_CASES)
def test_math_reward_cases(completion, gold, expected):
    assert math_reward([""], [completion], [[]], answer=[gold]) == [expected]


def test_math_reward_batch_none_and_extra_columns():
    out = math_reward(
        ["q1", [{"role": "user", "content": "q2"}], "q3"],
        ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"],
        [[1], [2], [3]],
        answer=["1", None, ""],
        tests=[None, None, None],  # unknown columns are ignored
    )
    assert out == [1.0, None, None]


def test_extract_final_answer():
    assert extract_final_answer("a \\boxed{\\frac{1}{\\sqrt{2}}} b") == "\\frac{1}{\\sqrt{2}}"
    assert extract_final_answer("\\boxed{\\boxed{5}}") == "5"
    assert extract_final_answer("\\boxed{3} and then \\boxed{4") == "3"  # unclosed box skipped
    assert extract_final_answer("The answer is $1,000 per week.") == "1,000"
    assert extract_final_answer("The answer is not obvious.\nI give up") is None
    assert extract_final_answer("no numbers here") is None
    assert extract_final_answer(None) is None


def test_pathological_expression_times_out_and_worker_recovers():
    # sympy would spend minutes (and GBs) on 2^(10^10): the helper is killed at the deadline.
    assert answers_match("2^{10^{10}}", "3", timeout_s=1.0) is False
    assert answers_match("\\frac{6}{4}", "1.5", timeout_s=30.0) is True


def test_math_reward_works_from_threads():
    results = []
    worker = threading.Thread(
        target=lambda: results.append(math_reward([""], ["\\boxed{\\frac{1}{2}}"], [[]],
                                                  answer=["0.5"])))
    worker.start()
    worker.join()
    assert results == [[1.0]]


def test_format_rewards():
    good = "<think>\nlet me see\n</think>\n<answer>4</answer>"
    assert think_answer_format(None, [good, good + " extra", "<answer>4</answer>", ""], None) == [
        1.0, 0.0, 0.0, 0.0]
    custom = make_format_reward(r"^Answer: \d+$", name="answer_line")
    assert custom.__name__ == "answer_line"
    assert custom(None, ["Answer: 12", "Answer: twelve"], None, answer=["12", "12"]) == [1.0, 0.0]
    assert boxed_format(None, ["so \\boxed{3}.", "\\boxed{3} or \\boxed{4}", "none", "\\boxed{3"],
                        None) == [1.0, 0.0, 0.0, 0.0]


# --- loading -------------------------------------------------------------------------------


def test_load_builtins():
    assert load_reward("math") is math_reward
    assert load_reward("think_format") is think_answer_format
    assert load_reward("boxed_format") is boxed_format
    assert load_reward("code").__name__ == "code"
    assert load_reward("code", timeout_s=2.0).timeout_s == 2.0
    fmt = load_reward("format", pattern=r"^\d+$")
    assert fmt(None, ["12", "x"], None) == [1.0, 0.0]


def test_load_errors_name_what_exists(tmp_path):
    with pytest.raises(ConfigError, match="Built-in rewards: math, format"):
        load_reward("maths")
    with pytest.raises(ConfigError, match="needs a path"):
        load_reward("reward_model")
    with pytest.raises(ConfigError, match="takes no options"):
        load_reward("math", foo=1)
    with pytest.raises(ConfigError, match="Allowed options"):
        load_reward("code", timeout=3)
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):
        load_reward("no_such_module_xyz:f")
    missing = tmp_path / "nope.py"
    with pytest.raises(ConfigError, match=f"the file {missing} does not exist"):
        load_reward(f"{missing}:f")
    with pytest.raises(ConfigError, match="no function"):
        load_reward(f"{missing}")


def test_load_module_function():
    fn = load_reward("posttrain.rewards.format_reward:boxed_format")
    assert fn is boxed_format
    with pytest.raises(ConfigError, match="Callables found there: .*boxed_format.*make_format"):
        load_reward("posttrain.rewards.format_reward:nope")


def test_load_file_function(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent("""
        def length_reward(prompts, completions, completion_ids, scale=1.0, **kwargs):
            return [scale * len(c) for c in completions]

        def no_kwargs(prompts, completions, completion_ids):
            return [0.0 for _ in completions]

        VALUE = 3
    """))
    fn = load_reward(f"{path}:length_reward")
    assert fn(None, ["ab", "abc"], None, answer=["x", "y"]) == [2, 3]
    scaled = load_reward(f"{path}:length_reward", scale=0.5)
    assert scaled(None, ["ab"], None) == [1.0]
    assert scaled.__name__ == "length_reward"
    with pytest.raises(ConfigError, match="Callables found there: length_reward, no_kwargs"):
        load_reward(f"{path}:missing")
    with pytest.raises(ConfigError, match=r"must accept \*\*kwargs"):
        load_reward(f"{path}:no_kwargs")
    with pytest.raises(ConfigError, match="is a int, not a function"):
        load_reward(f"{path}:VALUE")


def test_load_reward_set_from_specs():
    rs = load_reward_set([{"name": "math", "weight": 2.0}, "boxed_format"])
    out = rs.score([""], ["\\boxed{4}"], [[]], {"answer": ["4"]})
    assert out.totals == [3.0]
    assert rs.names == ["math", "boxed_format"]
    assert out.metrics()["rewards/math/mean"] == 1.0
    two = load_reward_set(["format", {"name": "format", "pattern": "^x$"}], weights=[1.0, 0.5])
    assert two.names == ["format", "format_2"] and two.weights == [1.0, 0.5]
    with pytest.raises(ConfigError, match="2 reward weights for 1 rewards"):
        load_reward_set(["math"], weights=[1.0, 2.0])


# --- RewardSet -----------------------------------------------------------------------------


def _const(name, values):
    def fn(prompts, completions, completion_ids, **kwargs):
        return values

    fn.__name__ = name
    return fn


def test_reward_set_weighting_and_none():
    rs = RewardSet([_const("a", [1.0, None, None, 0.5]), _const("b", [2.0, 3.0, None, None])],
                   weights=[0.5, 2.0])
    out = rs.score(["p"] * 4, ["c"] * 4, [[]] * 4)
    assert out.totals == [0.5 + 4.0, 6.0, 0.0, 0.25]
    assert out.all_none_rows == 1 and rs.all_none_rows == 1
    assert out.per_function == {"a": [1.0, None, None, 0.5], "b": [2.0, 3.0, None, None]}
    m = out.metrics()
    assert m["rewards/a/mean"] == pytest.approx(0.75)
    assert m["rewards/a/std"] == pytest.approx(0.25)
    assert m["rewards/b/mean"] == pytest.approx(2.5)
    assert m["rewards/total/mean"] == pytest.approx((4.5 + 6.0 + 0.0 + 0.25) / 4)
    assert m["rewards/all_none_rows"] == 1.0
    rs.score(["p"] * 4, ["c"] * 4, [[]] * 4)
    assert rs.all_none_rows == 2  # running counter
    assert rs(["p"] * 4, ["c"] * 4, [[]] * 4) == out.totals  # usable as a reward function


def test_reward_set_passes_columns_and_names_duplicates():
    seen = {}

    def spy(prompts, completions, completion_ids, **columns):
        seen.update(columns)
        return [0.0] * len(completions)

    rs = RewardSet([spy, spy], weights={"spy_2": 3.0})
    rs.score(["p"], ["c"], [[1]], {"answer": ["1"], "tests": [None]})
    assert seen == {"answer": ["1"], "tests": [None]}
    assert rs.names == ["spy", "spy_2"] and rs.weights == [1.0, 3.0]


@pytest.mark.parametrize(("values", "message"), [
    ([1.0], r"'bad' returned 1 values for a batch of 2"),
    ([1.0, float("nan")], r"'bad' returned nan for row 11"),
    ([1.0, math.inf], r"'bad' returned inf for row 11"),
    (["1.0", 2.0], r"'bad' returned '1.0' \(str\) for row 10"),
    ("ab", r"'bad' must return a list"),
])
def test_reward_set_validates_outputs(values, message):
    rs = RewardSet([_const("bad", values)])
    with pytest.raises(RewardError, match=message):
        rs.score(["p", "q"], ["c", "d"], [[], []], row_ids=[10, 11])


def test_raising_reward_names_itself_and_row():
    def exploding(prompts, completions, completion_ids, **kwargs):
        raise KeyError("answer")

    rs = RewardSet([_const("fine", [1.0, 1.0]), exploding])
    with pytest.raises(RewardError, match=r"'exploding' raised KeyError: 'answer'.*row 7") as err:
        rs.score(["p", "q"], ["c", "d"], [[], []], row_ids=[7, 8])
    assert isinstance(err.value.__cause__, KeyError)


def test_reward_set_rejects_bad_config():
    with pytest.raises(RewardError, match="2 weights for 1 reward"):
        RewardSet([_const("a", [])], weights=[1.0, 2.0])
    with pytest.raises(RewardError, match="unknown rewards"):
        RewardSet([_const("a", [])], weights={"b": 1.0})
    with pytest.raises(RewardError, match="'answer' has 1 rows but there are 2"):
        RewardSet([_const("a", [0, 0])]).score(["p", "q"], ["c", "d"], [[], []], {"answer": ["x"]})
