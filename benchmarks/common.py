"""Helpers shared by the benchmarks: peak memory and a table printer."""

from __future__ import annotations

import resource
import sys

import torch


def peak_memory_mb() -> float:
    """Peak GPU memory allocated by torch when on CUDA, else the process's peak RSS (Linux
    reports ru_maxrss in KiB). Run one configuration per process so peaks do not mix."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(rows: list[dict], file=sys.stdout) -> None:
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print(" | ".join(k.ljust(widths[k]) for k in keys), file=file)
    print("-|-".join("-" * widths[k] for k in keys), file=file)
    for r in rows:
        print(" | ".join(str(r[k]).ljust(widths[k]) for k in keys), file=file)
