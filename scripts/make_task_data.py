"""Regenerate recipes/data/<task>/{train,test}.jsonl from posttrain.tasks (default options).

    python scripts/make_task_data.py            # write the files
    python scripts/make_task_data.py --check    # exit 1 if any file differs from the generators

The files are committed so recipes run without this step; tests/test_tasks.py fails when they
drift from the generators, and this script is the fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from posttrain.tasks import DATA_SEED, data_files

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000  # keep the committed files small


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "recipes" / "data")
    parser.add_argument("--seed", type=int, default=DATA_SEED, help="seed of the train splits")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)

    stale = []
    for relative, text in data_files(args.seed).items():
        path = args.out / relative
        size = len(text.encode("utf-8"))
        if size > MAX_BYTES:
            print(f"error: {path} would be {size} bytes (limit {MAX_BYTES})", file=sys.stderr)
            return 1
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            status = "unchanged"
        elif args.check:
            stale.append(path)
            status = "STALE"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
            status = "written"
        rows = text.count("\n")
        print(f"{status:>9}  {path}  ({rows} rows, {size / 1024:.0f} KiB)")
    if stale:
        print(
            f"{len(stale)} file(s) differ; run: python scripts/make_task_data.py", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
