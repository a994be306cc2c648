"""Can a linear score head on a FROZEN model's last-token hidden state rank preference pairs?

    python scripts/probe_reward_features.py --model smollm2-135m-instruct \\
        --data recipes/data/preference

For every layer, fits a Bradley-Terry head (logistic regression on h(chosen) - h(rejected),
features standardised, L2 1e-3, LBFGS) on the train pairs and prints train / held-out pair
accuracy, per `kind` column when the rows have one. A reward model reads exactly such a head on
the last real token, so this is what `posttrain reward` gets before its backbone moves. The
model's own likelihood ranking (sum log pi(chosen) > sum log pi(rejected)) is printed for
comparison. Diagnostic only: docs/dpo.md uses its figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def pair_features(model, tokenizer, path: Path, max_length: int, batch_size: int = 16):
    """Last-token hidden states of every layer [N, L+1, H] for chosen and for rejected, and
    the summed response log-probs [N] of each."""
    from posttrain.algorithms.pairs import collate_pairs, load_pairs
    from posttrain.algorithms.reward import last_token_index
    from posttrain.data.tokenize import IGNORE_INDEX
    from posttrain.ops.logprobs import selective_log_softmax

    pairs = load_pairs(tokenizer, str(path), "train", None, None, max_length)
    chosen, rejected, logp_chosen, logp_rejected = [], [], [], []
    for start in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs[start : start + batch_size], tokenizer.pad_token_id)
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=True)
        rows = torch.arange(batch["input_ids"].shape[0])
        last = last_token_index(batch["attention_mask"])  # [2B]
        hidden = torch.stack(out.hidden_states)[:, rows, last].transpose(0, 1)  # [2B, L+1, H]
        targets = batch["input_ids"][:, 1:]
        logps = selective_log_softmax(out.logits[:, :-1], targets)  # [2B, T-1]
        response = (batch["labels"][:, 1:] != IGNORE_INDEX).float()  # [2B, T-1]
        sums = (logps * response).sum(1)  # [2B]
        n = len(rows) // 2
        chosen.append(hidden[:n]), rejected.append(hidden[n:])
        logp_chosen.append(sums[:n]), logp_rejected.append(sums[n:])
    return (torch.cat(chosen), torch.cat(rejected), torch.cat(logp_chosen),
            torch.cat(logp_rejected))


def fit_head(x: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry weights w for rows x = h(chosen) - h(rejected): min softplus(-x w)."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.softplus(-(x @ w)).mean() + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def by_kind(right: torch.Tensor, kinds: list[str]) -> str:
    parts = [f"{float(right.float().mean()):.3f}"]
    for kind in sorted(set(kinds)):
        mask = torch.tensor([k == kind for k in kinds])
        parts.append(f"{kind} {int(right[mask].sum())}/{int(mask.sum())}")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="recipes/data/preference",
                        help="folder with train.jsonl and test.jsonl preference pairs")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from posttrain.hub import resolve_model
    from posttrain.models import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model),
                                                 dtype=torch.float32).eval()
    data = Path(args.data)
    train = pair_features(model, tokenizer, data / "train.jsonl", args.max_length)
    test = pair_features(model, tokenizer, data / "test.jsonl", args.max_length)
    kinds = [json.loads(line).get("kind", "all") for line in open(data / "test.jsonl")]
    print("likelihood ranking, held out:", by_kind(test[2] > test[3], kinds))
    for layer in range(train[0].shape[1]):
        both = torch.cat([train[0][:, layer], train[1][:, layer]])
        scale = both.std(0) + 1e-6
        x_train = (train[0][:, layer] - train[1][:, layer]) / scale
        x_test = (test[0][:, layer] - test[1][:, layer]) / scale
        w = fit_head(x_train)
        train_acc = float((x_train @ w > 0).float().mean())
        print(f"layer {layer:2d}: train {train_acc:.3f}  held out {by_kind(x_test @ w > 0, kinds)}")


if __name__ == "__main__":
    main()
