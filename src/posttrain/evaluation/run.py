"""``evaluate(model, ...)``: load a model by name, pick the rows, answer, score, write answers.

The one entry point behind ``posttrain eval`` and a pipeline's evaluations. What to evaluate
on is an :class:`EvalPlan`: a built-in task (``arithmetic``: accuracy; ``identity``: identity
rate), whose rows come from the task generators (:mod:`posttrain.tasks`), not from files, so the
evaluation works from an installed package without the repository (they are the same rows as
``recipes/data/<task>/<split>.jsonl``; the train split is the one drawn with seed 0); or any
prompt file scored by any reward functions (:mod:`posttrain.evaluation.reward_eval`, the code
the online trainers' periodic evaluation runs too). Greedy by default; ``samples`` > 0 draws
that many answers per prompt for pass@k and maj@k.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.errors import ConfigError
from posttrain.evaluation.arithmetic import evaluate_arithmetic
from posttrain.evaluation.common import write_records
from posttrain.evaluation.identity import N_SAMPLES, evaluate_identity
from posttrain.evaluation.reward_eval import SUCCESS_THRESHOLD
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
    task: str | None = None,
    split: str = "test",
    limit: int | None = None,
    *,
    rewards: Sequence | None = None,
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
    success_threshold: float = SUCCESS_THRESHOLD,
) -> dict[str, Any]:
    """Evaluate a model (alias, hub id, trained folder or LoRA adapter folder) on a task or
    on ``data`` with ``rewards`` (see :class:`EvalPlan`); :func:`evaluate_model` does the work."""
    plan = EvalPlan(task, split, limit, rewards, data, batch_size, max_new_tokens, new_name,
                    samples, temperature, seed, success_threshold)
    return evaluate_model(model_name_or_folder, plan, output=output, dtype=dtype,
                          progress=progress)


def evaluate_model(model_name_or_folder: str, plan: EvalPlan, *,
                   output: str | Path | None = None, dtype: str = "auto",
                   progress: bool = False) -> dict[str, Any]:
    """Load the model, then :func:`evaluate_loaded`; the result also names the ``model`` and
    the ``seconds`` taken. With ``output``, one jsonl line per prompt is written there."""
    result = evaluate_plans(model_name_or_folder, [plan], dtype=dtype, progress=progress)[0]
    if output is not None:
        write_records(result["records"], output)
    return result


def evaluate_plans(model_name_or_folder: str, plans: Sequence[EvalPlan], *,
                   dtype: str = "auto", progress: bool = False) -> list[dict[str, Any]]:
    """Several plans on one model, loaded once (every plan's rows are checked before)."""
    from posttrain.models import load_tokenizer, load_trained, tokenizer_name

    all_rows = [plan.rows() for plan in plans]  # bad arguments fail before the model loads
    start = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_name(model_name_or_folder))
    model = load_trained(model_name_or_folder, dtype)
    model.eval()
    results = []
    for plan, rows in zip(plans, all_rows):
        result = {"model": model_name_or_folder,
                  **evaluate_loaded(model, tokenizer, plan, rows, progress=progress)}
        result["seconds"] = round(time.perf_counter() - start, 1)  # the load counts in the first
        start = time.perf_counter()
        results.append(result)
    return results


@dataclass
class EvalPlan:
    """What to evaluate on and how: a built-in ``task`` (its rows, or ``data`` of the same
    shape) scored its own way, or any prompt ``data`` (``prompt`` / ``messages`` rows plus the
    columns the rewards read) scored by ``rewards`` (specs as in a recipe's ``rewards:``;
    with a task they replace its scoring). ``samples`` > 0: that many sampled answers per
    prompt at ``temperature`` (pass@k, maj@k), else one greedy answer."""

    task: str | None = None
    split: str = "test"
    limit: int | None = None
    rewards: Sequence | None = None
    data: str | Path | None = None
    batch_size: int = 16
    max_new_tokens: int = 128
    new_name: str = NEW_NAME
    samples: int = 0
    temperature: float = 1.0
    seed: int = 0
    success_threshold: float = SUCCESS_THRESHOLD

    def rows(self) -> list[dict]:
        """The rows, checked (with the settings) before any model loads."""
        if self.task is None and (self.data is None or not self.rewards):
            raise ConfigError("evaluation needs a built-in task (arithmetic, identity) or "
                              "prompt data with reward functions (--data FILE --rewards math).")
        if self.samples < 0 or (self.samples and self.temperature <= 0):
            raise ConfigError(f"samples={self.samples}, temperature={self.temperature}: samples "
                              "must be >= 0 and sampling needs a temperature > 0.")
        if self.samples and self.task == "identity" and not self.rewards:
            raise ConfigError("--samples (pass@k / maj@k) needs a reward to decide correctness; "
                              "the identity task is evaluated greedily.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}.")
        if self.rewards:  # names and imports (a reward model loads when it is used)
            from posttrain.rewards.loading import load_reward_set

            load_reward_set([spec for spec in self.rewards if isinstance(spec, str)])
        if self.task is not None:
            rows = task_rows(self.task, self.split, self.data)
        else:
            from posttrain.data.loading import load_rows

            rows = load_rows(str(self.data)).rows
        rows = rows[: self.limit] if self.limit else rows
        if not rows:
            raise ConfigError(f"no rows to evaluate in {self.data or self.task + '/' + self.split}.")
        return rows

    def source(self) -> str:
        return str(self.data) if self.data is not None else self.split


def evaluate_loaded(model, tokenizer, plan: EvalPlan, rows: list[dict] | None = None, *,
                    generator=None, progress: bool = False) -> dict[str, Any]:
    """Evaluate an already loaded model (inside a notebook, a pipeline, a training run):
    the summary (accuracy / identity rate / mean reward per function, pass@k and maj@k with
    samples, length, truncation), ``samples`` (a few answers) and ``records`` (every answer)."""
    rows = plan.rows() if rows is None else rows
    where = {"split": plan.source()}
    if plan.rewards:
        return {"task": plan.task or "rewards", **where,
                **_evaluate_with_rewards(model, tokenizer, plan, rows, generator, progress)}
    if plan.samples:
        return {**where, **evaluate_arithmetic_sampled(
            model, tokenizer, rows, plan.samples, plan.temperature, plan.batch_size,
            plan.max_new_tokens, plan.seed, generator=generator, progress=progress)}
    if plan.task == "arithmetic":
        return {**where, **evaluate_arithmetic(model, tokenizer, rows, plan.batch_size,
                                               plan.max_new_tokens, generator, progress)}
    return {**where, **evaluate_identity(
        model, tokenizer, [row["prompt"] for row in rows], plan.new_name, OLD_NAMES,
        batch_size=plan.batch_size, max_new_tokens=plan.max_new_tokens, generator=generator,
        progress=progress)}


def _evaluate_with_rewards(model, tokenizer, plan: EvalPlan, rows: list[dict], generator,
                           progress: bool) -> dict[str, Any]:
    from posttrain.data.formats import to_prompt_example
    from posttrain.evaluation.common import answer_groups
    from posttrain.evaluation.reward_eval import records, score_groups, summarise
    from posttrain.rewards.loading import load_reward_set
    from posttrain.rollout.base import SamplingParams

    examples = [to_prompt_example(row, f"{plan.source()}, row {i + 1}")
                for i, row in enumerate(rows)]
    reward_set = load_reward_set(list(plan.rewards))
    first = examples[0]
    reward_set.check(first.prompt, first.columns, f"row 1 of {plan.source()}", first.original)
    params = SamplingParams(n=max(plan.samples, 1), max_new_tokens=plan.max_new_tokens,
                            temperature=plan.temperature if plan.samples else 0.0,
                            seed=plan.seed)
    groups = answer_groups(model, tokenizer, [e.prompt for e in examples], params,
                           plan.batch_size, generator, progress)
    scored = score_groups(examples, groups, reward_set)
    every = records(scored)
    return {"n": len(rows), "rewards": list(reward_set.names),
            **({"samples_per_prompt": plan.samples, "temperature": plan.temperature}
               if plan.samples else {}),
            **summarise(scored, plan.success_threshold),
            "samples": every[:N_SAMPLES], "records": every}


def summary_line(result: dict[str, Any]) -> str:
    """The result as one JSON line without the per-row records and sample answers (those are
    printed side by side; rates rounded to 4 digits)."""
    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    return json.dumps(rounded({k: v for k, v in result.items()
                               if k not in ("records", "samples")}),
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
