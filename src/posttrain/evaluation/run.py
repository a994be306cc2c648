"""``evaluate(model, task)``: load a model by name, pick the task's rows, score, write answers.

The one entry point behind ``posttrain eval``. Rows come from the task generators
(:mod:`posttrain.tasks`), not from files, so the evaluation works from an installed package
without the repository; they are the same rows as ``recipes/data/<task>/<split>.jsonl``
(the train split is the one drawn with seed 0). ``data=`` scores another file of the same shape.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from posttrain.errors import ConfigError
from posttrain.evaluation.arithmetic import evaluate_arithmetic
from posttrain.evaluation.common import write_records
from posttrain.evaluation.identity import evaluate_identity
from posttrain.evaluation.sampling import evaluate_arithmetic_sampled
from posttrain.tasks import DATA_SEED, get_task, read_jsonl
from posttrain.tasks.identity import NEW_NAME, OLD_NAMES

EVAL_TASKS = ("arithmetic", "identity")


def task_rows(task: str, split: str = "test", data: str | Path | None = None) -> list[dict]:
    """The rows to evaluate on: ``data`` (a jsonl file) if given, else the task's split."""
    if task not in EVAL_TASKS:
        raise ConfigError(f"unknown evaluation task {task!r}; choose one of {', '.join(EVAL_TASKS)}.")
    if data is not None:
        if not Path(data).is_file():
            raise ConfigError(f"evaluation data file not found: {data}")
        return read_jsonl(data)
    if split == "test":
        return get_task(task).test()
    if split == "train":
        return get_task(task).train(seed=DATA_SEED)
    raise ConfigError(f"unknown split {split!r}; use test or train.")


def evaluate(
    model_name_or_folder: str,
    task: str,
    split: str = "test",
    limit: int | None = None,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    output: str | Path | None = None,
    new_name: str = NEW_NAME,
    data: str | Path | None = None,
    dtype: str = "auto",
    progress: bool = False,
    samples: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate a model (alias, hub id, trained folder or LoRA adapter folder) on ``task``.

    ``limit`` keeps the first N rows (the test files interleave levels, so a prefix still covers
    every level). With ``output``, one jsonl line per answer is written there. The result is the
    evaluator's summary plus ``model``, ``split`` and ``seconds``; ``records`` holds every answer.
    ``samples`` > 0 (arithmetic): that many sampled answers per row at ``temperature``, scored as
    pass@k and maj@k (:mod:`posttrain.evaluation.sampling`) instead of one greedy answer.
    """
    from posttrain.models import load_tokenizer, load_trained, tokenizer_name

    rows = task_rows(task, split, data)
    if samples and task != "arithmetic":
        raise ConfigError(f"--samples (pass@k / maj@k) is for the arithmetic task, not {task!r}.")
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit must be >= 1, got {limit}.")
        rows = rows[:limit]
    start = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_name(model_name_or_folder))
    model = load_trained(model_name_or_folder, dtype)
    model.eval()
    if samples:
        result = evaluate_arithmetic_sampled(
            model, tokenizer, rows, samples, temperature, batch_size, max_new_tokens, seed,
            progress=progress,
        )
    elif task == "arithmetic":
        result = evaluate_arithmetic(
            model, tokenizer, rows, batch_size, max_new_tokens, progress=progress
        )
    else:
        result = evaluate_identity(
            model, tokenizer, [row["prompt"] for row in rows], new_name, OLD_NAMES,
            batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress,
        )
    result = {"model": model_name_or_folder, "split": split if data is None else str(data),
              **result, "seconds": round(time.perf_counter() - start, 1)}
    if output is not None:
        write_records(result["records"], output)
    return result


def summary_line(result: dict[str, Any]) -> str:
    """The result as one JSON line without the per-row records (rates rounded to 4 digits)."""
    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    return json.dumps(rounded({k: v for k, v in result.items() if k != "records"}),
                      ensure_ascii=False)


def format_levels(result: dict[str, Any]) -> str:
    """A small text table of per-level accuracy (arithmetic), with the overall row last."""
    levels = result.get("per_level")
    if not levels:
        return ""
    lines = [f"{'level':<8}{'n':>5}{'accuracy':>10}{'boxed':>8}"]
    for level, stats in levels.items():
        lines.append(f"{level:<8}{stats['n']:>5}{stats['accuracy']:>10.1%}"
                     f"{stats['boxed_rate']:>8.1%}")
    lines.append(f"{'all':<8}{result['n']:>5}{result['accuracy']:>10.1%}"
                 f"{result['boxed_rate']:>8.1%}")
    return "\n".join(lines)
