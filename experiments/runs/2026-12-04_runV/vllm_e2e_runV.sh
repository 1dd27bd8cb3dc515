#!/bin/bash
# Paths updated for the issue-29 layout; the script as it ran is in git history (bbac3f7).
# Run V (written 2026-12-04 18:12 UTC, while run U ran and before any of V's traces ran; nothing of U's pooled
# result had been computed): issue 6's starvation-guard target with the token-trained ranker. The guard was
# last measured with the pooler-output ranker (runs E, F: W = 20 s, p99 1.14-1.17x FCFS's with 0.55-1.0 of
# the gain), on one trace. V measures its trade-off over traces, with sg_inbatch_bf16_mean_middle_tok
# (run U's checkpoint), run U's settings otherwise: --side-cpus 1, onnx-int8, load 2, 2 repeats per trace,
# fcfs, oracle and pars@20, pars@60, pars@1000 (one gateway per W) interleaved in every repeat; new traces
# --seed 76.. in this order; each keeps its logs in /tmp/vllm_e2e_runV_seed<N>_logs/.
# The measure, fixed in advance (python -m experiments.e2e_guard), per W and per trace:
#   p99 ratio = mean over its repeats of p99(pars@W) / p99(fcfs);
#   gain kept = sum_r (fcfs_r - pars@W_r) / sum_r (fcfs_r - pars@1000_r);
# each's mean over traces with a t 95 % interval over traces.
# Issue 6's guard target is met if some W < 1000 has mean p99 ratio <= 1.2 and mean gain kept >= 0.5.
# Secondary, not the result: pars@1000's recovery of the oracle's gain on V's traces (e2e_pool.py, by trace,
# ratio of sums).
# Stop rule fixed in advance: a trace starts only before 19:00 UTC (2026-12-04).
cd /work/main
NEW=runs/sg_inbatch_bf16_mean_middle_tok/best_model.pt
for seed in 76 77 78 79 80 81 82 83 84 85; do
  if [ "$(date -u +%H%M)" -ge 1900 ]; then echo "stop before seed $seed $(date -u +%H:%M:%S)" >> /tmp/runV.progress; break; fi
  .venv/bin/python -m experiments.vllm_e2e --start --model-dir /tmp/pars-llama22m --data /tmp/sg/val_data.json \
    --ranker-path $NEW --ranker-pooling mean --ranker-truncation middle \
    --predictor-backend onnx-int8 --predictor-threads 1 \
    --onnx-cache-dir /tmp/onnx_cache --predictor-timeout-ms 1000 --no-fcfs-gateway --fairness-windows 20,60,1000 \
    --load-factors 2 --num-requests 80 --repeats 2 --client-nice 10 --probe 20 --seed $seed --side-cpus 1 \
    --policies "fcfs,oracle,pars@20,pars@60,pars@1000" \
    --out experiments/runs/2026-12-04_runV/vllm_e2e_runV_seed$seed.json > /tmp/runV_seed$seed.log 2>&1
  echo "seed $seed rc $? $(date -u +%H:%M:%S)" >> /tmp/runV.progress
done
