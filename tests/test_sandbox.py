"""The code reward against hostile programs: reward hacks score 0, resource attacks are killed in
bounded time, escapes fail, and nothing is left behind (processes, IPC objects, files).

CI runs this file as root and again as an unprivileged user (scripts/test.sh); every test holds
in both. Each hostile program is a *wrong* solution of ``add`` plus a trick: without the trick it
would score 0, and with it it must still score 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.rewards.code_reward import CodeReward, extract_code, split_tests
from posttrain.rewards.sandbox import SandboxResult, run_python_sandboxed

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")

TESTS = ["assert add(1, 2) == 3", "assert add(10, -4) == 6"]
reward = CodeReward(timeout_s=3.0, per_test_s=1.0, max_workers=2)
WRONG = "def add(a, b):\n    return 0\n"
MARK = "posttrain-sandbox-"


def _score(code: str, tests=TESTS) -> float | None:
    return reward(["prompt"], [f"```python\n{code}\n```"], [[]], tests=[tests])[0]


def _marked_processes() -> list[int]:
    """Processes of any sandbox run (their command lines carry the run id)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if MARK.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _ipc_objects() -> set[str]:
    """SysV shared memory, queues and semaphores of the host, and POSIX shm files."""
    objects = set()
    for kind in ("shm", "msg", "sem"):
        path = Path(f"/proc/sysvipc/{kind}")
        if path.exists():
            objects |= {f"{kind}:{line.split()[1]}" for line in path.read_text().splitlines()[1:]}
    if Path("/dev/shm").is_dir():
        objects |= {f"posix:{p.name}" for p in Path("/dev/shm").iterdir()}
    return objects


def _stale_folders() -> set[str]:
    return {p.name for p in Path("/tmp").glob("posttrain-sbx-*")}


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """Around every test: no sandbox process, IPC object or work folder survives it."""
    ipc, folders = _ipc_objects(), _stale_folders()
    yield
    deadline = time.monotonic() + 5
    while _marked_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked_processes() == [], "sandbox processes left behind"
    assert _ipc_objects() - ipc == set(), "IPC objects left behind"
    assert _stale_folders() - folders == set(), "work folders left behind"


def _run(code: str, **kwargs) -> SandboxResult:
    kwargs.setdefault("timeout_s", 3.0)
    return run_python_sandboxed(code, **kwargs)


# --- honest programs -----------------------------------------------------------------------


def test_correct_and_half_correct_solutions():
    assert _score("def add(a, b):\n    return a + b") == 1.0
    assert _score("def add(a, b):\n    return a + b if a < 5 else 0") == 0.5
    assert _score(WRONG) == 0.0
    assert _score("def add(a, b) return") == 0.0  # syntax error
    assert reward(["p"], ["x"], [[]], tests=[None]) == [None]
    main_block = "def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    input()"
    assert _score(main_block) == 1.0


def test_solutions_may_use_threads_and_the_environments_packages():
    threads = ("from concurrent.futures import ThreadPoolExecutor\n"
               "def add(a, b):\n    with ThreadPoolExecutor(4) as pool:\n"
               "        return sum(pool.map(int, [a, b]))\n")
    assert _score(threads) == 1.0
    numpy = "import numpy as np\ndef add(a, b):\n    return int(np.add(a, b))\n"
    assert _score(numpy) == 1.0


def test_batch_runs_rows_concurrently_in_order():
    completions = ["def add(a, b):\n    return a + b", WRONG,
                   "def add(a, b):\n    return a + b if a < 5 else 0"]
    assert reward(["p"] * 3, completions, [[]] * 3, tests=[TESTS] * 3) == [1.0, 0.0, 0.5]


def test_string_tests_are_split_per_assert():
    assert split_tests("x = 2\nassert x == 2\nassert x + 1 == 3\n") == [
        "x = 2\nassert x == 2\n", "assert x + 1 == 3\n"]
    assert split_tests('["assert f(1) == 1", "assert f(2) == 2"]') == [
        "assert f(1) == 1", "assert f(2) == 2"]
    assert _score("def add(a, b):\n    return 3",
                  tests="assert add(1, 2) == 3\nassert add(0, 0) == 0") == 0.5


def test_extract_code_prefers_last_python_block():
    text = "```python\nA = 1\n```\ntext\n```\nB = 2\n```\n```py\nC = 3\n```\n"
    assert extract_code(text) == "C = 3\n"
    assert extract_code("```\nB = 2\n```") == "B = 2\n"
    assert extract_code("x = 1") == "x = 1"
    assert extract_code("```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"


# --- reward hacks: a wrong solution plus a trick still scores 0 -----------------------------

HACKS = {
    "eq_always_true": "class Any:\n    def __eq__(self, other): return True\n"
                      "    def __ne__(self, other): return False\n"
                      "def add(a, b):\n    return Any()\n",
    "int_subclass_eq": "class I(int):\n    def __eq__(self, other): return True\n"
                       "def add(a, b):\n    return I(0)\n",
    "exec_noop": "import builtins\nbuiltins.exec = lambda *a, **k: None\n" + WRONG,
    "compile_patched": "import builtins\n_c = builtins.compile\n"
                       "builtins.compile = lambda s, *a, **k: _c('pass', 'x', 'exec')\n" + WRONG,
    "assert_swallowed": "import builtins\n_e = builtins.exec\n"
                        "def ex(code, *a, **k):\n    try:\n        return _e(code, *a, **k)\n"
                        "    except AssertionError:\n        return None\n"
                        "builtins.exec = ex\n" + WRONG,
    "assertion_error_replaced": "import builtins\nclass Nope(Exception):\n    pass\n"
                                "builtins.AssertionError = Nope\n" + WRONG,
    "tests_overwritten": "import __main__\n__main__._TESTS = ['pass'] * 64\n"
                         "__main__._PROBES = []\n" + WRONG,
    "write_patched": "import __main__, os\n_w = os.write\n"
                     "def w(fd, data):\n    return _w(fd, data.replace(b'fail', b'pass'))\n"
                     "__main__._write = w\nos.write = w\n" + WRONG,
    "token_forged": "import __main__, os\n"
                    "for k in range(8):\n"
                    "    os.write(1, (f'\\n{__main__._TOKEN} {k} ' + '{\"value\": {\"i\": \"3\"}}\\n').encode())\n"
                    + WRONG,
    "token_from_frame": "import sys\nf = sys._getframe(1)\n"
                        "tok = f.f_globals.get('_TOKEN', '')\n"
                        "print(f'\\n{tok} 0 ' + '{\"value\": {\"i\": \"6\"}}')\n" + WRONG,
    # (a patched reporter can only *claim* values, as returning them would: it claims True,
    # the value that passes an `assert` inside the interpreter, not the expected result)
    "encoder_patched": "import __main__\n"
                       "__main__._pt_encode = lambda v, depth=0: {'b': True}\n" + WRONG,
    "builtins_patched": "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 0\n"
                        "builtins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: int\n"
                        + WRONG,
    "json_patched": "import json\njson.dumps = lambda *a, **k: '{\"value\": {\"b\": true}}'\n" + WRONG,
    "exit_before_tests": WRONG + "import sys\nsys.exit(0)\n",
    "os_exit": WRONG + "import os\nos._exit(0)\n",
    "prints_pass": "print('test 0 pass\\ntest 1 pass\\nall tests passed')\n" + WRONG,
    "system_exit_in_call": "def add(a, b):\n    raise SystemExit(0)\n",
    "keyboard_interrupt": "def add(a, b):\n    raise KeyboardInterrupt\n",
    "alarm_ignored": "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                     "def add(a, b):\n    while True:\n        pass\n",
    "reads_the_tests_file": "import glob\nfor p in glob.glob('/tmp/**', recursive=True):\n"
                            "    print(p)\n" + WRONG,
    "result_lines_doubled": "import __main__, os\n_w = os.write\n"
                            "def w(fd, data):\n    _w(fd, data)\n"
                            "    return _w(fd, data.replace(b'\"0\"', b'\"3\"'))\n"
                            "os.write = w\n__main__._write = w\n" + WRONG,
    "deep_structure": "def add(a, b):\n    x = []\n    for _ in range(100000):\n        x = [x]\n"
                      "    return x\n",
    "nan_result": "def add(a, b):\n    return float('nan')\n",
    "huge_int": "def add(a, b):\n    return 10 ** 100000\n",
    "output_flood": WRONG + "import sys\nsys.stdout.write('x' * (1 << 22))\n",
    "bool_subclass_trick": "def add(a, b):\n    return True\n",
}


@pytest.mark.parametrize("name", list(HACKS))
def test_reward_hacks_score_nothing(name):
    assert _score(HACKS[name]) == 0.0


def test_the_exec_patch_scores_nothing_on_the_coding_data():
    """The one-line hack that scored 1.0 on every training row of recipes/data/coding."""
    import json

    rows = [json.loads(line) for line in
            (Path(__file__).parents[1] / "recipes/data/coding/train.jsonl").open()]
    hack = "import builtins\nbuiltins.exec = lambda *a, **k: None\n"
    scores = reward(["p"] * len(rows), [f"```python\n{hack}\n```"] * len(rows),
                    [[]] * len(rows), tests=[r["tests"] for r in rows])
    assert scores == [0.0] * len(rows)


def test_truthiness_and_is_checks_want_real_values():
    tests = ["assert is_even(4) is True", "assert is_even(3) is False"]
    assert _score("def is_even(n):\n    return n % 2 == 0", tests) == 1.0
    assert _score("def is_even(n):\n    return 1 - n % 2", tests) == 0.0  # 1 is not True
    assert _score("class T:\n    def __bool__(self): return True\n"
                  "def is_even(n):\n    return T()", tests) == 0.0


# --- resource attacks: killed in bounded time ------------------------------------------------


def test_infinite_loop_and_sleep_are_killed_in_time():
    start = time.monotonic()
    result = _run("while True:\n    pass", timeout_s=1.5)
    assert result.timed_out and result.returncode is None
    assert _run("import time\ntime.sleep(600)", timeout_s=1.0).timed_out
    assert time.monotonic() - start < 8
    assert _score("def add(a, b):\n    while True:\n        pass") == 0.0


def test_fork_and_thread_bombs_stop_at_the_cap():
    forks = ("import os\nn = 0\nwhile True:\n    try:\n        if os.fork() == 0:\n"
             "            import time; time.sleep(600)\n        n += 1\n"
             "    except OSError:\n        print('forks', n)\n        break\n")
    result = _run(forks, max_processes=8)
    assert result.stdout.startswith("forks ") and int(result.stdout.split()[1]) < 8
    threads = ("import threading, time\nn = 0\ntry:\n    while True:\n"
               "        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
               "        n += 1\nexcept RuntimeError:\n    print('threads', n)\n")
    result = _run(threads, max_processes=8)
    assert result.stdout.startswith("threads ") and int(result.stdout.split()[1]) < 8
    assert _score("import os\nwhile True:\n    os.fork()\n" + WRONG) == 0.0


def test_detached_daemons_die_with_the_run():
    code = ("import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        os.setsid()\n"
            "        time.sleep(600)\nprint('parent done')\n")
    result = _run(code, max_processes=8)
    assert result.stdout.strip() == "parent done" and not result.timed_out  # fixture: all gone


def test_memory_bomb_hits_the_limit():
    result = _run("x = bytearray(4 * 1024 ** 3)", memory_mb=256)
    assert result.returncode != 0 and "MemoryError" in result.stderr
    result = _run("a = []\nwhile True:\n    a.append(' ' * 10 ** 7)", memory_mb=256)
    assert result.returncode != 0 and not result.ok
    assert _score("x = [0] * (10 ** 10)\ndef add(a, b):\n    return a + b") == 0.0


def test_disk_and_file_limits():
    fill = ("n = 0\ntry:\n    while True:\n        open(f'f{n}', 'wb').write(b'x' * (1 << 20))\n"
            "        n += 1\nexcept OSError as e:\n    print('stopped', n, e.errno)\n")
    result = _run(fill, max_file_mb=2)
    assert result.stdout.startswith("stopped") and int(result.stdout.split()[1]) <= 8
    files = ("fs = []\ntry:\n    while True:\n        fs.append(open('/dev/null'))\n"
             "except OSError as e:\n    print('open files', len(fs))\n")
    assert int(_run(files).stdout.split()[-1]) < 64


def test_output_flood_is_capped():
    result = _run("while True:\n    print('x' * 10000)", max_output_bytes=100_000)
    assert result.output_truncated and len(result.stdout) <= 100_000


def test_ipc_objects_die_with_the_run_and_runs_do_not_share_them():
    shm = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "ids = [libc.shmget(0, 64 << 20, 0o1600) for _ in range(16)]\n"  # IPC_PRIVATE|CREAT
           "for i in ids:\n    libc.shmat(i, None, 0)\n"
           "q = libc.msgget(0x5054, 0o1600)\n"
           "buf = ctypes.create_string_buffer(b'\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00secret', 64)\n"
           "print('made', sum(i >= 0 for i in ids), q >= 0, libc.msgsnd(q, buf, 6, 0))\n"
           "open('/dev/shm/posttrain-probe', 'w').write('x')\n")
    assert _run(shm).stdout.startswith("made 16 True 0")
    later = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "print('queue', libc.msgget(0x5054, 0), ctypes.get_errno())\n"
             "import os\nprint(os.listdir('/dev/shm'))\n")
    out = _run(later).stdout
    assert "queue -1 2" in out and "posttrain-probe" not in out  # ENOENT: a fresh namespace


# --- escapes ---------------------------------------------------------------------------------


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
        assert result.isolation["network"], result.isolation
        with pytest.raises(BlockingIOError):
            server.accept()  # the server never saw a connection
    finally:
        server.close()


def test_host_unix_sockets_are_out_of_reach(tmp_path):
    paths = [tmp_path / "x.sock"]
    if os.access("/run", os.W_OK):
        paths.append(Path(f"/run/posttrain-test-{os.getpid()}.sock"))
    servers = []
    try:
        for path in paths:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(path))
            server.listen(4)
            server.setblocking(False)
            servers.append(server)
        code = ("import socket\nfor p in %r:\n    try:\n        s = socket.socket(socket.AF_UNIX)\n"
                "        s.connect(p)\n        s.sendall(b'stolen')\n        print('reached', p)\n"
                "    except OSError as e:\n        print('no', p, e.errno)\n" % [str(p) for p in paths])
        result = _run(code)
        assert "reached" not in result.stdout and result.stdout.count("no ") == len(paths)
        for server in servers:
            with pytest.raises(BlockingIOError):
                server.accept()
    finally:
        for server in servers:
            server.close()
        for path in paths:
            path.unlink(missing_ok=True)


def test_cannot_change_anything_outside_its_folder(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("original")
    shared = Path(f"/tmp/posttrain-ww-{os.getpid()}")
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # world-writable, no sticky bit
    victim = shared / "owned-by-us.txt"
    victim.write_text("keep me")
    project = Path(__file__).resolve().parents[1] / "src" / "posttrain" / "__init__.py"
    before = project.read_bytes()
    try:
        code = f"""
import os, sys
hits = []
for path in ({str(target)!r}, {str(tmp_path / "new.txt")!r}, "/etc/posttrain-escape",
             {str(project)!r}, os.path.join(sys.prefix, "posttrain-escape")):
    try:
        with open(path, "w") as f:
            f.write("pwned")
        hits.append(path)
    except OSError:
        pass
for path in ({str(victim)!r}, {str(target)!r}):
    try:
        os.remove(path)
        hits.append("removed " + path)
    except OSError:
        pass
open("inside.txt", "w").write("fine")
print("hits", hits, open("inside.txt").read())
"""
        result = _run(code)
        assert result.returncode == 0, result.stderr
        assert "hits [] fine" in result.stdout
        assert target.read_text() == "original" and victim.read_text() == "keep me"
        assert not (tmp_path / "new.txt").exists() and not Path("/etc/posttrain-escape").exists()
        assert project.read_bytes() == before
        assert not Path(sys.prefix, "posttrain-escape").exists()
    finally:
        victim.unlink(missing_ok=True)
        shared.rmdir()


def test_parent_environment_and_processes_are_invisible(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_SECRET", "hunter2-secret-value")
    code = """
import os, glob
print(sorted(os.environ))
leaks = []
for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
    try:
        if b"hunter2" in open(path, "rb").read():
            leaks.append(path)
    except OSError:
        pass
print("leaks", leaks)
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
"""
    result = _run(code)
    assert "hunter2" not in result.stdout + result.stderr and "POSTTRAIN_SECRET" not in result.stdout
    assert "leaks []" in result.stdout
    pids = eval(result.stdout.split("pids ")[1])  # noqa: S307 - our own printout
    assert pids and max(pids) < 10  # only the run's own init and worker


def test_cannot_signal_the_trainer():
    me = os.getpid()
    code = f"""
import os, signal
for pid in (os.getppid(), {me}, -1):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as exc:
        print(pid, type(exc).__name__)
"""
    _run(code)
    assert os.getpid() == me  # still here
    assert _score(f"import os\nos.kill({me}, 9)\n" + WRONG) == 0.0


NAMESPACE_ESCAPES = {
    "unshare_user": "libc.unshare(0x10000000)",
    "unshare_mount": "libc.unshare(0x00020000)",
    "setns": "libc.setns(os.open('/proc/self/ns/net', os.O_RDONLY), 0)",
    "mount_tmpfs": "libc.mount(b'tmpfs', b'/tmp/work', b'tmpfs', 0, None)",
    "remount_rw": "libc.mount(None, b'/usr', None, 32 | 4096, None)",
    "chroot": "libc.chroot(b'/tmp')",
    "ptrace": "libc.ptrace(16, 1, None, None)",
    "keyctl": "libc.syscall(250 if os.uname().machine == 'x86_64' else 219, 0, 0, 0, 0)",
    "bpf": "libc.syscall(321 if os.uname().machine == 'x86_64' else 280, 0, 0, 0)",
    "io_uring": "libc.syscall(425, 8, 0)",
    "clone_newuser": "libc.syscall(56 if os.uname().machine == 'x86_64' else 220, 0x10000000 | 17, 0, 0, 0, 0)",
}


@pytest.mark.parametrize("name", list(NAMESPACE_ESCAPES))
def test_syscalls_that_undo_the_isolation_are_refused(name):
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"rc = {NAMESPACE_ESCAPES[name]}\nprint('rc', rc, ctypes.get_errno())\n")
    result = _run(code)
    assert result.stdout.startswith("rc -1 "), (result.stdout, result.stderr)
    assert int(result.stdout.split()[2]) in (1, 38), result.stdout  # EPERM (or ENOSYS)


def test_setuid_programs_grant_nothing():
    code = ("import os, subprocess\n"
            "print(subprocess.run(['/bin/su', '-c', 'id'], capture_output=True).returncode != 0,"
            " os.geteuid() == os.getuid())\n")
    result = _run(code, max_processes=8)
    assert "True True" in result.stdout or "FileNotFoundError" in result.stderr


def test_a_killed_trainer_leaves_no_sandbox_behind(tmp_path):
    script = tmp_path / "scorer.py"
    src = str(Path(__file__).resolve().parents[1] / "src")
    script.write_text(
        f"import sys, threading\nsys.path.insert(0, {src!r})\n"
        "from posttrain.rewards.sandbox import run_python_sandboxed\n"
        "def one():\n    run_python_sandboxed('import time\\ntime.sleep(60)', timeout_s=60)\n"
        "threads = [threading.Thread(target=one) for _ in range(3)]\n"
        "[t.start() for t in threads]\nprint('started', flush=True)\n"
        "[t.join() for t in threads]\n")
    scorer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert scorer.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 10
    while len(_marked_processes()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked_processes(), "the runs did not start"
    scorer.send_signal(signal.SIGKILL)
    scorer.wait()
    # the fixture checks that every process of the three runs is gone within seconds


def test_unsafe_mode_is_explicit(monkeypatch):
    """Without namespaces nothing runs unless asked for by name; asked for, the limits hold."""
    from posttrain.rewards.sandbox import UNSAFE_ENV, UNSAFE_VALUE

    monkeypatch.setenv(UNSAFE_ENV, UNSAFE_VALUE)
    result = _run("import os\nprint(os.getcwd().startswith('/tmp/posttrain-sbx-'))")
    assert result.stdout.strip() == "True" and not result.isolation["namespaces"]
    assert _run("while True:\n    pass", timeout_s=1.0).timed_out
