"""Code reward: the fraction of a row's unit tests that the completion's program passes.

The verdict is decided here, not in the program's interpreter (``verdict.py``): each test is
split into the calls into the solution (probes, run in the sandbox, see ``sandbox.py``) and the
check on their results (evaluated here on plain data). The sandboxed program learns which calls
to make, never what they should return, so no trick inside it (patched builtins, an object equal
to everything, a forged report) scores more than honestly returning those values would.

The solution runs as a module named ``solution``, so an ``if __name__ == "__main__":`` demo block
(often reading stdin, which is empty) does not run and cannot fail the row. A row whose tests use
a form that cannot be judged outside the sandbox raises ``RewardError`` naming the test
(``verdict.UnsupportedTest``), so such data is refused instead of judged in a gameable way.
"""

from __future__ import annotations

import ast
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from posttrain.errors import RewardError
from posttrain.rewards.sandbox import check_sandbox, run_python_sandboxed
from posttrain.rewards.verdict import (
    UnsupportedTest,
    compile_tests,
    harness_program,
    judge,
    probe_results,
)

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}

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


class CodeReward:
    """Reward callable: fraction of the row's ``tests`` the completion's code passes.

    ``timeout_s`` bounds one row's whole run (wall clock); ``per_test_s`` each call into the
    solution (and its top-level code). Rows run ``max_workers`` at a time: each run is a
    process. ``unsafe_no_isolation`` runs without the sandbox's namespaces (sandbox.py): only
    for code you trust.
    """

    def __init__(
        self,
        name: str = "code",
        timeout_s: float = 10.0,
        per_test_s: float = 3.0,
        memory_mb: int = 512,
        max_workers: int = 2,
        max_output_bytes: int = 1 << 20,
        unsafe_no_isolation: bool = False,
    ) -> None:
        self.__name__ = name  # what training logs call it: rewards/<name>/mean
        self.timeout_s = timeout_s
        self.per_test_s = per_test_s
        self.memory_mb = memory_mb
        self.max_workers = max_workers
        self.max_output_bytes = max_output_bytes
        self.unsafe_no_isolation = unsafe_no_isolation

    def validate_rows(self, columns: dict[str, list], locations: list[str]) -> None:
        """Before training: every row's ``tests`` can be judged outside the sandbox (else a
        ``RewardError`` naming the row and the test), and the sandbox can run here."""
        for tests, where in zip(columns.get("tests", []), locations):
            if tests is None:
                continue
            try:
                compile_tests(split_tests(tests))
            except UnsupportedTest as err:
                raise RewardError(f"code reward, {where}: {err}") from None
        check_sandbox(unsafe_no_isolation=self.unsafe_no_isolation)

    def score_one(self, completion: str, tests: str | Sequence[str] | None,
                  where: str = "") -> float | None:
        """One row: None if it has no tests, else the fraction passed (0.0 on any failure)."""
        if tests is None:
            return None
        cases = split_tests(tests)
        if not cases:
            return None
        code = extract_code(completion)
        if not code.strip():
            return 0.0
        try:
            probes, checks = compile_tests(cases)
        except UnsupportedTest as err:
            raise RewardError(f"code reward{where}: {err}") from None
        token = secrets.token_hex(16)
        program = harness_program(code, probes, token, self.per_test_s)
        result = run_python_sandboxed(
            program, timeout_s=self.timeout_s, memory_mb=self.memory_mb,
            max_output_bytes=self.max_output_bytes,
            unsafe_no_isolation=self.unsafe_no_isolation,
        )
        values = probe_results(result.stdout, token, len(probes))
        return sum(judge(check, values) for check in checks) / len(checks)

    def __call__(
        self,
        prompts: list,
        completions: list[str],
        completion_ids: list[list[int]],
        tests: list,
        **_,
    ) -> list[float | None]:
        check_sandbox(unsafe_no_isolation=self.unsafe_no_isolation)
        rows = list(zip(completions, tests))
        if len(rows) <= 1 or self.max_workers <= 1:
            return [self.score_one(c, t) for c, t in rows]
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(lambda row: self.score_one(*row), rows))


def make_code_reward(**options) -> CodeReward:
    """A ``CodeReward`` with non-default limits (``name``, ``timeout_s``, ``per_test_s``,
    ``memory_mb``, ``max_workers``, ``max_output_bytes``, ``unsafe_no_isolation``)."""
    return CodeReward(**options)


code_reward = CodeReward()
