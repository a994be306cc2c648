"""Evaluation: arithmetic accuracy and identity rate on the built-in tasks, and any prompt data
scored by any reward functions (pass@k / maj@k from sampled answers).

    from posttrain.evaluation import evaluate
    result = evaluate("smollm2-135m-instruct", "arithmetic", limit=100, output="answers.jsonl")

``evaluate_arithmetic`` / ``evaluate_identity`` take an already loaded model and tokenizer (for
use inside a training run); ``evaluate`` loads by name and is what ``posttrain eval`` calls.
Decoding is greedy, so a score is reproducible. See ``docs/evaluation.md``.
"""

from posttrain.evaluation.arithmetic import evaluate_arithmetic, score_arithmetic
from posttrain.evaluation.common import Answer, greedy_answers, write_records
from posttrain.evaluation.identity import evaluate_identity
from posttrain.evaluation.run import (
    EVAL_TASKS,
    EvalPlan,
    evaluate,
    evaluate_loaded,
    evaluate_model,
    format_levels,
    summary_line,
    task_rows,
)

__all__ = [
    "EVAL_TASKS",
    "Answer",
    "EvalPlan",
    "evaluate",
    "evaluate_arithmetic",
    "evaluate_identity",
    "evaluate_loaded",
    "evaluate_model",
    "format_levels",
    "greedy_answers",
    "score_arithmetic",
    "summary_line",
    "task_rows",
    "write_records",
]
