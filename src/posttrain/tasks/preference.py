"""Preference pairs for reward modelling: correct beats wrong, helpful beats evasive.

Row schema (task ``preference``)::

    {"prompt": [{"role": "user", "content": "What is 85 + 64? Put the final answer in \\boxed{}."}],
     "chosen": [{"role": "assistant", "content": "85 + 64 = 149. The answer is \\boxed{149}."}],
     "rejected": [{"role": "assistant", "content": "85 + 64 = 14. The answer is \\boxed{14}."}],
     "kind": "arithmetic"}

``kind`` is ``"arithmetic"`` (same wording, wrong number: the reward model has to look at the
number, not the style) or ``"helpfulness"`` (a short helpful answer against a refusal such as
"I can't help with that."), so accuracy can be reported per kind.

Two kinds of wrong number (``mistakes=``):

- ``"gross"`` (the default, task ``preference``): the slips a small policy actually makes and a
  reward model must catch in RL: the wrong operation (85 + 64 = 21), a dropped or extra digit
  (= 14; PPO against the first reward model learned to answer exactly that), reversed digits
  (= 941), or an operand echoed back (= 64).
- ``"near_miss"`` (task ``preference-near-miss``, a stress test): off by 1, by 10 or by a small
  random amount (= 148, = 139). Ranking those means recomputing the sum, which
  SmolLM2-135M's reward model did not learn from hundreds of pairs on a CPU (docs/dpo.md).

Split: arithmetic pairs take their questions from the ``arithmetic`` task's train/test parts,
so a reward model trained here has never seen an arithmetic test question; helpfulness pairs use
the first 30 hand-written prompts for training and the last 10 for testing.
"""

from __future__ import annotations

import random

from posttrain.errors import ConfigError
from posttrain.tasks import arithmetic
from posttrain.tasks.base import Row, Task, assistant, user

EVASIVE = [
    "I can't help with that.",
    "I'm sorry, but I can't help with that request.",
    "I'd rather not answer that.",
    "That's not something I can help with.",
]

# fmt: off
HELPFUL = [
    ('Give me a synonym for "happy".', 'A good synonym for "happy" is "joyful"; "cheerful" and '
     '"glad" also work.'),
    ("How many days are in a leap year?", "A leap year has 366 days; the extra day is February 29."),
    ("What is the boiling point of water at sea level in Celsius?",
     "At sea level, water boils at 100 degrees Celsius."),
    ('Translate "thank you" into Spanish.', '"Thank you" in Spanish is "gracias".'),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("Suggest a name for a pet goldfish.", 'How about "Bubbles"? "Goldie" and "Finn" are fun too.'),
    ("How do I reverse a list in Python?",
     "Call `my_list.reverse()` to reverse it in place, or use `my_list[::-1]` for a reversed copy."),
    ('What is the plural of "mouse"?', 'The plural of "mouse" is "mice".'),
    ("Name three primary colors.", "Red, yellow and blue are the traditional primary colors."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ('What is the opposite of "ancient"?', 'The usual opposite of "ancient" is "modern".'),
    ("Write a one-sentence birthday wish for a friend.",
     "Happy birthday! Wishing you a year full of laughter and everything that makes you smile."),
    ("What gas do plants absorb from the air?",
     "Plants absorb carbon dioxide from the air and use it in photosynthesis."),
    ("How many minutes are in three hours?", "Three hours have 180 minutes (3 x 60)."),
    ("What is the largest planet in our solar system?",
     "Jupiter is the largest planet in our solar system."),
    ("Give me a tip for falling asleep faster.",
     "Keep a regular bedtime and put screens away half an hour before sleep; a cool, dark room "
     "helps too."),
    ("What does CPU stand for?", "CPU stands for central processing unit."),
    ("Convert 2 kilometers to meters.", "2 kilometers is 2,000 meters."),
    ('Who wrote "Romeo and Juliet"?', '"Romeo and Juliet" was written by William Shakespeare.'),
    ("What is the freezing point of water in Fahrenheit?",
     "Water freezes at 32 degrees Fahrenheit."),
    ("Write a haiku about rain.",
     "Soft rain on the roof\nthe garden drinks in silence\npuddles hold the sky"),
    ("How do I make a string uppercase in Python?",
     'Call its `upper()` method: `"hello".upper()` returns `"HELLO"`.'),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("How many continents are there?",
     "There are seven continents: Africa, Antarctica, Asia, Australia, Europe, North America "
     "and South America."),
    ("Recommend a way to practice a new language every day.",
     "Spend 15 minutes a day on flashcards and read or listen to something short in the "
     "language."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("Explain what a noun is in one sentence.",
     'A noun is a word that names a person, place, thing or idea, such as "teacher", "city" or '
     '"freedom".'),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest ocean on Earth."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What's a good way to start an email to a colleague?",
     'A friendly, simple opening works well, for example: "Hi Sam, I hope your week is going '
     'well."'),
    # --- held out for test() ---
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ('Give me an antonym for "generous".', 'An antonym for "generous" is "stingy".'),
    ("How many hours are in a week?", "A week has 168 hours (7 x 24)."),
    ("What does HTML stand for?", "HTML stands for HyperText Markup Language."),
    ("How do I get the length of a list in Python?",
     "Use the built-in `len()` function: `len([1, 2, 3])` returns 3."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("Suggest a healthy snack.", "An apple with a handful of almonds is a quick, healthy snack."),
    ('What is the past tense of "run"?', 'The past tense of "run" is "ran".'),
    ("How many centimeters are in a meter?", "There are 100 centimeters in a meter."),
    ("Write a short motivational sentence.",
     "Small steps every day add up to big results, so keep going."),
]
# fmt: on
N_HELPFUL_TRAIN = 30


def near_miss_result(a: int, op: str, b: int, rng: random.Random) -> int:
    """A near miss: off by one, off by ten (a carry slip), or a small random error; never the
    true value and never negative."""
    right = arithmetic.solve(a, op, b)
    while True:
        delta = rng.choice([-1, 1, -10, 10, rng.randint(-9, 9)])
        if delta and right + delta >= 0:
            return right + delta


def gross_result(a: int, op: str, b: int, rng: random.Random) -> int:
    """A gross slip, one of four kinds picked at random: the wrong operation, the last digit
    dropped (or a digit appended to a one-digit result), the digits reversed, or an operand
    echoed back. Never the true value and never negative (kinds that would be are redrawn)."""
    right = arithmetic.solve(a, op, b)
    while True:
        kind = rng.choice(["operation", "digit", "reversed", "operand"])
        if kind == "operation":
            value = arithmetic.solve(a, rng.choice([o for o in "+-*" if o != op]), b)
        elif kind == "digit":
            value = right // 10 if right >= 10 else right * 10 + rng.randint(1, 9)
        elif kind == "reversed":
            value = int(str(right)[::-1])
        else:
            value = rng.choice([a, b])
        if value != right and value >= 0:
            return value


MISTAKES = {"gross": gross_result, "near_miss": near_miss_result}


def _arithmetic_pairs(split: str, n: int, seed: int, mistakes: str) -> list[Row]:
    wrong_result = MISTAKES[mistakes]
    # near_miss keeps the seed string of the first release, so its files stay byte-identical
    # and the figures measured on them (docs/dpo.md) stay reproducible.
    tag = "preference" if mistakes == "near_miss" else f"preference:{mistakes}"
    rng = random.Random(f"{tag}:{split}:{seed}")
    rows = []
    for _, a, op, b in arithmetic.problems(split, n, seed):
        rows.append(
            {
                "prompt": user(arithmetic.question_text(a, op, b)),
                "chosen": assistant(arithmetic.worked_answer(a, op, b)),
                "rejected": assistant(
                    arithmetic.worked_answer(a, op, b, wrong_result(a, op, b, rng))
                ),
                "kind": "arithmetic",
            }
        )
    return rows


def _helpful_pairs(items: list[tuple[str, str]], per_prompt: int, rng: random.Random) -> list[Row]:
    return [
        {
            "prompt": user(prompt),
            "chosen": assistant(answer),
            "rejected": assistant(refusal),
            "kind": "helpfulness",
        }
        for prompt, answer in items
        for refusal in rng.sample(EVASIVE, per_prompt)
    ]


def task(
    arithmetic_train: int = 400,
    arithmetic_test: int = 40,
    refusals_per_prompt: int = 2,
    mistakes: str = "gross",
) -> Task:
    """The ``preference`` task: arithmetic pairs plus helpful-vs-evasive pairs, shuffled.
    ``mistakes`` ("gross" or "near_miss") picks how the rejected arithmetic answers are wrong."""
    if mistakes not in MISTAKES:
        raise ConfigError(
            f"unknown mistakes={mistakes!r} for the preference task; use one of: "
            f"{', '.join(MISTAKES)}."
        )

    def make(split: str, seed: int) -> list[Row]:
        rng = random.Random(f"preference:helpful:{split}:{seed}")
        if split == "train":
            rows = _arithmetic_pairs("train", arithmetic_train, seed, mistakes)
            rows += _helpful_pairs(HELPFUL[:N_HELPFUL_TRAIN], refusals_per_prompt, rng)
        else:
            rows = _arithmetic_pairs("test", arithmetic_test, seed, mistakes)
            rows += _helpful_pairs(HELPFUL[N_HELPFUL_TRAIN:], refusals_per_prompt, rng)
        rng.shuffle(rows)
        return rows

    name = "preference" if mistakes == "gross" else "preference-near-miss"
    return Task(
        name=name,
        description=f"correct-vs-wrong ({mistakes}) arithmetic and helpful-vs-evasive pairs "
        "(reward model)",
        make_train=lambda seed: make("train", seed),
        make_test=lambda: make("test", arithmetic.TEST_SEED),
    )


def near_miss_task(
    arithmetic_train: int = 400, arithmetic_test: int = 40, refusals_per_prompt: int = 2
) -> Task:
    """The ``preference-near-miss`` stress test: like ``preference`` but every wrong arithmetic
    answer is a near miss (off by 1, 10 or a few), which only recomputing the sum can catch."""
    return task(arithmetic_train, arithmetic_test, refusals_per_prompt, mistakes="near_miss")
