#!/bin/bash
# Paths updated for the issue-29 layout; the script as it ran is in git history (8bfd05a).
# Run P (written 2026-11-25 07:17 UTC, before any of its traces ran): does running the scoring at a lower CPU
# priority take away the scored runs' slowdown (+0.9 % in run M, e2e_speed_M23.json)? One ranker, the MiniLM
# mean+middle one (sg_inbatch_bf16_mean_middle, int8), served twice in every repeat: its predictor service at
# nice 0 (as in runs M-O) and at nice 19 (--ranker-nice 0 19), beside fcfs and oracle, run M's settings.
# New traces --seed 23.. in this order; stop rule fixed in advance: a trace starts only before 09:02 UTC.
cd /work/main
CKPT=runs/sg_inbatch_bf16_mean_middle/best_model.pt
for seed in 23 24 25 26 27 28 29 30; do
  if [ "$(date -u +%H%M)" -ge 0902 ]; then echo "stop before seed $seed $(date -u +%H:%M:%S)" >> /tmp/runP.progress; break; fi
  .venv/bin/python -m experiments.vllm_e2e --start --model-dir /tmp/pars-llama22m --data /tmp/sg/val_data.json \
    --ranker-path $CKPT $CKPT --ranker-nice 0 19 --ranker-pooling mean --ranker-truncation middle \
    --predictor-backend onnx-int8 --predictor-threads 1 \
    --onnx-cache-dir /tmp/onnx_cache --predictor-timeout-ms 1000 --no-fcfs-gateway --fairness-windows 1000 \
    --load-factors 2 --num-requests 80 --repeats 3 --client-nice 10 --probe 20 --seed $seed --side-cpus 1 \
    --policies "fcfs,oracle,pars[sg_inbatch_bf16_mean_middle]@1000,pars[sg_inbatch_bf16_mean_middle+nice19]@1000" \
    --out experiments/runs/2026-11-25_runP/vllm_e2e_runP_seed$seed.json > /tmp/runP_seed$seed.log 2>&1
  echo "seed $seed rc $? $(date -u +%H:%M:%S)" >> /tmp/runP.progress
done
