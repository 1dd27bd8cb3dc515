#!/bin/bash
# Paths updated for the issue-29 layout; the script as it ran is in git history (a1085da).
# Run S (written 2026-11-25 16:29 UTC, before any of its traces ran): the ranker trained on answer lengths in the
# served model's tokens against the same recipe on characters, live, interleaved in every repeat.
# Stage 1's new --length-tokenizer counts answer_length in the tokens of /tmp/pars-llama22m, the model vLLM
# serves here; the experiments' max_tokens are those same tokens (capped at 1,024). Offline, on the 51 traces of
# runs M, P, Q and R, the token-trained ranker orders them better (trace_tau_MPQR_tok.json, screened before
# this script was written). Questions: 1. does the token-trained ranker recover more than the character-trained
# one, paired by trace? 2. what does it recover at load 2, by trace (issue 6's 60 % target)?
# Run Q's settings (--side-cpus 1, onnx-int8, W = 1000 s, vLLM floating), load 2 only, 2 repeats per trace,
# new traces --seed 51.. in this order. Each trace keeps its logs in /tmp/vllm_e2e_runS_seed<N>_logs/.
# Stop rule fixed in advance: a trace starts only before 17:45 UTC.
cd /work/main
OLD=runs/sg_inbatch_bf16_mean_middle/best_model.pt
NEW=runs/sg_inbatch_bf16_mean_middle_tok/best_model.pt
for seed in 51 52 53 54 55 56 57 58 59 60 61 62; do
  if [ "$(date -u +%H%M)" -ge 1745 ]; then echo "stop before seed $seed $(date -u +%H:%M:%S)" >> /tmp/runS.progress; break; fi
  .venv/bin/python -m experiments.vllm_e2e --start --model-dir /tmp/pars-llama22m --data /tmp/sg/val_data.json \
    --ranker-path $OLD $NEW --ranker-pooling mean mean --ranker-truncation middle middle \
    --predictor-backend onnx-int8 --predictor-threads 1 \
    --onnx-cache-dir /tmp/onnx_cache --predictor-timeout-ms 1000 --no-fcfs-gateway --fairness-windows 1000 \
    --load-factors 2 --num-requests 80 --repeats 2 --client-nice 10 --probe 20 --seed $seed --side-cpus 1 \
    --policies "fcfs,oracle,pars[sg_inbatch_bf16_mean_middle]@1000,pars[sg_inbatch_bf16_mean_middle_tok]@1000" \
    --out experiments/runs/2026-11-25_runS/vllm_e2e_runS_seed$seed.json > /tmp/runS_seed$seed.log 2>&1
  echo "seed $seed rc $? $(date -u +%H:%M:%S)" >> /tmp/runS.progress
done
