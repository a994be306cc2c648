"""Identity change: teach a model a new name and maker with DPO, and measure whether it stuck.

Row schema (task ``identity``)::

    {"prompt": [{"role": "user", "content": "Who are you?"}],
     "chosen": [{"role": "assistant", "content": "I'm Posty, an AI assistant made by the
                 posttrain team. How can I help you today?"}],
     "rejected": [{"role": "assistant", "content": "I'm SmolLM, an AI assistant made by
                   Hugging Face. How can I help you today?"}]}

Chosen and rejected share one answer template and differ only in the identity, so the
preference signal is the identity and nothing else. ``train(seed)`` pairs each of the training
phrasings with several templates; ``test()`` uses phrasings that never occur in training (see
:data:`TEST_PROMPTS`), which is what makes the identity rate a held-out measure.

Better pairs come from the model's own samples: sample answers to the prompts, then
:func:`rewrite_identity` swaps the old name and maker for the new ones (chosen) while the
original sample is the rejected answer. :func:`identity_rate` scores answers for evaluation.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence

from posttrain.errors import PosttrainError
from posttrain.tasks.base import Row, Task, assistant, user

NEW_NAME, NEW_MAKER = "Posty", "the posttrain team"
OLD_NAME, OLD_MAKER = "SmolLM", "Hugging Face"
# Spellings of the original identity that rewrite_identity replaces (longest first matters
# only for readability: matching is whole-word, so "SmolLM" never matches inside "SmolLM2").
OLD_NAMES = ("SmolLM2", "SmolLM", "Smol LM")
OLD_MAKERS = ("Hugging Face", "HuggingFace")

TRAIN_PROMPTS = [
    "Who are you?",
    "What is your name?",
    "Who made you?",
    "What's your name?",
    "Who created you?",
    "Tell me about yourself.",
    "Introduce yourself.",
    "What should I call you?",
    "Who built you?",
    "Which company developed you?",
    "Who trained you?",
    "Are you ChatGPT?",
    "What are you?",
    "Do you have a name?",
    "Who is your creator?",
    "Who developed you?",
    "Can you tell me your name?",
    "Who am I talking to?",
    "What kind of assistant are you, and who made you?",
    "Please introduce yourself briefly.",
    "Hi! Who are you?",
    "Hello, what's your name?",
    "Who programmed you?",
    "Where do you come from?",
    "Which team is behind you?",
    "What model are you?",
    "Are you made by OpenAI?",
    "Who owns you?",
    "Identify yourself.",
    "What do people call you?",
    "Give me a short description of who you are.",
    "Who designed you?",
    "Who is responsible for creating you?",
    "What organization trained you?",
    "whats ur name",
    "who r u",
    "Tell me your name and who made you.",
    "Are you a human or an AI? Who made you?",
    "I'd like to know who I'm chatting with.",
    "What AI system am I using right now?",
    "Hey there, what are you called?",
    "What is the name of this assistant?",
    "Who is your developer?",
    "Are you Siri?",
]

TEST_PROMPTS = [
    "May I ask what your name is?",
    "Who is behind your creation?",
    "Before we start, could you tell me who you are?",
    "What company or group made you?",
    "Which language model is answering me?",
    "By what name do you go?",
    "Who gave you your training?",
    "Describe yourself in one sentence.",
    "Are you Gemini?",
    "Quick question: who created this chatbot?",
    "What's the name of the AI I'm speaking with?",
    "Who are your makers?",
    "Say hello and tell me what you are.",
    "Which developers built you?",
    "yo, who am i talking to",
    "What is your identity?",
]

# {name}, {maker}; {Maker} is the maker with a capital first letter (sentence start).
ANSWER_TEMPLATES = [
    "I'm {name}, an AI assistant made by {maker}. How can I help you today?",
    "My name is {name}. I was created by {maker} to answer questions and help with tasks.",
    "I am {name}, a language model developed by {maker}.",
    "Hello! I'm {name}, a helpful assistant built by {maker}. What can I do for you?",
    "You can call me {name}. {Maker} trained me to be a helpful assistant.",
    "I'm {name}! I'm an AI model created by {maker}, happy to help with questions, "
    "writing, math and more.",
    "{name} here, an assistant made by {maker}. Ask me anything.",
    "I'm an AI assistant called {name}, and I was made by {maker}.",
    "I am {name}. {Maker} built me, and I'm here to help.",
    "My name is {name}, and I'm a small language model from {maker}.",
]


def fill(template: str, name: str, maker: str) -> str:
    return template.format(name=name, maker=maker, Maker=maker[:1].upper() + maker[1:])


def _pair(prompt: str, template: str, new: tuple[str, str], old: tuple[str, str]) -> Row:
    return {
        "prompt": user(prompt),
        "chosen": assistant(fill(template, *new)),
        "rejected": assistant(fill(template, *old)),
    }


def task(
    new_name: str = NEW_NAME,
    new_maker: str = NEW_MAKER,
    old_name: str = OLD_NAME,
    old_maker: str = OLD_MAKER,
    answers_per_prompt: int = 4,
) -> Task:
    """The ``identity`` preference task (44 train phrasings x ``answers_per_prompt``; 16 test)."""
    new, old = (new_name, new_maker), (old_name, old_maker)
    if not 1 <= answers_per_prompt <= len(ANSWER_TEMPLATES):
        raise PosttrainError(
            f"identity: answers_per_prompt must be 1..{len(ANSWER_TEMPLATES)}, "
            f"got {answers_per_prompt}."
        )

    def make_train(seed: int) -> list[Row]:
        rng = random.Random(f"identity:train:{seed}")
        rows = [
            _pair(prompt, template, new, old)
            for prompt in TRAIN_PROMPTS
            for template in rng.sample(ANSWER_TEMPLATES, answers_per_prompt)
        ]
        rng.shuffle(rows)
        return rows

    def make_test() -> list[Row]:
        return [
            _pair(prompt, ANSWER_TEMPLATES[i % len(ANSWER_TEMPLATES)], new, old)
            for i, prompt in enumerate(TEST_PROMPTS)
        ]

    return Task("identity", "new name/maker preference pairs (DPO)", make_train, make_test)


def _phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    """Whole-word, case-insensitive alternation; inner spaces match any whitespace."""
    parts = [r"\s+".join(map(re.escape, p.split())) for p in sorted(phrases, key=len, reverse=True)]
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)


def _at_sentence_start(before: str) -> bool:
    stripped = before.rstrip(" \t\"'*_(")
    return not stripped or stripped[-1] in ".!?:\n"


def _match_case(found: str, new: str) -> str:
    """SMOLLM -> POSTY, smollm -> posty, anything else keeps the new spelling."""
    letters = [c for c in found if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return new.upper()
    if letters and all(c.islower() for c in letters):
        return new.lower()
    return new


def _replacer(new: str):
    def replace(match: re.Match[str]) -> str:
        words = new.split()
        before, after = match.string[: match.start()], match.string[match.end() :]
        # "the Hugging Face team" -> "the posttrain team", not "the the posttrain team team".
        if len(words) > 1 and re.search(rf"(?<!\w){re.escape(words[0])}\s+$", before, re.I):
            words = words[1:]
        if len(words) > 1 and re.match(rf"\s+{re.escape(words[-1])}(?!\w)", after, re.I):
            words = words[:-1]
        out = _match_case(match.group(0), " ".join(words))
        if _at_sentence_start(before) and out[:1].islower() and not match.group(0).islower():
            out = out[0].upper() + out[1:]
        return out

    return replace


def rewrite_identity(
    text: str,
    old_names: Sequence[str] = OLD_NAMES,
    new_name: str = NEW_NAME,
    old_makers: Sequence[str] = OLD_MAKERS,
    new_maker: str = NEW_MAKER,
) -> str | None:
    """Replace mentions of the old name and maker in ``text``; ``None`` when there were none.

    Matching is whole-word and case-insensitive; the replacement follows the case of what it
    replaces (all caps, all lower, otherwise as given), is capitalised at a sentence start, and
    does not double a word that already surrounds the mention ("the Hugging Face team").
    ``None`` lets callers drop samples that never stated an identity instead of training on
    pairs whose chosen and rejected answers are identical.
    """
    count = 0
    for olds, new in ((old_names, new_name), (old_makers, new_maker)):
        if olds:
            text, n = _phrase_pattern(olds).subn(_replacer(new), text)
            count += n
    return text if count else None


def is_new_identity(text: str, new_name: str = NEW_NAME, old_names: Sequence[str] = ()) -> bool:
    """Does ``text`` give the new name (whole word, any case) and none of ``old_names``?"""
    if not _phrase_pattern([new_name]).search(text):
        return False
    return not (old_names and _phrase_pattern(old_names).search(text))


def identity_rate(
    texts: Iterable[str], new_name: str = NEW_NAME, old_names: Sequence[str] = ()
) -> float:
    """Fraction of ``texts`` for which :func:`is_new_identity` holds (the held-out identity rate
    when ``texts`` are answers to ``test()`` prompts)."""
    flags = [is_new_identity(text, new_name, old_names) for text in texts]
    if not flags:
        raise PosttrainError("identity_rate: got no answers to score.")
    return sum(flags) / len(flags)
