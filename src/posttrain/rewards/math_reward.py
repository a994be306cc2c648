"""Verifiable math reward: is the completion's *final* answer equal to the gold answer?

Only one candidate is taken from a completion: the last ``\\boxed{...}``, else the expression
after the last "answer is" / "answer:" / "####", else the last number (or ``$...$``) of the last
line. Never "does the gold number appear anywhere": such a checker pays a model for restating the
question ("40 + 92 = 136 is the answer to 40 + 92" contains 92 and 40, and with luck the gold).

Equivalence is decided by math-verify (``\\frac12`` == 0.5, ``1{,}000`` == 1000, ``x = 5`` == 5,
units in ``\\text{}``), after an exact fast path for plain numbers. When the gold answer is a
number, an answer that still computes (``\\boxed{47 * 38}``, ``47 \\times 38``, ``1786 + 0``)
earns nothing: math-verify would evaluate it and pay a policy for copying the question into the
box, which a GRPO run on the arithmetic task learned within 20 steps. math-verify's own timeouts use
``signal.alarm`` (main thread only) and cannot interrupt a long C-level computation: sympy will
happily try to evaluate ``2^{10^{10}}`` for minutes and gigabytes. So math-verify runs in a
persistent helper process with its timeouts off, a memory cap and a per-item deadline enforced
from here by killing the helper (it is restarted on the next call).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import selectors
import subprocess
import sys
import threading
import time
from fractions import Fraction

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
MAX_ANSWER_CHARS = 1000  # longer "answers" are not answers; also bounds verification cost
_WORKER_MEMORY_BYTES = 2 << 30

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANCHOR_RE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:\*\*)?\s*(?:is|was|would\s+be|will\s+be|should\s+be|equals|"
    r"=|:)\s*(?:\*\*)?\s*:?|####",
    re.IGNORECASE,
)
_NUMBER_RE = re.compile(r"[-\u2212]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?")
_LEADING_NUMBER_RE = re.compile(
    r"^([-+\u2212]?)\s*\\?\$?\s*(\d[\d,]*(?:\.\d+)?|\.\d+)(\s*/\s*\d+)?"
)
_MATH_SEGMENT_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_PLAIN_NUMBER_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?$")
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
# an operator between two operands: the answer is still a computation, not a value
_COMPUTES_RE = re.compile(
    r"[\d.)}\]]\s*(?:[-+*/^\u00d7\u00f7\u22c5]|\\times|\\cdot|\\div|\\ast|\*\*)\s*"
    r"[-\d.({\[\\]"
)


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` whose braces balance (a truncated one is skipped)."""
    for match in reversed(list(_BOX_RE.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


def _clean(answer: str) -> str:
    """Strip the wrapping a final answer often comes in: ``$``, ``\\(``, bold, a final period."""
    answer = answer.replace("\u2212", "-").strip()
    for _ in range(3):
        before = answer
        answer = answer.strip().strip("*").strip()
        answer = re.sub(r"^(?:\\\(|\\\[|\$+)|(?:\\\)|\\\]|\$+)$", "", answer).strip()
        answer = re.sub(r"(?<!\\)[.;,]+$", "", answer).strip()
        answer = re.sub(r"^\\(?:displaystyle|textbf|mathbf)\s*", "", answer)
        if answer == before:
            break
    return answer


def _from_anchor_text(rest: str) -> str | None:
    """The answer in the text that follows an "answer is" anchor, up to the end of its sentence."""
    sentence = re.split(r"\.(?=\s|$)|\n", rest.strip(), maxsplit=1)[0].strip()
    if not sentence:
        return None
    segment = _MATH_SEGMENT_RE.search(sentence)
    if segment:
        return next(g for g in segment.groups() if g is not None)
    number = _LEADING_NUMBER_RE.match(sentence)
    if number:  # "12 dollars", "$1,000 per week": keep the number only
        return "".join(g or "" for g in number.groups()).replace(" ", "")
    # "x = 5", "B", "\\frac{1}{2}" are answers; "not possible without more data" is prose.
    words = re.findall(r"(?<!\\)\b[A-Za-z]{3,}\b", sentence)
    return sentence if len(sentence) <= 60 and len(words) <= 1 else None


def extract_final_answer(text: str | None) -> str | None:
    """The completion's final answer as a string (LaTeX allowed), or None if it gives none.

    Order: last balanced ``\\boxed{}``; else what follows the last "answer is/:"-style anchor or
    GSM8K's ``####``; else the last ``$...$`` / last number on the last non-empty line.
    """
    if not text or not text.strip():
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed) or None
    anchors = list(_ANCHOR_RE.finditer(text))
    if anchors:
        rest = text[anchors[-1].end():]
        if not rest.split("\n", 1)[0].strip():  # "Final answer:\n12"
            rest = rest.strip()
        found = _from_anchor_text(rest)
        if found and _clean(found):
            return _clean(found)
    last_line = [line for line in text.strip().splitlines() if line.strip()][-1]
    segments = list(_MATH_SEGMENT_RE.finditer(last_line))
    if segments:
        inner = next(g for g in segments[-1].groups() if g is not None)
        if _clean(inner):
            return _clean(inner)
    numbers = _NUMBER_RE.findall(last_line)
    return _clean(numbers[-1]) if numbers else None


def _normalize_gold(answer: str) -> str:
    """Gold answers come as "72", "$\\frac{1}{2}$", "\\boxed{3}" or a full GSM8K solution."""
    answer = str(answer)
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1]
    boxed = _last_boxed(answer)
    return _clean(boxed if boxed is not None else answer)


def _as_plain_number(answer: str) -> Fraction | None:
    """An exact value for plain numbers ("1,000", "-3.50", "3/4"); None for anything else."""
    text = answer.replace("\u2212", "-").replace("{,}", ",").replace("\\,", ",")
    text = text.replace("\\!", "").replace(" ", "")
    if _THOUSANDS_RE.match(text):
        text = text.replace(",", "")
    if not _PLAIN_NUMBER_RE.match(text) or len(text) > 64:
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(pred: str | None, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True if the extracted answer ``pred`` is mathematically equal to ``gold``."""
    if pred is None:
        return False
    gold = _normalize_gold(gold)
    pred = _clean(pred)
    if not pred or not gold or len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    exact_pred, exact_gold = _as_plain_number(pred), _as_plain_number(gold)
    if exact_pred is not None and exact_gold is not None:
        if exact_pred == exact_gold:
            return True
        if "." not in pred + gold:  # distinct integers/fractions; decimals go on to rounding rules
            return False
    if exact_gold is not None and exact_pred is None and computes(pred):
        return False  # a number was asked for; "47 * 38" is the question, not its answer
    return _WORKER.verify(gold, pred, timeout_s)


def computes(answer: str) -> bool:
    """Does ``answer`` still contain an operation between operands (``47 * 38``, ``2^{10}``,
    ``3 + 4``)? Fractions (``3/4``, ``\\frac{3}{4}``) and signs (``-5``) do not count."""
    text = answer.replace("\u2212", "-")
    text = re.sub(r"^\s*[A-Za-z]\s*=\s*", "", text)  # "x = 5" is a value
    if _as_plain_number(text) is not None:
        return False
    return bool(_COMPUTES_RE.search(text))


def math_reward(
    prompts: list, completions: list[str], completion_ids: list[list[int]], answer: list, **_
) -> list[float | None]:
    """1.0 if the completion's final answer equals the row's ``answer``, else 0.0; None for rows
    without a gold answer."""
    rewards: list[float | None] = []
    for completion, gold in zip(completions, answer):
        if gold is None or not str(gold).strip():
            rewards.append(None)
            continue
        pred = extract_final_answer(completion)
        rewards.append(1.0 if answers_match(pred, str(gold)) else 0.0)
    return rewards


class _VerifyWorker:
    """A persistent helper process running math-verify, one JSON line per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._owner = os.getpid()

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen(
            [sys.executable, "-c", "from posttrain.rewards.math_reward import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        )
        self._proc, self._owner = proc, os.getpid()
        if self._request({"ping": True}, 120.0) is None:  # importing sympy takes a while
            raise RuntimeError("the math-verify helper process did not start")
        return proc

    def _request(self, message: dict, timeout_s: float) -> dict | None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write((json.dumps(message) + "\n").encode())
            proc.stdin.flush()
        except OSError:
            self.close()
            return None
        deadline = time.monotonic() + timeout_s
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    self.close()  # stuck in sympy: kill it, the next call starts a fresh one
                    return None
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    self.close()
                    return None
                line += chunk
        return json.loads(line)

    def verify(self, gold: str, pred: str, timeout_s: float) -> bool:
        with self._lock:
            if self._proc is None or self._owner != os.getpid() or self._proc.poll() is not None:
                self._start()
            reply = self._request({"gold": gold, "pred": pred}, timeout_s)
        if reply is None:
            logger.warning("math-verify gave up after %.1fs on %r vs gold %r", timeout_s,
                           pred[:80], gold[:80])
            return False
        return bool(reply.get("equal"))

    def close(self) -> None:
        if self._proc is not None and self._owner == os.getpid():
            self._proc.kill()
            self._proc.wait()
        self._proc = None


_WORKER = _VerifyWorker()
atexit.register(_WORKER.close)


def _serve() -> None:
    """Helper-process main loop: math-verify with its signal timeouts off (we kill on deadline)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, _WORKER_MEMORY_BYTES))
    logging.disable(logging.WARNING)
    from math_verify import parse, verify

    def parse_latex(text: str) -> list:
        parsed = parse(f"${text}$", parsing_timeout=None)
        return parsed or parse(text, parsing_timeout=None)

    for line in sys.stdin:
        request = json.loads(line)
        equal = False
        if "ping" not in request:
            try:
                gold, pred = parse_latex(request["gold"]), parse_latex(request["pred"])
                equal = bool(gold and pred and verify(gold, pred, timeout_seconds=None))
            except (Exception, MemoryError, RecursionError):
                equal = False
        sys.stdout.write(json.dumps({"equal": equal}) + "\n")
        sys.stdout.flush()
