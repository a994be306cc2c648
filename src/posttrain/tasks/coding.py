"""Small Python function tasks checked by unit tests: the verifiable coding task.

Row schema (task ``coding``)::

    {"prompt": [{"role": "user", "content": "Write a Python function `add(a, b)` that returns
                 the sum of a and b. Put the code in a ```python block."}],
     "tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", ...],
     "entry_point": "add"}

A completion passes when the code in its ```python block, followed by every line of ``tests``,
runs without error (run it in the sandboxed code reward, never in-process). Each problem also
has a reference ``solution`` here, used by the test-suite to prove the tests are right; it is not
written into the rows.

Split: the problems named in :data:`TEST_NAMES` form the test set; the others are the training
set, whose order ``train(seed)`` shuffles.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from posttrain.tasks.base import Row, Task, user


@dataclass(frozen=True)
class Problem:
    signature: str  # "add(a, b)"
    does: str  # completes "Write a Python function `add(a, b)` that ..."
    tests: tuple[str, ...]
    solution: str

    @property
    def name(self) -> str:
        return self.signature.split("(")[0]

    def prompt(self) -> str:
        return (
            f"Write a Python function `{self.signature}` that {self.does}. "
            "Put the code in a ```python block."
        )

    def row(self) -> Row:
        return {"prompt": user(self.prompt()), "tests": list(self.tests), "entry_point": self.name}


def _p(signature: str, does: str, tests: list[str], body: str) -> Problem:
    return Problem(signature, does, tuple(tests), f"def {signature}:\n{body}\n")


# fmt: off
PROBLEMS = [
    _p("add(a, b)", "returns the sum of a and b",
       ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(0, 0) == 0"],
       "    return a + b"),
    _p("is_even(n)", "returns True if the integer n is even and False otherwise",
       ["assert is_even(4) is True", "assert is_even(7) is False", "assert is_even(0) is True",
        "assert is_even(-2) is True"],
       "    return n % 2 == 0"),
    _p("reverse_string(s)", "returns the string s reversed",
       ["assert reverse_string('abc') == 'cba'", "assert reverse_string('') == ''",
        "assert reverse_string('a b') == 'b a'"],
       "    return s[::-1]"),
    _p("factorial(n)", "returns n! for a non-negative integer n (0! is 1)",
       ["assert factorial(0) == 1", "assert factorial(1) == 1", "assert factorial(5) == 120",
        "assert factorial(10) == 3628800"],
       "    result = 1\n    for k in range(2, n + 1):\n        result *= k\n    return result"),
    _p("fibonacci(n)", "returns the n-th Fibonacci number, with fibonacci(0) == 0 and "
       "fibonacci(1) == 1",
       ["assert fibonacci(0) == 0", "assert fibonacci(1) == 1", "assert fibonacci(2) == 1",
        "assert fibonacci(10) == 55", "assert fibonacci(20) == 6765"],
       "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"),
    _p("max_of_list(xs)", "returns the largest number in the non-empty list xs",
       ["assert max_of_list([1, 5, 3]) == 5", "assert max_of_list([-4, -2, -9]) == -2",
        "assert max_of_list([7]) == 7"],
       "    return max(xs)"),
    _p("sum_list(xs)", "returns the sum of the numbers in the list xs (0 for an empty list)",
       ["assert sum_list([1, 2, 3]) == 6", "assert sum_list([]) == 0",
        "assert sum_list([-1, 1, 10]) == 10"],
       "    return sum(xs)"),
    _p("is_palindrome(s)", "returns True if the string s reads the same forwards and "
       "backwards, ignoring case",
       ["assert is_palindrome('Racecar') is True", "assert is_palindrome('hello') is False",
        "assert is_palindrome('') is True", "assert is_palindrome('Abba') is True"],
       "    t = s.lower()\n    return t == t[::-1]"),
    _p("square_list(xs)", "returns a new list with the square of each number in xs",
       ["assert square_list([1, 2, 3]) == [1, 4, 9]", "assert square_list([]) == []",
        "assert square_list([-2]) == [4]"],
       "    return [x * x for x in xs]"),
    _p("filter_even(xs)", "returns the even numbers of the list xs, in their original order",
       ["assert filter_even([1, 2, 3, 4]) == [2, 4]", "assert filter_even([1, 3]) == []",
        "assert filter_even([0, -2, 5]) == [0, -2]"],
       "    return [x for x in xs if x % 2 == 0]"),
    _p("is_prime(n)", "returns True if the integer n is a prime number and False otherwise",
       ["assert is_prime(2) is True", "assert is_prime(1) is False", "assert is_prime(17) is True",
        "assert is_prime(21) is False", "assert is_prime(0) is False"],
       "    if n < 2:\n        return False\n    k = 2\n    while k * k <= n:\n"
       "        if n % k == 0:\n            return False\n        k += 1\n    return True"),
    _p("word_count(s)", "returns the number of whitespace-separated words in the string s",
       ["assert word_count('hello world') == 2", "assert word_count('') == 0",
        "assert word_count('  one   two three ') == 3"],
       "    return len(s.split())"),
    _p("capitalize_words(s)", "returns s with the first letter of every word in upper case and "
       "the rest in lower case, words joined by single spaces",
       ["assert capitalize_words('hello world') == 'Hello World'",
        "assert capitalize_words('pYTHON is FUN') == 'Python Is Fun'",
        "assert capitalize_words('') == ''"],
       "    return ' '.join(w.capitalize() for w in s.split())"),
    _p("remove_duplicates(xs)", "returns the items of the list xs without duplicates, keeping "
       "the first occurrence of each in order",
       ["assert remove_duplicates([1, 2, 1, 3, 2]) == [1, 2, 3]",
        "assert remove_duplicates([]) == []", "assert remove_duplicates(['a', 'a']) == ['a']"],
       "    seen = []\n    for x in xs:\n        if x not in seen:\n            seen.append(x)\n"
       "    return seen"),
    _p("flatten(xss)", "flattens a list of lists one level into a single list",
       ["assert flatten([[1, 2], [3], []]) == [1, 2, 3]", "assert flatten([]) == []",
        "assert flatten([[[1]], [2]]) == [[1], 2]"],
       "    return [x for xs in xss for x in xs]"),
    _p("char_frequency(s)", "returns a dict mapping each character of the string s to the "
       "number of times it occurs",
       ["assert char_frequency('aab') == {'a': 2, 'b': 1}", "assert char_frequency('') == {}",
        "assert char_frequency('xyx') == {'x': 2, 'y': 1}"],
       "    counts = {}\n    for c in s:\n        counts[c] = counts.get(c, 0) + 1\n"
       "    return counts"),
    _p("merge_sorted(a, b)", "merges two sorted lists of numbers into one sorted list",
       ["assert merge_sorted([1, 3, 5], [2, 4]) == [1, 2, 3, 4, 5]",
        "assert merge_sorted([], [1]) == [1]", "assert merge_sorted([1, 1], [1]) == [1, 1, 1]"],
       "    return sorted(a + b)"),
    _p("fizzbuzz(n)", "returns 'FizzBuzz' if n is divisible by 15, 'Fizz' if by 3, 'Buzz' if "
       "by 5, and otherwise n as a string",
       ["assert fizzbuzz(15) == 'FizzBuzz'", "assert fizzbuzz(9) == 'Fizz'",
        "assert fizzbuzz(10) == 'Buzz'", "assert fizzbuzz(7) == '7'"],
       "    if n % 15 == 0:\n        return 'FizzBuzz'\n    if n % 3 == 0:\n        return 'Fizz'\n"
       "    if n % 5 == 0:\n        return 'Buzz'\n    return str(n)"),
    _p("digit_sum(n)", "returns the sum of the decimal digits of the non-negative integer n",
       ["assert digit_sum(123) == 6", "assert digit_sum(0) == 0", "assert digit_sum(9999) == 36"],
       "    return sum(int(d) for d in str(n))"),
    _p("average(xs)", "returns the arithmetic mean of the non-empty list of numbers xs",
       ["assert average([1, 2, 3]) == 2", "assert average([5]) == 5",
        "assert abs(average([1, 2]) - 1.5) < 1e-9"],
       "    return sum(xs) / len(xs)"),
    _p("count_occurrences(xs, x)", "returns how many times x occurs in the list xs",
       ["assert count_occurrences([1, 2, 1], 1) == 2", "assert count_occurrences([], 3) == 0",
        "assert count_occurrences(['a', 'b'], 'c') == 0"],
       "    return sum(1 for item in xs if item == x)"),
    _p("min_max(xs)", "returns a tuple (smallest, largest) of the non-empty list xs",
       ["assert min_max([3, 1, 2]) == (1, 3)", "assert min_max([5]) == (5, 5)",
        "assert min_max([-1, -7, 4]) == (-7, 4)"],
       "    return (min(xs), max(xs))"),
    _p("longest_word(s)", "returns the longest word in the string s (the first one if several "
       "are equally long)",
       ["assert longest_word('a bb ccc') == 'ccc'", "assert longest_word('hi there you') == 'there'",
        "assert longest_word('ab cd') == 'ab'"],
       "    return max(s.split(), key=len)"),
    _p("clamp(x, lo, hi)", "returns x limited to the range from lo to hi inclusive",
       ["assert clamp(5, 0, 10) == 5", "assert clamp(-3, 0, 10) == 0",
        "assert clamp(42, 0, 10) == 10", "assert clamp(0, 0, 0) == 0"],
       "    return max(lo, min(x, hi))"),
    # --- test problems (TEST_NAMES) ---
    _p("celsius_to_fahrenheit(c)", "converts a temperature from degrees Celsius to degrees "
       "Fahrenheit",
       ["assert celsius_to_fahrenheit(0) == 32", "assert celsius_to_fahrenheit(100) == 212",
        "assert celsius_to_fahrenheit(-40) == -40"],
       "    return c * 9 / 5 + 32"),
    _p("gcd(a, b)", "returns the greatest common divisor of the positive integers a and b",
       ["assert gcd(12, 18) == 6", "assert gcd(7, 13) == 1", "assert gcd(10, 10) == 10",
        "assert gcd(100, 75) == 25"],
       "    while b:\n        a, b = b, a % b\n    return a"),
    _p("count_vowels(s)", "returns how many vowels (a, e, i, o, u, in either case) the string s "
       "contains",
       ["assert count_vowels('hello') == 2", "assert count_vowels('AEIOU') == 5",
        "assert count_vowels('xyz') == 0", "assert count_vowels('') == 0"],
       "    return sum(1 for c in s.lower() if c in 'aeiou')"),
    _p("is_anagram(a, b)", "returns True if the strings a and b contain the same letters, "
       "ignoring case and spaces",
       ["assert is_anagram('listen', 'silent') is True",
        "assert is_anagram('Dormitory', 'dirty room') is True",
        "assert is_anagram('abc', 'abd') is False"],
       "    def key(s):\n        return sorted(s.replace(' ', '').lower())\n"
       "    return key(a) == key(b)"),
    _p("running_sum(xs)", "returns the list of running totals of xs (element i is the sum of "
       "xs[0] to xs[i])",
       ["assert running_sum([1, 2, 3]) == [1, 3, 6]", "assert running_sum([]) == []",
        "assert running_sum([5, -5, 2]) == [5, 0, 2]"],
       "    out, total = [], 0\n    for x in xs:\n        total += x\n        out.append(total)\n"
       "    return out"),
    _p("chunk(xs, size)", "splits the list xs into consecutive lists of length size (the last "
       "one may be shorter)",
       ["assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]", "assert chunk([], 3) == []",
        "assert chunk([1, 2], 5) == [[1, 2]]"],
       "    return [xs[i : i + size] for i in range(0, len(xs), size)]"),
    _p("binary_string(n)", "returns the binary representation of the non-negative integer n as "
       "a string without a prefix",
       ["assert binary_string(5) == '101'", "assert binary_string(0) == '0'",
        "assert binary_string(8) == '1000'"],
       "    return bin(n)[2:]"),
    _p("second_largest(xs)", "returns the second largest distinct value in the list xs, which "
       "has at least two distinct values",
       ["assert second_largest([1, 3, 2]) == 2", "assert second_largest([5, 5, 4]) == 4",
        "assert second_largest([-1, -2]) == -2"],
       "    return sorted(set(xs))[-2]"),
]

TEST_NAMES = (
    "celsius_to_fahrenheit", "gcd", "count_vowels", "is_anagram",
    "running_sum", "chunk", "binary_string", "second_largest",
)
# fmt: on


def task() -> Task:
    """The ``coding`` task: 24 training problems (shuffled by seed) and 8 test problems."""
    train = [p for p in PROBLEMS if p.name not in TEST_NAMES]
    test = [p for p in PROBLEMS if p.name in TEST_NAMES]

    def make_train(seed: int) -> list[Row]:
        rows = [p.row() for p in train]
        random.Random(f"coding:train:{seed}").shuffle(rows)
        return rows

    return Task(
        name="coding",
        description="small Python functions checked by assert-based tests",
        make_train=make_train,
        make_test=lambda: [p.row() for p in test],
    )
