"""Several models on the same evaluation, side by side: one table (a row per metric, a column
per model) and a few answers to the same prompts next to each other. What ``posttrain eval
--model A B`` prints and a pipeline's before/after table is built from."""

from __future__ import annotations

import textwrap
from typing import Any

# The headline numbers of each kind of evaluation, in the order a table shows them.
HEADLINE = ("accuracy", "identity_rate", "old_name_rate", "boxed_rate", "mean_sample_accuracy",
            "rewards/total/mean")
LENGTH = ("mean_completion_tokens", "completion_length", "truncated_rate")


def metric_names(results: list[dict[str, Any]]) -> list[str]:
    """The scalar metrics any result has, headline first, then per-function rewards, pass@k /
    maj@k, then length and truncation."""
    present = {k for r in results for k, v in r.items() if _scalar(k, v)}
    rewards = sorted(k for k in present if k.startswith("rewards/") and k not in HEADLINE)
    sampled = sorted((k for k in present if k.startswith(("pass@", "maj@"))),
                     key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
    ordered = [k for k in HEADLINE if k in present] + rewards + sampled
    return ordered + [k for k in LENGTH if k in present]


def comparison_table(results: list[dict[str, Any]], names: list[str] | None = None) -> str:
    """A text table: a row per metric, a column per result (``names`` or each ``model``)."""
    names = names or [str(r.get("model", f"#{i}")) for i, r in enumerate(results)]
    metrics = metric_names(results)
    width = max([len(m) for m in metrics] + [6])
    cols = [max(len(_short(n)), 9) for n in names]
    lines = [f"{'metric':<{width}}" + "".join(f"  {_short(n):>{c}}" for n, c in zip(names, cols))]
    for metric in metrics:
        cells = [format_cell(r.get(metric)) for r in results]
        lines.append(f"{metric:<{width}}" + "".join(f"  {v:>{c}}" for v, c in zip(cells, cols)))
    return "\n".join(lines)


def side_by_side(results: list[dict[str, Any]], n: int = 3, names: list[str] | None = None,
                 width: int = 100) -> str:
    """The first ``n`` prompts with each model's answer (first sample), shortened to a line."""
    names = names or [str(r.get("model", f"#{i}")) for i, r in enumerate(results)]
    if not results or not results[0].get("records"):
        return ""
    blocks = []
    for i, record in enumerate(results[0]["records"][:n]):
        lines = [f"[{i + 1}] {textwrap.shorten(str(record.get('prompt', '')), width)}"]
        for name, result in zip(names, results):
            answers = result.get("records") or []
            lines.append(f"    {_short(name)}: "
                         f"{textwrap.shorten(answer_text(answers[i]) if i < len(answers) else '-', width)}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def answer_text(record: dict[str, Any]) -> str:
    """A record's answer: its completion, or its first sampled completion."""
    if "completion" in record:
        return str(record["completion"])
    completions = record.get("completions") or [""]
    return str(completions[0])


def _scalar(key: str, value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and key not in ("n", "seconds", "seed", "samples_per_prompt", "temperature"))


def format_cell(value: Any) -> str:
    """A table cell: '-' for a missing value, 4 decimals for a rate-sized float."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def _short(name: str, limit: int = 28) -> str:
    """A model name short enough for a column: the tail of a long path."""
    return name if len(name) <= limit else "..." + name[-(limit - 3):]
