"""Code reward: the fraction of a row's unit tests that the completion's program passes.

The program and its tests run together in one sandboxed process per row (see ``sandbox.py``): the
solution first, then each test in turn under its own time limit, in the same globals. A small
harness reports each test's outcome on stdout tagged with a random per-run token, so a program
that exits early (``sys.exit(0)`` before the asserts run) or prints "all tests passed" earns
nothing. The solution runs as a module named ``solution``, so an ``if __name__ == "__main__":``
demo block (often reading stdin, which is empty) does not run and cannot fail the row.

The harness shares an interpreter with the untrusted code, so code that deliberately digs the
token out of the harness's frames could still forge a pass: the sandbox protects the machine,
the token only guards against the cheap ways to fake a result.
"""

from __future__ import annotations

import ast
import logging
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from posttrain.rewards.sandbox import SandboxResult, run_python_sandboxed

logger = logging.getLogger(__name__)

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}

_HARNESS = """\
import os as _os, signal as _signal
_write = _os.write
_TOKEN = {token!r}
_SOLUTION = {solution!r}
_TESTS = {tests!r}
_LIMIT = {per_test_s!r}
try:
    _os.unlink(__file__)
except OSError:
    pass
class _TestTimeout(BaseException):
    pass
def _on_alarm(signum, frame):
    raise _TestTimeout("test took longer than %ss" % _LIMIT)
_signal.signal(_signal.SIGALRM, _on_alarm)
_globals = {{"__name__": "solution", "__builtins__": __builtins__}}
_signal.setitimer(_signal.ITIMER_REAL, _LIMIT)
exec(compile(_SOLUTION, "solution.py", "exec"), _globals)
_signal.setitimer(_signal.ITIMER_REAL, 0)
for _i, _test in enumerate(_TESTS):
    _ok = False
    _signal.setitimer(_signal.ITIMER_REAL, _LIMIT)
    try:
        exec(compile(_test, "test_%d.py" % _i, "exec"), _globals)
        _ok = True
    except BaseException as _exc:
        _write(2, ("test %d failed: %r\\n" % (_i, _exc)).encode())
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
    _write(1, ("\\n%s:%d:%s\\n" % (_TOKEN, _i, "pass" if _ok else "fail")).encode())
"""


def extract_code(completion: str) -> str:
    """The last fenced Python block (```python / ```py), else the last untagged fenced block,
    else the whole completion. An unclosed final fence (a cut-off generation) still counts."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(completion or "")]
    for wanted in (_PYTHON_TAGS, {""}):
        chosen = [body for tag, body in blocks if tag in wanted]
        if chosen:
            return chosen[-1]
    return completion or ""


def split_tests(tests: str | Sequence[str]) -> list[str]:
    """A list of test snippets: a list is used as given; a string is cut after each top-level
    statement that is an ``assert``, so "setup; assert a; assert b" is two tests (setup runs
    with the first). A string holding a list literal of test strings is that list; one that
    does not parse stays one test (it will fail)."""
    if not isinstance(tests, str):
        return [str(t) for t in tests if str(t).strip()]
    try:
        module = ast.parse(tests)
    except SyntaxError:
        return [tests] if tests.strip() else []
    body = module.body
    if len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.List):
        try:  # a JSON/Python list of test strings stored as text: as a list it would "pass"
            items = ast.literal_eval(body[0].value)
        except ValueError:
            items = None
        if isinstance(items, list) and all(isinstance(t, str) for t in items):
            return split_tests(items)
    lines = tests.splitlines(keepends=True)
    chunks, start = [], 0
    for node in module.body:
        if isinstance(node, ast.Assert):
            end = node.end_lineno or node.lineno
            chunks.append("".join(lines[start:end]))
            start = end
    if start < len(lines) and "".join(lines[start:]).strip():
        if chunks:
            chunks[-1] += "".join(lines[start:])
        else:
            chunks.append("".join(lines[start:]))
    return chunks


def build_test_program(solution: str, tests: list[str], token: str, per_test_s: float) -> str:
    """The harness program: runs ``solution`` then each test, reporting ``token:i:pass|fail``."""
    return _HARNESS.format(token=token, solution=solution, tests=list(tests), per_test_s=per_test_s)


def count_passed(result: SandboxResult, token: str, num_tests: int) -> int:
    """Tests reported as passed, each counted once; a test reported both ways counts as failed."""
    outcomes: dict[int, set[str]] = {}
    for index, verdict in re.findall(re.escape(token) + r":(\d+):(pass|fail)", result.stdout):
        outcomes.setdefault(int(index), set()).add(verdict)
    return sum(1 for i, v in outcomes.items() if i < num_tests and v == {"pass"})


class CodeReward:
    """Reward callable: fraction of the row's ``tests`` the completion's code passes.

    ``timeout_s`` bounds one row's whole run (wall clock); ``per_test_s`` each test (including
    the solution's top-level code). Rows run ``max_workers`` at a time: each run is a process.
    """

    def __init__(
        self,
        name: str = "code",
        timeout_s: float = 10.0,
        per_test_s: float = 3.0,
        memory_mb: int = 512,
        max_workers: int = 2,
        max_output_bytes: int = 1 << 20,
    ) -> None:
        self.__name__ = name  # what training logs call it: rewards/<name>/mean
        self.timeout_s = timeout_s
        self.per_test_s = per_test_s
        self.memory_mb = memory_mb
        self.max_workers = max_workers
        self.max_output_bytes = max_output_bytes
        self._warned_isolation = False

    def score_one(self, completion: str, tests: str | Sequence[str] | None) -> float | None:
        """One row: None if it has no tests, else the fraction passed (0.0 on any failure)."""
        if tests is None:
            return None
        cases = split_tests(tests)
        if not cases:
            return None
        code = extract_code(completion)
        if not code.strip():
            return 0.0
        token = secrets.token_hex(16)
        program = build_test_program(code, cases, token, self.per_test_s)
        result = run_python_sandboxed(
            program, timeout_s=self.timeout_s, memory_mb=self.memory_mb,
            max_output_bytes=self.max_output_bytes,
        )
        if not result.isolation.get("network") and not self._warned_isolation:
            self._warned_isolation = True
            logger.warning("code sandbox: no network namespace here (isolation=%s); generated "
                           "code is only blocked from sockets at the Python level",
                           result.isolation)
        if result.output_truncated:
            return 0.0
        return count_passed(result, token, len(cases)) / len(cases)

    def __call__(
        self,
        prompts: list,
        completions: list[str],
        completion_ids: list[list[int]],
        tests: list,
        **_,
    ) -> list[float | None]:
        rows = list(zip(completions, tests))
        if len(rows) <= 1 or self.max_workers <= 1:
            return [self.score_one(c, t) for c, t in rows]
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(lambda row: self.score_one(*row), rows))


def make_code_reward(**options) -> CodeReward:
    """A ``CodeReward`` with non-default limits (``name``, ``timeout_s``, ``per_test_s``,
    ``memory_mb``, ``max_workers``, ``max_output_bytes``)."""
    return CodeReward(**options)


code_reward = CodeReward()
