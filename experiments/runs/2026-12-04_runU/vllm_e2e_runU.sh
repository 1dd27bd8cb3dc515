#!/bin/bash
# Paths updated for the issue-29 layout; the script as it ran is in git history (31b3080).
# Run U (written 2026-12-04 16:59 UTC, before any of its traces ran): run T continued on a new machine.
# Run T (script 0242f45) ran 2 of its traces (seeds 58, 59) before its machine was shut down; its stop rule
# (20:20 UTC that day) has passed, so T ends at those 2. U is T's protocol unchanged, on the seeds T's list
# never reached (60..), in this order:
#   the token-trained ranker sg_inbatch_bf16_mean_middle_tok, retrained on 2026-12-04 with the committed recipe
#   (experiments/rankers/README.md); it runs only if its last-epoch val tau (metrics.json) is >= 0.446 (0.456 committed);
#   run Q/S/T settings (--side-cpus 1, onnx-int8, W = 1000 s, vLLM floating), load 2 only, 2 repeats per trace,
#   fcfs, oracle and pars@1000 interleaved in every repeat; each trace keeps its logs in
#   /tmp/vllm_e2e_runU_seed<N>_logs/.
# The measure, fixed in advance (T's): per trace, the ratio of summed gains over its repeats,
#   sum_r (fcfs_r - pars_r) / sum_r (fcfs_r - oracle_r),
# then the mean over traces with a t 95 % interval over traces (python -m experiments.e2e_pool, "by trace, ratio of sums").
#   Primary: run U's traces alone.
#   Secondary: U pooled with T's 2 traces (same protocol); and with S's 7 (--same
#   "pars@1000=pars[sg_inbatch_bf16_mean_middle_tok]@1000").
# Issue 6's target is met if the primary mean is >= 0.60 and its interval excludes 0. Nothing else is claimed
# as the result.
# Stop rule fixed in advance: a trace starts only before 19:10 UTC (2026-12-04).
cd /work/main
NEW=runs/sg_inbatch_bf16_mean_middle_tok/best_model.pt
for seed in 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75; do
  if [ "$(date -u +%H%M)" -ge 1910 ]; then echo "stop before seed $seed $(date -u +%H:%M:%S)" >> /tmp/runU.progress; break; fi
  .venv/bin/python -m experiments.vllm_e2e --start --model-dir /tmp/pars-llama22m --data /tmp/sg/val_data.json \
    --ranker-path $NEW --ranker-pooling mean --ranker-truncation middle \
    --predictor-backend onnx-int8 --predictor-threads 1 \
    --onnx-cache-dir /tmp/onnx_cache --predictor-timeout-ms 1000 --no-fcfs-gateway --fairness-windows 1000 \
    --load-factors 2 --num-requests 80 --repeats 2 --client-nice 10 --probe 20 --seed $seed --side-cpus 1 \
    --policies "fcfs,oracle,pars@1000" \
    --out experiments/runs/2026-12-04_runU/vllm_e2e_runU_seed$seed.json > /tmp/runU_seed$seed.log 2>&1
  echo "seed $seed rc $? $(date -u +%H:%M:%S)" >> /tmp/runU.progress
done
