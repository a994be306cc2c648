"""Rejection sampling (best-of-K): curate SFT data from the model's own samples.

For each prompt x, sample K completions y_1..y_K, score them with the reward functions, and keep
the best one if its reward reaches ``threshold`` (Touvron et al. 2023, Llama 2, sec. 3.2.3; the
"RAFT" / expert-iteration recipe). SFT on the kept pairs moves the model toward its own best
answers, which lie close to what it already says: a cheap, stable step before (or instead of)
online RL.

Output rows are in the prompt-completion format, so ``posttrain sft`` trains on them directly;
the prompt's other columns and the reward are kept for inspection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from posttrain.data.formats import PromptExample
from posttrain.rewards.combine import RewardSet
from posttrain.rollout.base import SamplingParams, encode_prompts


@dataclass
class RejectionStats:
    prompts: int = 0
    kept: int = 0
    best_reward_sum: float = 0.0
    mean_reward_sum: float = 0.0

    def summary(self) -> dict[str, float]:
        n = max(self.prompts, 1)
        return {
            "prompts": self.prompts,
            "kept": self.kept,
            "keep_rate": self.kept / n,
            "mean_best_reward": self.best_reward_sum / n,
            "mean_sample_reward": self.mean_reward_sum / n,
        }


def best_of_k(rewards: list[float], k: int) -> list[int]:
    """Index (within each group of k) of the highest reward; the first one on ties, so the
    result does not depend on sampling noise beyond the rewards themselves."""
    return [max(range(k), key=lambda j: rewards[g * k + j]) for g in range(len(rewards) // k)]


def rejection_sample(
    generator,
    tokenizer,
    examples: list[PromptExample],
    rewards: RewardSet,
    params: SamplingParams,
    threshold: float | None = None,
    batch_prompts: int = 8,
) -> tuple[list[dict], RejectionStats]:
    """Best-of-``params.n`` per prompt; rows whose best reward is below ``threshold`` (if
    given) are dropped. Returns the kept prompt-completion rows and counts."""
    rows, stats = [], RejectionStats()
    k = params.n
    for start in range(0, len(examples), batch_prompts):
        chunk = examples[start : start + batch_prompts]
        rollout = generator.generate(encode_prompts(tokenizer, [e.prompt for e in chunk]), params)
        columns = {key: [chunk[p].columns.get(key) for p in rollout.prompt_index]
                   for key in sorted({k for e in chunk for k in e.columns})}
        scored = rewards.score([chunk[p].prompt for p in rollout.prompt_index],
                               rollout.completions, rollout.completion_ids, columns)
        for group, best in enumerate(best_of_k(scored.totals, k)):
            group_rewards = scored.totals[group * k : (group + 1) * k]
            stats.prompts += 1
            stats.best_reward_sum += group_rewards[best]
            stats.mean_reward_sum += sum(group_rewards) / k
            if threshold is not None and group_rewards[best] < threshold:
                continue
            row = group * k + best
            if not rollout.completions[row].strip():  # nothing to learn; SFT would reject it
                continue
            example = chunk[group]
            rows.append({**example.columns, "prompt": example.prompt,
                         "completion": rollout.completions[row].strip(),
                         "reward": group_rewards[best],
                         "finish_reason": rollout.finish_reasons[row]})
            stats.kept += 1
    return rows, stats


def write_rows(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sample_file(model: str, data, output: str | Path, rewards, params: SamplingParams,
                threshold: float | None = None, limit: int | None = None,
                batch_prompts: int = 8) -> RejectionStats:
    """Rejection sampling from a data file to a data file: load the prompt rows (the first
    ``limit``) and the reward specs (before the model, so mistakes cost no load), then the
    model, sample, and write the kept rows to ``output``. ``posttrain sample`` and a
    pipeline's ``sample`` stage both run this."""
    from posttrain.data.formats import to_prompt_example, validate_rows
    from posttrain.data.loading import load_rows
    from posttrain.models import load_tokenizer, load_trained, tokenizer_name
    from posttrain.rewards.loading import load_reward_set
    from posttrain.rollout.hf import HFGenerator

    rows = load_rows(data).take(limit)
    examples = validate_rows(rows, to_prompt_example)
    reward_set = load_reward_set(rewards)
    tokenizer = load_tokenizer(tokenizer_name(model))
    policy = load_trained(model)
    policy.eval()
    kept, stats = rejection_sample(HFGenerator(policy, tokenizer), tokenizer, examples,
                                   reward_set, params, threshold, batch_prompts)
    write_rows(kept, output)
    return stats
