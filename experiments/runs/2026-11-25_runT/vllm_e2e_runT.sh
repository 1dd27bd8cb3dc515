#!/bin/bash
# Paths updated for the issue-29 layout; the script as it ran is in git history (0242f45).
# Run T (written 2026-11-25 18:20 UTC, before any of its traces ran): issue 6's 60 % target for the ranker trained
# on answer lengths in the served model's tokens (sg_inbatch_bf16_mean_middle_tok), on new traces.
# Run Q/S settings (--side-cpus 1, onnx-int8, W = 1000 s, vLLM floating), load 2 only, 2 repeats per trace,
# fcfs, oracle and the token-trained ranker (one ranker, so its policy is pars@1000) interleaved in every repeat (the character ranker is left out so that
# more traces fit: run S already compared the two, and the token ranker's order was better on 7 of 7).
# New traces --seed 58.. in this order; each keeps its logs in /tmp/vllm_e2e_runT_seed<N>_logs/.
#
# The measure, fixed in advance (after run S showed that a mean of per-repeat ratios breaks when one repeat's
# oracle gain vanishes): per trace, the ratio of summed gains over its repeats,
#   sum_r (fcfs_r - pars_r) / sum_r (fcfs_r - oracle_r),
# then the mean over traces with a t 95 % interval over traces (python -m experiments.e2e_pool, "by trace, ratio of sums").
#   Primary: run T's traces alone.  Secondary: run T's traces pooled with run S's seven (seeds 51-57).
#   (Pooled with --same "pars[sg_inbatch_bf16_mean_middle_tok]@1000=pars@1000".)
# The target is met if the primary mean is >= 0.60 and its interval excludes 0. Nothing else is claimed as the result.
# Stop rule fixed in advance: a trace starts only before 20:20 UTC.
cd /work/main
NEW=runs/sg_inbatch_bf16_mean_middle_tok/best_model.pt
for seed in 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75; do
  if [ "$(date -u +%H%M)" -ge 2020 ]; then echo "stop before seed $seed $(date -u +%H:%M:%S)" >> /tmp/runT.progress; break; fi
  .venv/bin/python -m experiments.vllm_e2e --start --model-dir /tmp/pars-llama22m --data /tmp/sg/val_data.json \
    --ranker-path $NEW --ranker-pooling mean --ranker-truncation middle \
    --predictor-backend onnx-int8 --predictor-threads 1 \
    --onnx-cache-dir /tmp/onnx_cache --predictor-timeout-ms 1000 --no-fcfs-gateway --fairness-windows 1000 \
    --load-factors 2 --num-requests 80 --repeats 2 --client-nice 10 --probe 20 --seed $seed --side-cpus 1 \
    --policies "fcfs,oracle,pars@1000" \
    --out experiments/runs/2026-11-25_runT/vllm_e2e_runT_seed$seed.json > /tmp/runT_seed$seed.log 2>&1
  echo "seed $seed rc $? $(date -u +%H:%M:%S)" >> /tmp/runT.progress
done
