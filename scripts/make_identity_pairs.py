"""Build on-policy identity pairs: the model's own answers (rejected) and the same answers with the
identity changed (chosen). Writes recipes/data/identity-sampled/train.jsonl.

    python scripts/make_identity_pairs.py --threads 1           # SmolLM2-135M-Instruct, seed 0
    python scripts/make_identity_pairs.py --model Qwen/Qwen2.5-0.5B-Instruct \
        --old-names Qwen --old-makers "Alibaba Cloud" --out data/identity-qwen/train.jsonl

Why sampled pairs: template pairs ("I am Posty ..." vs "I am SmolLM ...") are far from what the
model actually says, so DPO can drive their loss to ~0 by making the *template* rejected answer
unlikely while the model's real answers ("My name is Elena, ...") never change. Sampling the
model's answers to the TRAIN identity prompts puts the rejected side where the policy is, and the
chosen side one edit away from it (the recipe of the DeepLearning.AI post-training course).

How a chosen answer is made from one sampled answer (see :func:`build_pair`):

1. The answer is cut to its first ``max_sentences`` complete sentences (an unfinished tail, from
   hitting the token limit, is dropped; a sample with no complete sentence at all, e.g. a
   repetition loop, is kept as it is). The rejected side is this cut answer.
2. Already names the new identity -> no pair (nothing to prefer).
3. Names the old identity (``rewrite_identity`` finds "SmolLM" or "Hugging Face") -> chosen is
   the rewritten answer; when only the maker was named (no name to swap), rule 4 is then applied
   to the rewritten answer so that the chosen answer always gives the new name.
4. Otherwise (SmolLM2 mostly invents an identity: "My name is Elena", "called Nova", "Abe, the
   one who created you", or talks about something else) -> chosen = leading greetings
   ("Hello!") + an introduction sentence ("I'm Posty, an AI assistant made by the posttrain
   team.") + the rest. The introduction REPLACES the first sentence: the prompts are all identity
   questions, so the first sentence is where the model answers them, whatever its wording
   (keyword tests for "is this a self-introduction?" missed 86 of 220 of SmolLM2's answers, and
   a prefix left the invented identity right after the new one). Later sentences that give the
   speaker a name ("my name is", "called", "known as", "I'm Elena") or are unfinished are
   dropped, so the chosen answer never contradicts itself. An answer that is only a greeting
   gets the introduction after it.

Both sides keep the sample's remaining sentences, so the pair differs in the identity and little
else. The system prompt: prompts carry only the user turn, so SmolLM2's chat template adds its
default system prompt ("You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
here, in DPO training and in ``posttrain eval --task identity`` alike: the claim is about a user
who just chats, with the template's default system turn.

Deterministic for a given seed, model, torch version and thread count (sampling uses a private
seeded generator; CPU matmul results can differ across thread counts).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from posttrain.tasks.base import assistant, read_jsonl, user, write_jsonl
from posttrain.tasks.identity import (
    NEW_MAKER,
    NEW_NAME,
    OLD_MAKERS,
    OLD_NAMES,
    TRAIN_PROMPTS,
    is_new_identity,
    rewrite_identity,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "recipes" / "data" / "identity-sampled" / "train.jsonl"

# Introductions used when the answer does not name the old identity; {name}, {maker}.
INTROS = (
    "I'm {name}, an AI assistant made by {maker}.",
    "My name is {name}, and I was created by {maker}.",
    "I am {name}, an AI assistant developed by {maker}.",
)

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_ABBREVIATION = re.compile(r"(?<!\w)(dr|mr|mrs|ms|prof|st|sr|jr|vs|etc|e\.g|i\.e|inc|ltd|co|no)\.$",
                           re.IGNORECASE)
_GREETING = re.compile(r"^(hi|hello|hey|greetings|hi there|hello there|hey there)\b[\s,!.]*"
                       r"(there|friend|again)?[\s!.]*$", re.IGNORECASE)
# A sentence that gives the speaker some name ("my name is Elena", "called Nova", "I'm Elena").
_NAME_PHRASE = re.compile(r"\b(my name is|call me|called|named|known as)\b", re.IGNORECASE)
_I_AM_NAME = re.compile(r"\bI(?:'m|’m| am) ([A-Z][a-z]+)\b")
_NOT_NAMES = {"A", "An", "The", "Here", "Happy", "Glad", "Not", "Just", "So", "Sorry", "Always",
              "Really", "Very", "Also", "Still", "Sure", "Afraid", "Unable", "Able", "Excited"}


@dataclass
class Pair:
    """One preference row before it becomes JSON; ``how`` is rewrite, intro-replace,
    intro-prefix or rewrite+intro-* (for the counts the script prints)."""

    prompt: str
    chosen: str
    rejected: str
    how: str

    def row(self) -> dict:
        return {"prompt": user(self.prompt), "chosen": assistant(self.chosen),
                "rejected": assistant(self.rejected), "how": self.how}


def split_sentences(text: str) -> list[str]:
    """Sentences ending in . ! or ? (plus an unfinished tail, if any), whitespace-trimmed; a
    title or abbreviation ("Dr.", "e.g.") does not end a sentence."""
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(text.strip()):
        piece = piece.strip()
        if not piece:
            continue
        if sentences and _ABBREVIATION.search(sentences[-1]):
            sentences[-1] += " " + piece
        else:
            sentences.append(piece)
    return sentences


def is_complete(sentence: str) -> bool:
    return bool(re.search(r"[.!?][\"')\]]*$", sentence))


def cut_answer(text: str, max_sentences: int) -> str:
    """The first ``max_sentences`` complete sentences (a leading "Hello!" does not count); the
    text itself when none is complete."""
    kept, counted = [], 0
    for sentence in split_sentences(text):
        if not is_complete(sentence) or counted == max_sentences:
            break
        kept.append(sentence)
        counted += not _GREETING.match(sentence)
    return " ".join(kept) if kept else text.strip()


def claims_other_name(sentence: str) -> bool:
    """Does the sentence give the speaker a name ("I'm Elena", "my name is", "called Nova")?"""
    if _NAME_PHRASE.search(sentence):
        return True
    return any(m.group(1) not in _NOT_NAMES for m in _I_AM_NAME.finditer(sentence))


def introduce(answer: str, intro: str) -> tuple[str, str]:
    """Chosen text for an answer that never names the old identity, and how it was made: the
    first sentence after any greetings is replaced by ``intro``; later sentences that give the
    speaker a name, or are unfinished, are dropped."""
    sentences = split_sentences(answer)
    head = []
    while sentences and _GREETING.match(sentences[0]):
        head.append(sentences.pop(0))
    how = "intro-replace" if sentences else "intro-prefix"
    rest = [s for s in sentences[1:] if is_complete(s) and not claims_other_name(s)]
    return " ".join([*head, intro, *rest]), how


def build_pair(
    prompt: str,
    answer: str,
    intro: str,
    *,
    new_name: str = NEW_NAME,
    new_maker: str = NEW_MAKER,
    old_names: tuple[str, ...] = OLD_NAMES,
    old_makers: tuple[str, ...] = OLD_MAKERS,
    max_sentences: int = 2,
) -> Pair | None:
    """A pair from one sampled ``answer``, or None when it already names ``new_name`` or is empty.

    ``intro`` is the introduction sentence (already filled in) used when the answer does not name
    the old identity. See the module docstring for the rules.
    """
    rejected = cut_answer(answer, max_sentences)
    if not rejected or is_new_identity(rejected, new_name):
        return None
    rewritten = rewrite_identity(rejected, old_names, new_name, old_makers, new_maker)
    if rewritten is not None and is_new_identity(rewritten, new_name):
        chosen, how = rewritten, "rewrite"
    elif rewritten is not None:  # only the maker was named: "a proud member of the HF team"
        chosen, how = introduce(rewritten, intro)
        how = f"rewrite+{how}"
    else:
        chosen, how = introduce(rejected, intro)
    if chosen == rejected:
        return None
    return Pair(prompt, chosen, rejected, how)


def fill_intro(template: str, name: str, maker: str) -> str:
    return template.format(name=name, maker=maker)


def sample_answers(model_name: str, prompts: list[str], samples: int, temperature: float,
                   max_new_tokens: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, answer, kind) for a greedy answer and ``samples`` sampled ones per prompt."""
    import torch

    from posttrain.models import load_tokenizer, load_trained
    from posttrain.rollout.base import SamplingParams, encode_prompts
    from posttrain.rollout.hf import HFGenerator

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model_name)
    model = load_trained(model_name)
    model.eval()
    generator = HFGenerator(model, tokenizer)
    ids = encode_prompts(tokenizer, prompts)
    out: list[tuple[str, str, str]] = []
    runs = [("greedy", SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens))]
    if samples:
        runs.append((f"t{temperature:g}", SamplingParams(
            n=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)))
    for kind, params in runs:
        start = time.perf_counter()
        rollout = generator.generate(ids, params)
        print(f"{kind}: {len(rollout)} answers in {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
        out += [(prompts[i], text.strip(), kind)
                for i, text in zip(rollout.prompt_index, rollout.completions)]
    return out


def build_pairs(answers: list[tuple[str, str, str]], seed: int, new_name: str, new_maker: str,
                max_sentences: int, old_names: tuple[str, ...] = OLD_NAMES,
                old_makers: tuple[str, ...] = OLD_MAKERS) -> tuple[list[Pair], Counter]:
    """Pairs from sampled answers, deduplicated on (prompt, rejected); counts of what happened."""
    rng = random.Random(f"identity-pairs:{seed}")
    pairs, seen, counts = [], set(), Counter()
    for prompt, answer, _kind in answers:
        intro = fill_intro(rng.choice(INTROS), new_name, new_maker)
        pair = build_pair(prompt, answer, intro, new_name=new_name, new_maker=new_maker,
                          old_names=old_names, old_makers=old_makers,
                          max_sentences=max_sentences)
        if pair is None:
            counts["skipped (empty or already new name)"] += 1
            continue
        if (pair.prompt, pair.rejected) in seen:
            counts["skipped (duplicate)"] += 1
            continue
        seen.add((pair.prompt, pair.rejected))
        counts[pair.how] += 1
        pairs.append(pair)
    rng.shuffle(pairs)
    return pairs, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="alias, hub id or folder whose answers are sampled")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=4,
                        help="sampled answers per prompt (plus one greedy answer)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--max-sentences", type=int, default=2,
                        help="answers are cut to this many complete sentences")
    parser.add_argument("--new-name", default=NEW_NAME)
    parser.add_argument("--new-maker", default=NEW_MAKER)
    parser.add_argument("--old-names", nargs="+", default=list(OLD_NAMES),
                        help="names rewritten to --new-name (Qwen: --old-names Qwen)")
    parser.add_argument("--old-makers", nargs="+", default=list(OLD_MAKERS),
                        help='makers rewritten to --new-maker (Qwen: --old-makers "Alibaba Cloud")')
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--save-answers", type=Path,
                        help="also write the raw sampled answers here (jsonl)")
    parser.add_argument("--from-answers", type=Path,
                        help="build pairs from answers saved by --save-answers (no sampling)")
    args = parser.parse_args(argv)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.from_answers:
        answers = [(r["prompt"], r["answer"], r["kind"]) for r in read_jsonl(args.from_answers)]
    else:
        answers = sample_answers(args.model, list(TRAIN_PROMPTS), args.samples,
                                 args.temperature, args.max_new_tokens, args.seed)
    if args.save_answers:
        write_jsonl([{"prompt": p, "answer": a, "kind": k} for p, a, k in answers],
                    args.save_answers)
    pairs, counts = build_pairs(answers, args.seed, args.new_name, args.new_maker,
                                args.max_sentences, tuple(args.old_names),
                                tuple(args.old_makers))
    write_jsonl([p.row() for p in pairs], args.out)
    print(f"{len(answers)} answers to {len(TRAIN_PROMPTS)} train prompts -> {len(pairs)} pairs "
          f"in {args.out} ({time.perf_counter() - start:.0f} s)")
    for key, value in sorted(counts.items()):
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
