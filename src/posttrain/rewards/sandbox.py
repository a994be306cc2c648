"""Run untrusted Python (model-written code) in a separate, resource-limited process.

Generated code is hostile by default: it may loop forever, fork-bomb, eat memory, flood its
output, open sockets, leave IPC objects behind, write over our files, read our secrets or kill
us. Each run goes through a small trusted *launcher* (``python -I -S`` in its own session) that
builds the sandbox and then ``exec``s the project's own interpreter (``python -I``, so it imports
what the environment has) on the code:

* **namespaces**: network (no interface up: nothing reachable, loopback included), IPC (SysV
  and POSIX message queues / shared memory die with the run), UTS, PID (a tiny init; when it
  ends the kernel kills every process of the run, and the code sees no process outside), mount,
  and, for a non-root caller, a user namespace (so none of this needs root);
* **a fresh filesystem view** (``pivot_root`` into a tmpfs): read-only bind mounts of the
  system directories and the interpreter's own prefix and import paths, a private ``/proc``,
  a minimal ``/dev``, and a size-limited ``/tmp`` that holds the work folder and vanishes with
  the run. Nothing else of the host exists inside: no ``/run``, ``/var``, ``/home`` or project
  folder, hence no host Unix sockets and no world-writable host folders;
* **identity**: as root the code runs as a fresh unprivileged uid/gid (a random one per run,
  owning nothing); otherwise as the caller's uid mapped to root inside its own user namespace,
  with every capability dropped;
* **seccomp**: the syscalls that would undo the above are refused (``unshare``, ``setns``,
  ``clone``/``clone3`` with namespace flags, ``mount``, ``pivot_root``, ``ptrace``, ``bpf``,
  ``keyctl``, ``io_uring``, ...), plus ``PR_SET_NO_NEW_PRIVS``;
* **limits**: RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE, RLIMIT_NPROC
  (tasks, so threads work up to a cap and a fork bomb stops there); a scrubbed environment;
  stdin on /dev/null; stdout/stderr read with a size cap; a wall-clock deadline;
* **no orphans**: every process of the run has a parent-death signal (SIGKILL), so when the
  trainer dies, even by SIGKILL, the whole run dies with it; the supervisor returns only once
  every process of the run is gone.

If the kernel refuses any namespace step (some containers do), the run fails with
``SandboxUnavailable`` naming the step. ``unsafe_no_isolation=True`` (or the environment
variable ``POSTTRAIN_SANDBOX=unsafe-no-isolation``) runs with the limits alone: the code can then
read the environment of the trainer's processes, reach the network and signal them. Only for
code you trust; see docs/security.md.
"""

from __future__ import annotations

import json
import os
import secrets
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
from pathlib import Path

from posttrain.errors import PosttrainError

UNSAFE_ENV = "POSTTRAIN_SANDBOX"
UNSAFE_VALUE = "unsafe-no-isolation"
_ENV_PATH = "/usr/local/bin:/usr/bin:/bin"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_WORKDIR = "/tmp/work"  # inside the sandbox
_STALE_PREFIX = "posttrain-sbx-"  # host folders of unsafe runs, named by the trainer's pid


class SandboxUnavailable(PosttrainError):
    """The sandbox cannot be built on this machine (the message says which step failed)."""


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
# subprocess's preexec_fn it is safe to use from threads). Its config arrives as JSON on stdin.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, struct, sys
cfg = json.loads(sys.stdin.buffer.read())
sfd = cfg["status_fd"]
def report(**kw):
    try:
        os.write(sfd, (json.dumps(kw) + "\n").encode())
    except OSError:
        pass
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_char_p]
def die_with_parent(parent):
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the line above: nobody to report to
die_with_parent(cfg["parent_pid"])
def fail(stage):
    err = ctypes.get_errno()
    report(setup_error="%s: %s" % (stage, os.strerror(err) if err else "failed"))
    os._exit(0)
def check(ok, stage):
    if not ok:
        fail(stage)
def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    return libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) == 0
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE, MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 16384, 1 << 18, 1024, 2048, 1 << 21
ST = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME,
      2048: MS_NODIRATIME, 4096: MS_RELATIME}
def locked_flags(path):  # flags a bind remount must keep (the kernel locks them in a userns)
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in ST.items() if f & st)
def bind_ro(src, dst):
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    check(mount(src, dst, None, MS_BIND), "bind " + src)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | locked_flags(src)
    check(mount(None, dst, None, flags), "read-only " + src)

safe = not cfg["unsafe"]
root = os.geteuid() == 0
uid, gid = os.getuid(), os.getgid()  # before any namespace: afterwards they read as nobody
iso = {"namespaces": False, "network": False, "ipc": False, "pid": False, "filesystem": False,
       "user": False, "seccomp": False}
NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET = (0x20000, 0x04000000, 0x08000000,
                                                  0x10000000, 0x20000000, 0x40000000)
if safe:
    flags = NEWNS | NEWUTS | NEWIPC | NEWPID | (0 if cfg["allow_network"] else NEWNET)
    check(libc.unshare(flags | (0 if root else NEWUSER)) == 0, "unshare")
    if not root:  # our uid becomes root of the new user namespace (and only there)
        try:
            for name, text in (("setgroups", "deny"), ("uid_map", "0 %d 1" % uid),
                               ("gid_map", "0 %d 1" % gid)):
                fd = os.open("/proc/self/" + name, os.O_WRONLY)
                os.write(fd, text.encode())
                os.close(fd)
        except OSError as exc:
            report(setup_error="user namespace map: %s" % exc)
            os._exit(0)
        iso["user"] = True
    iso.update(namespaces=True, network=not cfg["allow_network"], ipc=True, pid=True,
               seccomp=True)  # applied by the worker before exec (it exits 127 otherwise)
null = os.open("/dev/null", os.O_RDWR)
os.dup2(null, 0)
launcher = os.getpid()
init = os.fork()  # pid 1 of the new PID namespace: builds the filesystem, then runs the worker
if init:
    report(init_pid=init)
    os.waitpid(init, 0)
    os._exit(0)
die_with_parent(0 if safe else launcher)  # in a PID namespace the parent reads as 0
if safe:
    libc.sethostname(b"sandbox", 7)
    # a new root: tmpfs with read-only binds of what the interpreter needs, nothing else
    check(mount(None, "/", None, MS_REC | MS_PRIVATE), "make mounts private")
    new = cfg["staging"]
    check(mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,mode=755" % 16),
          "tmpfs root")
    for path in cfg["binds"]:
        if os.path.islink(path) and path in cfg["system_dirs"]:
            os.symlink(os.readlink(path), new + path)  # merged /usr: /bin -> usr/bin
        elif os.path.exists(path):
            bind_ro(path, new + path)
    os.makedirs(new + "/dev", exist_ok=True)
    check(mount("tmpfs", new + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755"),
          "tmpfs /dev")
    for dev in ("null", "zero", "full", "random", "urandom"):
        open(new + "/dev/" + dev, "a").close()
        check(mount("/dev/" + dev, new + "/dev/" + dev, None, MS_BIND), "bind /dev/" + dev)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, new + "/dev/" + name)
    for d, size in (("/dev/shm", 1), ("/tmp", cfg["disk_mb"])):
        os.makedirs(new + d, exist_ok=True)
        check(mount("tmpfs", new + d, "tmpfs", MS_NOSUID | MS_NODEV,
                    "size=%dm,mode=1777" % size), "tmpfs " + d)
    os.makedirs(new + "/proc", exist_ok=True)
    # this process is pid 1 of the new PID namespace: its /proc shows the run's processes only
    # (mounted while the host's /proc is still visible, which an unprivileged mount requires)
    check(mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC), "mount /proc")
    os.makedirs(new + "/.old", exist_ok=True)
    check(libc.syscall(cfg["nr_pivot_root"], new.encode(), (new + "/.old").encode()) == 0,
          "pivot_root")
    os.chdir("/")
    check(libc.umount2(b"/.old", 2) == 0, "detach the host root")  # MNT_DETACH
    os.rmdir("/.old")
    check(mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV),
          "read-only root")
    iso["filesystem"] = True
report(isolation=iso)
work = cfg["workdir"]
os.makedirs(work, mode=0o700, exist_ok=True)
for name, text in cfg["files"].items():
    path = os.path.join(work, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
run_uid, run_gid = (cfg["uid"], cfg["gid"]) if root else (0 if safe else uid, 0 if safe else gid)
if root:
    for dirpath, _, files in os.walk(work):
        os.chown(dirpath, run_uid, run_gid)
        for name in files:
            os.chown(os.path.join(dirpath, name), run_uid, run_gid)
init_pid = os.getpid()
worker = os.fork()
if worker == 0:
    try:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
        os.closerange(3, 65536)
        os.chdir(work)
        R = resource
        cpu = cfg["cpu_s"]
        for lim, val in ((R.RLIMIT_CORE, (0, 0)), (R.RLIMIT_CPU, (cpu, cpu + 1)),
                         (R.RLIMIT_AS, (cfg["memory_bytes"],) * 2),
                         (R.RLIMIT_FSIZE, (cfg["file_bytes"],) * 2), (R.RLIMIT_NOFILE, (64, 64)),
                         (R.RLIMIT_NPROC, (cfg["max_tasks"],) * 2)):
            R.setrlimit(lim, val)
        if root:
            os.setgroups([])
            os.setgid(run_gid)
            os.setuid(run_uid)
        elif safe:  # root of our own user namespace: keep the uid, drop every capability
            libc.prctl(28, 0x2F, 0, 0, 0)  # PR_SET_SECUREBITS: NOROOT | NO_SETUID_FIXUP (+locks)
            header = struct.pack("II", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
            if libc.capset(header, bytes(24)) != 0:
                raise OSError(ctypes.get_errno(), "capset")
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # setuid cleared it: set it again
        if os.getppid() != init_pid:
            os._exit(1)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries gain nothing
        if safe:
            prog = bytes.fromhex(cfg["seccomp"])
            buf = ctypes.create_string_buffer(prog, len(prog))
            fprog = struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
            if libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) != 0:  # SECCOMP_MODE_FILTER
                raise OSError(ctypes.get_errno(), "seccomp")
        os.umask(0o077)
        py = cfg["python"]
        os.execve(py, [py, "-I", "-B", "-X", "utf8", "main.py", cfg["run_id"]], cfg["env"])
    except BaseException as exc:
        os.write(2, ("sandbox launcher: %r\n" % (exc,)).encode())
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

# --- seccomp: refuse the syscalls that would undo the isolation ---------------------------

# (audit arch, {name: number}) per machine; clone's namespace flags are checked in its arg 0
_SYSCALLS = {
    "x86_64": (0xC000003E, {
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
        "chroot": 161, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "kexec_load": 246, "kexec_file_load": 320, "swapon": 167, "swapoff": 168, "reboot": 169,
        "acct": 163, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "mount_setattr": 442, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "clone": 56, "clone3": 435}),
    "aarch64": (0xC00000B7, {
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "keyctl": 219,
        "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241,
        "userfaultfd": 282, "init_module": 105, "finit_module": 273, "delete_module": 106,
        "kexec_load": 104, "kexec_file_load": 294, "swapon": 224, "swapoff": 225, "reboot": 142,
        "acct": 89, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "mount_setattr": 442, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "clone": 220, "clone3": 435}),
}
_NAMESPACE_FLAGS = 0x7E020080  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
_EPERM, _ENOSYS = 1, 38


def _machine() -> tuple[int, dict[str, int]]:
    import platform

    machine = platform.machine()
    if machine not in _SYSCALLS:
        raise SandboxUnavailable(f"the code sandbox knows the syscalls of x86_64 and aarch64, "
                                 f"not {machine}")
    return _SYSCALLS[machine]


def seccomp_program() -> bytes:
    """A classic-BPF seccomp filter: kill on a foreign architecture, EPERM for the refused
    syscalls and for clone with namespace flags, ENOSYS for clone3 (whose flags a filter cannot
    read; the C library then falls back to clone), allow everything else."""
    import struct

    arch, table = _machine()
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    allow, kill = 0x7FFF0000, 0x80000000
    errno = lambda e: 0x00050000 | e  # noqa: E731
    refused = [nr for name, nr in table.items() if name not in ("clone", "clone3")]
    prog = [op(ld, 4), op(jeq, arch, 1, 0), op(ret, kill), op(ld, 0)]
    if arch == 0xC000003E:  # the x32 ABI's numbers (bit 30) would dodge the table
        prog += [op(jge, 0x40000000, 0, 1), op(ret, errno(_EPERM))]
    for nr in refused:
        prog += [op(jeq, nr, 0, 1), op(ret, errno(_EPERM))]
    prog += [op(jeq, table["clone3"], 0, 1), op(ret, errno(_ENOSYS))]
    prog += [op(jeq, table["clone"], 0, 3), op(ld, 16), op(jset, _NAMESPACE_FLAGS, 0, 1),
             op(ret, errno(_EPERM))]
    prog += [op(ret, allow)]
    return b"".join(prog)


# --- what the sandbox sees of the host ---------------------------------------------------


def _interpreter_paths(python: str) -> list[str]:
    """The interpreter's prefixes and import path (read-only inside), outermost first."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(python),
             os.path.dirname(os.path.realpath(python)), *sys.path]
    out: list[str] = []
    for path in paths:
        if not path or not os.path.isabs(path):
            continue
        real = os.path.realpath(path)
        if os.path.isfile(real):  # a zip on sys.path: bind its folder
            real = os.path.dirname(real)
        if os.path.isdir(real):
            out.append(real)
    return out


def _binds(python: str) -> list[str]:
    """Host paths bound read-only into the sandbox: the system folders, then the
    interpreter's own folders that they do not already contain."""
    chosen = [d for d in _SYSTEM_DIRS if os.path.lexists(d)]
    inside = lambda p, d: p == d or p.startswith(d.rstrip("/") + "/")  # noqa: E731
    for path in sorted(set(_interpreter_paths(python)), key=len):
        if not any(inside(path, d) and not os.path.islink(d) for d in chosen):
            chosen.append(path)
    return chosen


def _staging(binds: list[str]) -> str:
    """An existing host folder to build the new root on (shadowed only inside the sandbox's
    own mount namespace), one that no bound path lies under."""
    for candidate in ("/mnt", "/media", "/srv", "/opt", "/tmp"):
        if os.path.isdir(candidate) and not os.path.islink(candidate) and not any(
                b == candidate or b.startswith(candidate + "/") for b in binds):
            return candidate
    raise SandboxUnavailable("no folder to build the sandbox's root on (tried /mnt, /media, "
                             "/srv, /opt, /tmp: each holds part of the interpreter)")


def _unsafe_requested(unsafe: bool | None) -> bool:
    return bool(unsafe) or os.environ.get(UNSAFE_ENV, "") == UNSAFE_VALUE


def remove_stale_workdirs(root: str | None = None) -> int:
    """Remove work folders that unsafe runs of trainers that no longer exist left behind
    (``posttrain-sbx-<pid>-*``). Safe runs leave none: theirs live in the sandbox's own tmpfs."""
    removed = 0
    for path in Path(root or tempfile.gettempdir()).glob(f"{_STALE_PREFIX}*"):
        try:
            pid = int(path.name[len(_STALE_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


# --- running ------------------------------------------------------------------------------

_check_lock = threading.Lock()
_checked: set[str] = set()


def check_sandbox(python: str | None = None, unsafe_no_isolation: bool | None = None) -> None:
    """Run a trivial program once per interpreter; raise ``SandboxUnavailable`` with the step
    that failed (before any real program, e.g. when a reward is first built)."""
    python = python or sys.executable
    key = f"{python}|{_unsafe_requested(unsafe_no_isolation)}"
    with _check_lock:
        if key in _checked:
            return
        result = _run("print('ok')\n", python=python, timeout_s=30.0, memory_mb=512,
                      cpu_time_s=None, max_output_bytes=4096, max_file_mb=1, max_processes=4,
                      allow_network=False, files=None, unsafe=_unsafe_requested(
                          unsafe_no_isolation))
        if result.returncode != 0 or result.stdout.strip() != "ok":
            raise SandboxUnavailable(
                f"the code sandbox could not run {python} (exit {result.returncode}): "
                f"{result.stderr.strip()[-300:]}")
        _checked.add(key)


def run_python_sandboxed(
    code: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    cpu_time_s: float | None = None,
    max_output_bytes: int = 1 << 20,
    max_file_mb: int = 16,
    max_processes: int = 16,
    allow_network: bool = False,
    files: Mapping[str, str] | None = None,
    python: str | None = None,
    unsafe_no_isolation: bool | None = None,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a throw-away folder under every limit listed above.

    ``timeout_s`` is wall-clock; ``cpu_time_s`` (default: ``timeout_s``) is RLIMIT_CPU.
    ``max_processes``: tasks (processes and threads) the code may have at once.
    Output beyond ``max_output_bytes`` per stream kills the run (``output_truncated``).
    ``files`` are extra text files written next to ``main.py``. ``python``: the interpreter
    (default: this one). Raises ``SandboxUnavailable`` if the sandbox cannot be built.
    """
    return _run(
        code, python=python or sys.executable, timeout_s=timeout_s, memory_mb=memory_mb,
        cpu_time_s=cpu_time_s, max_output_bytes=max_output_bytes, max_file_mb=max_file_mb,
        max_processes=max_processes, allow_network=allow_network, files=files,
        unsafe=_unsafe_requested(unsafe_no_isolation),
    )


def _run(
    code: str, *, python: str, timeout_s: float, memory_mb: int, cpu_time_s: float | None,
    max_output_bytes: int, max_file_mb: int, max_processes: int, allow_network: bool,
    files: Mapping[str, str] | None, unsafe: bool,
) -> SandboxResult:
    run_id = f"posttrain-sandbox-{uuid.uuid4().hex}"
    all_files = {"main.py": code}
    for name, text in (files or {}).items():
        if os.path.isabs(name) or ".." in name.split("/") or name == "main.py":
            raise ValueError(f"sandbox file name {name!r} must be a plain relative path")
        all_files[name] = text
    host_workdir = None
    if unsafe:
        remove_stale_workdirs()
        host_workdir = tempfile.mkdtemp(prefix=f"{_STALE_PREFIX}{os.getpid()}-")
    workdir = host_workdir or _WORKDIR
    binds = _binds(python)
    _, table = _machine()
    status_r, status_w = os.pipe()
    env = {"PATH": _ENV_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": workdir,
           "TMPDIR": workdir, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    cfg = {
        "status_fd": status_w, "parent_pid": os.getpid(), "unsafe": unsafe,
        "allow_network": allow_network, "binds": binds, "system_dirs": list(_SYSTEM_DIRS),
        "staging": _staging(binds), "disk_mb": max(1, max_file_mb * 4), "workdir": workdir,
        "files": all_files, "uid": 1_500_000_000 + secrets.randbelow(100_000_000),
        "cpu_s": max(1, int(-(-(cpu_time_s or timeout_s) // 1))),
        "memory_bytes": int(memory_mb) << 20, "file_bytes": int(max_file_mb) << 20,
        "max_tasks": max(1, int(max_processes)), "python": python, "run_id": run_id,
        "env": env, "seccomp": seccomp_program().hex(), "nr_pivot_root": table["pivot_root"],
    }
    cfg["gid"] = cfg["uid"]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, run_id],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": _ENV_PATH}, cwd="/", start_new_session=True, pass_fds=(status_w,),
        )
    except BaseException:
        os.close(status_r)
        os.close(status_w)
        if host_workdir:
            shutil.rmtree(host_workdir, ignore_errors=True)
        raise
    os.close(status_w)
    try:
        result, status = _supervise(proc, status_r, json.dumps(cfg).encode(), start, timeout_s,
                                    max_output_bytes, run_id)
    finally:
        os.close(status_r)
        if host_workdir:
            shutil.rmtree(host_workdir, ignore_errors=True)
    if "setup_error" in status:
        raise SandboxUnavailable(
            f"the code sandbox could not be built here ({status['setup_error']}); it needs "
            "Linux namespaces (as root, or unprivileged user namespaces). Run in a VM or a "
            f"container that allows them, or set {UNSAFE_ENV}={UNSAFE_VALUE} to run generated "
            "code with resource limits only (see docs/security.md)."
        )
    return result


def _supervise(
    proc: subprocess.Popen, status_r: int, payload: bytes, start: float, timeout_s: float,
    cap: int, run_id: str,
) -> tuple[SandboxResult, dict]:
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
    result = SandboxResult(
        returncode=status.get("exit"), stdout=out, stderr=err, timed_out=timed_out,
        output_truncated=truncated, duration_s=time.monotonic() - start,
        isolation=status.get("isolation", {}), run_id=run_id, pid=proc.pid,
    )
    return result, status


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
    the launcher then exit on their own and reap their children. Anything else in the process
    group is killed last.
    """
    pid_ns = status.get("isolation", {}).get("pid", False)
    if proc.poll() is None and "exit" not in status:
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
        _kill(-proc.pid)  # stragglers of an unsafe run


def _kill(pid: int) -> None:
    """SIGKILL a pid (or a process group, for a negative pid); gone already is fine."""
    try:
        if pid < 0:
            os.killpg(-pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
