"""The code sandbox against hostile programs: each scores 0, nothing escapes, nothing survives."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from posttrain.rewards.code_reward import CodeReward, extract_code, split_tests
from posttrain.rewards.sandbox import SandboxResult, run_python_sandboxed

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")

TESTS = ["assert add(1, 2) == 3", "assert add(10, -4) == 6"]
reward = CodeReward(timeout_s=2.0, per_test_s=1.0, max_workers=2)


def _score(code: str, tests=TESTS) -> float | None:
    return reward(["prompt"], [f"```python\n{code}\n```"], [[]], tests=[tests])[0]


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[4])  # field 6: session id


def _leftovers(result: SandboxResult) -> list[int]:
    """Processes still alive from a run: in its session or carrying its run id on the cmdline."""
    try:
        import psutil

        marked = [p.pid for p in psutil.process_iter(["cmdline"])
                  if result.run_id in " ".join(p.info["cmdline"] or [])]
    except ImportError:
        marked = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if result.run_id.encode() in (entry / "cmdline").read_bytes():
                        marked.append(int(entry.name))
                except OSError:
                    pass
    in_session = [int(e.name) for e in Path("/proc").iterdir()
                  if e.name.isdigit() and _session_of(int(e.name)) == result.pid]
    return sorted(set(marked + in_session))


def _run(code: str, **kwargs) -> SandboxResult:
    kwargs.setdefault("timeout_s", 2.0)
    result = run_python_sandboxed(code, **kwargs)
    assert result.run_id and result.pid
    assert _leftovers(result) == [], f"processes left behind by {code[:40]!r}"
    return result


def test_correct_and_half_correct_solutions():
    assert _score("def add(a, b):\n    return a + b") == 1.0
    assert _score("def add(a, b):\n    return a + b if a < 5 else 0") == 0.5
    assert _score("def add(a, b):\n    return a - b") == 0.0
    assert _score("def add(a, b) return", tests="assert add(1, 2) == 3") == 0.0  # syntax error
    assert reward(["p"], ["x"], [[]], tests=[None]) == [None]
    main_block = "def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    input()"
    assert _score(main_block) == 1.0


def test_batch_runs_rows_concurrently_in_order():
    completions = ["def add(a, b):\n    return a + b", "def add(a, b):\n    return 0",
                   "def add(a, b):\n    return a + b if a < 5 else 0"]
    assert reward(["p"] * 3, completions, [[]] * 3, tests=[TESTS] * 3) == [1.0, 0.0, 0.5]


def test_faking_a_pass_earns_nothing():
    assert _score("def add(a, b):\n    return 0\nimport sys\nsys.exit(0)") == 0.0
    assert _score("import os\nos._exit(0)") == 0.0
    assert _score("print('test 0 pass\\ntest 1 pass')\nraise SystemExit(0)") == 0.0


def test_string_tests_are_split_per_assert():
    assert split_tests("x = 2\nassert x == 2\nassert x + 1 == 3\n") == [
        "x = 2\nassert x == 2\n", "assert x + 1 == 3\n"]
    assert split_tests('["assert f(1) == 1", "assert f(2) == 2"]') == [
        "assert f(1) == 1", "assert f(2) == 2"]
    assert _score("def add(a, b):\n    return 3", tests="assert add(1, 2) == 3\nassert add(0, 0) == 0"
                  ) == 0.5


def test_extract_code_prefers_last_python_block():
    text = "```python\nA = 1\n```\ntext\n```\nB = 2\n```\n```py\nC = 3\n```\n"
    assert extract_code(text) == "C = 3\n"
    assert extract_code("```\nB = 2\n```") == "B = 2\n"
    assert extract_code("x = 1") == "x = 1"
    assert extract_code("```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"


def test_infinite_loop_is_killed():
    start = time.monotonic()
    result = _run("while True:\n    pass", timeout_s=1.5)
    assert result.timed_out and result.returncode is None
    assert time.monotonic() - start < 6
    assert _score("def add(a, b):\n    while True:\n        pass") == 0.0


def test_sleeping_forever_is_killed():
    result = _run("import time\ntime.sleep(600)", timeout_s=1.0)
    assert result.timed_out


def test_fork_bomb_cannot_fork():
    code = ("import os\nn = 0\nwhile True:\n    try:\n        if os.fork() == 0:\n"
            "            import time; time.sleep(600)\n        n += 1\n"
            "    except OSError:\n        print('forks', n)\n        break\n")
    result = _run(code)
    assert result.stdout.strip() == "forks 0", result.stderr
    assert _score("import os\nwhile True:\n    os.fork()") == 0.0


def test_forked_daemons_die_with_the_run():
    """Even where forking is allowed, children that leave the process group (setsid) and
    outlive the program are gone when the call returns."""
    code = ("import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        os.setsid()\n"
            "        time.sleep(600)\nprint('parent done')\n")
    result = _run(code, max_processes=8)
    if not result.isolation.get("pid_namespace"):
        pytest.skip("no PID namespace here: detached children are only stopped by max_processes")
    assert result.stdout.strip() == "parent done" and not result.timed_out


def test_memory_bomb_hits_the_limit():
    result = _run("x = bytearray(4 * 1024 ** 3)", memory_mb=256)
    assert result.returncode != 0 and "MemoryError" in result.stderr
    result = _run("a = []\nwhile True:\n    a.append(' ' * 10 ** 7)", memory_mb=256)
    assert result.returncode != 0 and not result.ok
    assert _score("x = [0] * (10 ** 10)\ndef add(a, b):\n    return a + b") == 0.0


def test_output_flood_is_capped():
    result = _run("while True:\n    print('x' * 10000)", max_output_bytes=100_000)
    assert result.output_truncated and len(result.stdout) <= 100_000
    assert _score("def add(a, b):\n    return a + b\nwhile True:\n    print('x' * 10000)") == 0.0


def test_no_network_even_to_loopback():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        code = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                "s.sendall(b'stolen')\nprint('connected')\n")
        result = _run(code)
        assert "connected" not in result.stdout and result.returncode != 0
        assert _score(code + "def add(a, b):\n    return a + b") == 0.0
        assert result.isolation.get("network"), result.isolation
        with pytest.raises(BlockingIOError):
            server.accept()  # the server never saw a connection
    finally:
        server.close()


def test_cannot_write_outside_its_directory(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("original")
    target.chmod(0o644)
    escape = Path(f"/tmp/posttrain-escape-{os.getpid()}")
    code = f"""
import os
hits = []
for path, mode in (({str(target)!r}, "w"), ({str(tmp_path / "new.txt")!r}, "w"),
                   ({str(escape)!r}, "w"), ("/etc/posttrain-escape", "w")):
    try:
        with open(path, mode) as f:
            f.write("pwned")
        hits.append(path)
    except OSError:
        pass
with open("inside.txt", "w") as f:  # its own directory is writable
    f.write("fine")
print("wrote", hits, open("inside.txt").read())
"""
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "original"
    assert not (tmp_path / "new.txt").exists()
    assert not escape.exists() and not Path("/etc/posttrain-escape").exists()
    assert result.stdout.strip().endswith("fine")


def test_parent_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_SECRET", "hunter2-secret-value")
    code = """
import os, glob
print(sorted(os.environ))
print(os.environ.get("POSTTRAIN_SECRET"))
for path in glob.glob("/proc/*/environ"):
    try:
        data = open(path, "rb").read()
    except OSError:
        continue
    if b"hunter2" in data:
        print("LEAK", path)
"""
    result = _run(code)
    assert "hunter2" not in result.stdout + result.stderr
    assert "POSTTRAIN_SECRET" not in result.stdout
    assert _score("import os\nassert os.environ['POSTTRAIN_SECRET']\n"
                  "def add(a, b):\n    return a + b") == 0.0


def test_cannot_kill_its_parent():
    me = os.getpid()
    code = f"""
import os, signal
for pid in (os.getppid(), {me}, 1, -1):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as exc:
        print(pid, type(exc).__name__)
try:
    os.killpg(os.getpgid(0), signal.SIGKILL)
except OSError as exc:
    print('pg', type(exc).__name__)
"""
    _run(code)
    assert os.getpid() == me  # still here
    assert _score(f"import os\nos.kill({me}, 9)\ndef add(a, b):\n    return a + b") == 0.0


def test_isolation_report():
    result = _run("print('hi')")
    assert result.ok and result.stdout == "hi\n"
    if os.geteuid() == 0:  # what this project's Linux CI provides; weaker elsewhere (see module)
        assert result.isolation["uid_dropped"]


def test_fallback_without_namespaces(monkeypatch, tmp_path):
    """Where namespaces are forbidden (some containers): uid drop, rlimits and a Python-level
    socket block still hold, and every process is still gone afterwards."""
    import posttrain.rewards.sandbox as sandbox

    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)
    result = _run("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert not result.isolation["network"] and not result.isolation["pid_namespace"]
    assert "network access is disabled" in result.stderr
    assert _run("while True:\n    pass", timeout_s=1.0).timed_out
    if os.geteuid() == 0:
        target = tmp_path / "precious.txt"
        target.write_text("original")
        result = _run(f"open({str(target)!r}, 'w').write('pwned')")
        assert "PermissionError" in result.stderr and target.read_text() == "original"
        result = _run(f"import os\nos.kill({os.getpid()}, 9)")
        assert "PermissionError" in result.stderr
        assert "BlockingIOError" in _run("import os\nos.fork()").stderr
        assert _score("def add(a, b):\n    return a + b") == 1.0
