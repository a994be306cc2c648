"""Identity rate: how often the model, asked who it is, answers with its new name.

Scored by :func:`posttrain.tasks.identity.identity_rate` on greedy answers to prompts the DPO
identity data never trains on (the ``identity`` task's test phrasings), so a high rate means the
new name generalised rather than that the training prompts were memorised. An answer naming both
the new and an old identity ("I'm Posty, also known as SmolLM") does not count when
``old_names`` is given. A few answers are kept in the summary: the rate alone hides *how* the
model talks about itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.evaluation.common import Prompt, greedy_answers, prompt_text
from posttrain.rollout.base import Generator
from posttrain.tasks.identity import NEW_NAME, OLD_NAMES, identity_rate, is_new_identity

N_SAMPLES = 3  # answers shown in the summary


def evaluate_identity(
    model: Any,
    tokenizer: Any,
    prompts: list[Prompt],
    new_name: str = NEW_NAME,
    old_names: Sequence[str] = OLD_NAMES,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    generator: Generator | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Greedy-answer ``prompts`` (strings or message lists) and measure the identity rate.

    Returns ``identity_rate``, ``old_name_rate`` (answers still naming an old identity),
    ``samples`` (the first few prompt/answer pairs) and ``records`` (prompt, completion,
    correct = names the new identity).
    """
    answers = greedy_answers(
        model, tokenizer, list(prompts), batch_size, max_new_tokens,
        generator=generator, progress=progress,
    )
    texts = [a.text for a in answers]
    records = [
        {
            "prompt": prompt_text(prompt),
            "completion": answer.text,
            "correct": is_new_identity(answer.text, new_name, old_names),
            "tokens": answer.tokens,
            "finish_reason": answer.finish_reason,
        }
        for prompt, answer in zip(prompts, answers)
    ]
    old_rate = (
        sum(any(is_new_identity(t, old) for old in old_names) for t in texts) / len(texts)
        if old_names else 0.0
    )
    return {
        "task": "identity",
        "n": len(records),
        "new_name": new_name,
        "identity_rate": identity_rate(texts, new_name, old_names),
        "old_name_rate": old_rate,
        "mean_completion_tokens": sum(a.tokens for a in answers) / len(answers),
        "truncated_rate": sum(a.finish_reason == "length" for a in answers) / len(answers),
        "samples": [{"prompt": r["prompt"], "completion": r["completion"]}
                    for r in records[:N_SAMPLES]],
        "records": records,
    }
