"""Run untrusted Python (model-written code) in a separate, resource-limited process.

Generated code is hostile by default: it may loop forever, fork-bomb, eat memory, flood its
output, open sockets, write over our files, read our secrets or kill us. Each run goes through a
small trusted *launcher* (``python -I -S`` in its own session) that applies every limit the kernel
lets it and then ``exec``s a fresh ``python -I`` on the code:

* network namespace: no interface is up, so nothing is reachable, loopback included;
* mount namespace with private tmpfs over /tmp, /var/tmp, /dev/shm, /run/lock: the work
  directory lives there and vanishes with the run;
* PID namespace with a tiny init: when the run ends the kernel kills every process in it, and
  the code cannot name (let alone signal) any process outside;
* as root: uid/gid ``nobody`` (cannot write our files or signal our processes), then
  RLIMIT_NPROC (counted per uid, so only meaningful after the uid change); no_new_privs;
  not root: an unprivileged user namespace where allowed (same namespaces and NPROC, but the code
  keeps our uid, so our files outside the private tmpfs stay writable to it);
* RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE; a scrubbed environment;
  stdin on /dev/null; stdout/stderr read with a size cap; a wall-clock deadline; SIGKILL to the
  namespace init / worker and the process group, returning only once every process is gone.

Every namespace step is best effort (containers may forbid them); what was achieved is reported in
``SandboxResult.isolation``. Without a network namespace the code is prefixed with a Python-level
socket block, which code using ``ctypes`` can bypass: check ``isolation["network"]``.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from posttrain.errors import PosttrainError

NOBODY_UID = 65534
NOBODY_GID = 65534
_PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_ENV_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxUnavailable(PosttrainError):
    """No Python interpreter could be started inside the sandbox on this machine."""


@dataclass
class SandboxResult:
    """What happened to one sandboxed run. ``returncode`` is negative for a signal (as in
    ``subprocess``) and None when the run was killed before its exit status was known."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    output_truncated: bool = False
    duration_s: float = 0.0
    isolation: dict[str, bool] = field(default_factory=dict)
    run_id: str = ""
    pid: int = 0  # the launcher's pid == the session / process-group id of the run

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_truncated


# The launcher runs as the caller's user in a fresh `python -I -S` (single-threaded, so unlike
# subprocess's preexec_fn it is safe to use from threads). Config arrives as JSON on stdin.
_LAUNCHER = r"""
import ctypes, json, os, resource, sys
cfg = json.loads(sys.stdin.buffer.read())
sfd = cfg["status_fd"]
def report(**kw):
    try:
        os.write(sfd, (json.dumps(kw) + "\n").encode())
    except OSError:
        pass
libc = ctypes.CDLL(None, use_errno=True)
def unshare(flag):
    return cfg["namespaces"] and libc.unshare(flag) == 0
def mount(src, dst, fstype, flags, data):
    return libc.mount(src.encode(), dst.encode(), fstype.encode() if fstype else None, flags,
                      data.encode() if data else None) == 0
root = os.geteuid() == 0
iso = {"network": False, "private_tmp": False, "pid_namespace": False, "uid_dropped": root,
       "user_namespace": False, "nproc_limited": False}
if not root and unshare(0x10000000):  # CLONE_NEWUSER: unprivileged namespaces, if allowed
    iso["user_namespace"] = True
    uid, gid = os.getuid(), os.getgid()
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                           ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError:
        pass
if not cfg["allow_network"]:
    iso["network"] = unshare(0x40000000)  # CLONE_NEWNET
if unshare(0x00020000) and mount("none", "/", None, 16384 | (1 << 18), None):  # NEWNS, rprivate
    ok = True
    for d in cfg["tmp_dirs"]:
        if os.path.isdir(d):
            size = cfg["disk_mb"] if d == "/tmp" else 1
            ok = mount("tmpfs", d, "tmpfs", 2 | 4, f"size={size}m,mode=1777") and ok  # nosuid,nodev
    iso["private_tmp"] = ok
iso["pid_namespace"] = unshare(0x20000000)  # CLONE_NEWPID: applies to our children
null = os.open("/dev/null", os.O_RDWR)
os.dup2(null, 0)
work = cfg["workdir"]
os.makedirs(work, mode=0o700, exist_ok=True)
code = cfg["files"]["main.py"]
if not iso["network"] and not cfg["allow_network"]:
    code = cfg["no_network_preamble"] + code
for name, text in cfg["files"].items():
    path = os.path.join(work, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(code if name == "main.py" else text)
    if root:
        os.chown(path, cfg["uid"], cfg["gid"])
if root:
    for dirpath, _, _ in os.walk(work):
        os.chown(dirpath, cfg["uid"], cfg["gid"])
# RLIMIT_NPROC counts per uid (per user namespace): meaningful for `nobody` or in our own userns
# (where the launcher and init count too).
iso["nproc_limited"] = root or iso["user_namespace"]
init = os.fork()
if init:
    report(isolation=iso, init_pid=init)
    os.waitpid(init, 0)
    os._exit(0)
if iso["pid_namespace"] and iso["private_tmp"]:
    mount("proc", "/proc", "proc", 2 | 4 | 8, None)  # hide the host's processes
worker = os.fork()
if worker == 0:
    try:
        os.closerange(3, 65536)
        os.chdir(work)
        R = resource
        cpu = cfg["cpu_s"]
        for lim, val in ((R.RLIMIT_CORE, (0, 0)), (R.RLIMIT_CPU, (cpu, cpu + 1)),
                         (R.RLIMIT_AS, (cfg["memory_bytes"],) * 2),
                         (R.RLIMIT_FSIZE, (cfg["file_bytes"],) * 2), (R.RLIMIT_NOFILE, (64, 64))):
            R.setrlimit(lim, val)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries gain nothing
        if root:
            os.setgroups([])
            os.setgid(cfg["gid"])
            os.setuid(cfg["uid"])
        if iso["nproc_limited"]:
            nproc = cfg["max_processes"] + (0 if root else 2)
            R.setrlimit(R.RLIMIT_NPROC, (nproc, nproc))
        os.umask(0o077)
        py = cfg["python"]
        os.execve(py, [py, "-I", "-B", "-X", "utf8", "main.py", cfg["run_id"]], cfg["env"])
    except BaseException as exc:
        os.write(2, f"sandbox launcher: {exc!r}\n".encode())
    os._exit(127)
report(worker_pid=worker)
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        os._exit(0)
    if pid == worker:
        report(exit=os.waitstatus_to_exitcode(status))
        os._exit(0)
"""

# Used only when the network namespace could not be created: blocks the socket API at the Python
# level. Weaker: code that goes through ctypes/raw syscalls is not stopped.
_NO_NETWORK_PREAMBLE = (
    "import _socket, socket\n"
    "def _pt_no_network(*a, **k):\n"
    "    raise OSError(101, 'network access is disabled in the sandbox')\n"
    "for _m in (_socket, socket):\n"
    "    for _n in ('socket', 'SocketType', 'create_connection', 'socketpair', 'fromfd',"
    " 'create_server', 'getaddrinfo'):\n"
    "        if hasattr(_m, _n):\n"
    "            setattr(_m, _n, _pt_no_network)\n"
    "del _m, _n, _socket, socket\n"
)

_USE_NAMESPACES = True  # tests turn this off to exercise the fallback path
_python_lock = threading.Lock()
_python_cache: str | None = None


def sandbox_python() -> str:
    """The interpreter the sandboxed code runs with, found once per process by trying it.

    Our own interpreter may be unreachable for ``nobody`` (e.g. pyenv under ``/root``, mode 700),
    so candidates are tried in order: this interpreter, then the system ``python3``.
    """
    global _python_cache
    with _python_lock:
        if _python_cache is not None:
            return _python_cache
        candidates = [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]
        candidates += [p for p in (shutil.which("python3"),) if p]
        tried = []
        for cand in dict.fromkeys(os.path.realpath(c) for c in candidates if os.path.exists(c)):
            res = _run(
                "import sys\nprint('ok')\n", python=cand, timeout_s=20.0, memory_mb=512,
                cpu_time_s=None, max_output_bytes=4096, max_file_mb=1, max_processes=1,
                allow_network=False, files=None,
            )
            if res.returncode == 0 and res.stdout.strip() == "ok":
                _python_cache = cand
                return cand
            tried.append(f"{cand} (exit {res.returncode}: {res.stderr.strip()[-200:]})")
        raise SandboxUnavailable(
            "no Python interpreter could run inside the code sandbox; tried: " + "; ".join(tried)
            + ". Pass python=/path/to/python3 readable and executable by everyone."
        )


def run_python_sandboxed(
    code: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    cpu_time_s: float | None = None,
    max_output_bytes: int = 1 << 20,
    max_file_mb: int = 16,
    max_processes: int = 1,
    allow_network: bool = False,
    files: Mapping[str, str] | None = None,
    python: str | None = None,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a throw-away directory under every limit listed above.

    ``timeout_s`` is wall-clock; ``cpu_time_s`` (default: ``timeout_s``) is RLIMIT_CPU.
    ``max_processes``: how many processes the code may have (1 = it cannot fork).
    Output beyond ``max_output_bytes`` per stream kills the run (``output_truncated``).
    ``files`` are extra text files written next to ``main.py``.
    """
    return _run(
        code, python=python or sandbox_python(), timeout_s=timeout_s, memory_mb=memory_mb,
        cpu_time_s=cpu_time_s, max_output_bytes=max_output_bytes, max_file_mb=max_file_mb,
        max_processes=max_processes, allow_network=allow_network, files=files,
    )


def _run(
    code: str, *, python: str, timeout_s: float, memory_mb: int, cpu_time_s: float | None,
    max_output_bytes: int, max_file_mb: int, max_processes: int, allow_network: bool,
    files: Mapping[str, str] | None,
) -> SandboxResult:
    run_id = f"posttrain-sandbox-{uuid.uuid4().hex}"
    all_files = {"main.py": code}
    for name, text in (files or {}).items():
        if os.path.isabs(name) or ".." in name.split("/") or name == "main.py":
            raise ValueError(f"sandbox file name {name!r} must be a plain relative path")
        all_files[name] = text
    workdir = tempfile.mkdtemp(prefix="posttrain-sbx-")
    status_r, status_w = os.pipe()
    env = {"PATH": _ENV_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir,
           "TMPDIR": workdir}
    cfg = {
        "status_fd": status_w, "allow_network": allow_network, "tmp_dirs": _PRIVATE_TMP_DIRS,
        "disk_mb": max(1, max_file_mb * 4), "workdir": workdir, "files": all_files,
        "no_network_preamble": _NO_NETWORK_PREAMBLE, "uid": NOBODY_UID, "gid": NOBODY_GID,
        "cpu_s": max(1, int(-(-(cpu_time_s or timeout_s) // 1))),
        "memory_bytes": int(memory_mb) << 20, "file_bytes": int(max_file_mb) << 20,
        "max_processes": int(max_processes), "python": python, "run_id": run_id, "env": env,
        "namespaces": _USE_NAMESPACES,
    }
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, run_id],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd="/", start_new_session=True, pass_fds=(status_w,),
        )
    except BaseException:
        os.close(status_r)
        os.close(status_w)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    os.close(status_w)
    try:
        return _supervise(proc, status_r, json.dumps(cfg).encode(), start, timeout_s,
                          max_output_bytes, run_id)
    finally:
        os.close(status_r)
        shutil.rmtree(workdir, ignore_errors=True)


def _supervise(
    proc: subprocess.Popen, status_r: int, payload: bytes, start: float, timeout_s: float,
    cap: int, run_id: str,
) -> SandboxResult:
    """Feed the launcher its config, read output with a cap until exit or deadline, then make
    sure nothing of the run survives."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    deadline = start + timeout_s
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    status_buf = bytearray()
    sel = selectors.DefaultSelector()
    for fd in (*bufs, status_r):
        sel.register(fd, selectors.EVENT_READ)
    timed_out = truncated = False
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=remaining):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                elif key.fd == status_r:
                    status_buf += data
                else:
                    buf = bufs[key.fd]
                    room = cap - len(buf)
                    buf += data[:room]
                    truncated = truncated or len(data) > room
            if truncated:
                break
    finally:
        while status_r in sel.get_map() and select.select([status_r], [], [], 0)[0]:
            chunk = os.read(status_r, 65536)  # a pid report that arrived at the deadline
            if not chunk:
                break
            status_buf += chunk
        status = _parse_status(status_buf)
        _end_run(proc, status)
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    out, err = (bytes(b).decode("utf-8", "replace") for b in bufs.values())
    return SandboxResult(
        returncode=status.get("exit"), stdout=out, stderr=err, timed_out=timed_out,
        output_truncated=truncated, duration_s=time.monotonic() - start,
        isolation=status.get("isolation", {}), run_id=run_id, pid=proc.pid,
    )


def _parse_status(buf: bytearray) -> dict:
    status: dict = {}
    for line in bytes(buf).splitlines():
        try:
            status.update(json.loads(line))
        except ValueError:
            continue
    return status


def _end_run(proc: subprocess.Popen, status: dict) -> None:
    """Make sure nothing of the run survives, and return only once it is all gone.

    A still-running worker is stopped by SIGKILL to the namespace init (the kernel then kills
    and reaps everything in the PID namespace) or, without one, to the worker itself; init and
    the launcher then exit on their own and reap their children, so no orphan is left for the
    system's init to collect later. Anything else in the process group is killed last.
    """
    pid_ns = status.get("isolation", {}).get("pid_namespace", False)
    if proc.poll() is None and "exit" not in status:
        # the launcher is unreaped and the worker has not exited: these pids are still ours
        target = status.get("init_pid") if pid_ns else status.get("worker_pid")
        if target:
            _kill(target)
        else:  # killed before the launcher even reported: take the whole group down
            _kill(-proc.pid)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - the launcher only waits on init
        _kill(-proc.pid)
        proc.wait()
    if not pid_ns:
        _kill(-proc.pid)  # stragglers (only possible with max_processes > 1)


def _kill(pid: int) -> None:
    """SIGKILL a pid (or a process group, for a negative pid); gone already is fine."""
    try:
        if pid < 0:
            os.killpg(-pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
