"""Helpers shared by the benchmarks: peak memory and a table printer."""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def peak_memory_mb() -> float:
    """Peak memory of this process in MiB: torch's peak allocation on CUDA; on CPUs the
    resident-set high-water mark (``rss_mb``). Run one configuration per process so peaks do
    not mix."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return rss_mb("VmHWM")


def rss_mb(field: str = "VmHWM") -> float:
    """``VmHWM`` (the resident-set high-water mark: the true peak of this process) or ``VmRSS``
    (the current resident set) in MiB from /proc/self/status on Linux; elsewhere ``ru_maxrss``
    (KiB on Linux; it survives exec, so a child started from a large parent reports the
    parent's peak)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets VmHWM to the current resident set."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_workers(script: str, specs: list[tuple[str, dict]], env: dict) -> tuple[list[dict], int]:
    """Run ``script --worker SPEC`` once per (label, spec), each in its own process (so its peak
    memory is its own); collect the last ``RESULT {json}`` line of each. Returns the results
    and how many workers failed (their stderr tail is printed)."""
    results, failed = [], 0
    for label, spec in specs:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)],
                              capture_output=True, text=True, env=env)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{label}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            failed += 1
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print(f"done: {label} ({time.perf_counter() - start:.0f} s with loading)",
              file=sys.stderr, flush=True)
    return results, failed


def print_table(rows: list[dict], file=sys.stdout) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every row's columns, in order
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print(" | ".join(k.ljust(widths[k]) for k in keys), file=file)
    print("-|-".join("-" * widths[k] for k in keys), file=file)
    for r in rows:
        print(" | ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys), file=file)
