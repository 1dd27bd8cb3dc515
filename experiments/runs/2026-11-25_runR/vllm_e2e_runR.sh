#!/bin/bash
# Paths updated for the issue-29 layout; the script as it ran is in git history (031f1bb).
# Run R (written 2026-11-25 12:45 UTC, before any of its traces ran): all of vLLM on core 0, all of PARS on core 1.
# Runs M-Q pinned only vLLM's Worker (core 0) and PARS's predictor, gateway and client (core 1, --side-cpus 1);
# vLLM's API server and EngineCore processes floated over both cores, so the scoring on core 1 slowed them, in
# the scored runs only: those ran ~1 % slower than the direct runs beside them (e2e_speed_{M23,P,Q}.json), and
# at equal speed the scheduler model puts the same orders ~0.05 higher than they recovered live.
# --vllm-cpus 0 now runs every vLLM process under taskset -c 0, so PARS takes no CPU from vLLM at all, as on a
# GPU box. A pilot on trace 0 (1 repeat, not pooled) checked that vLLM runs so: 410 tokens/s of capacity.
# Questions: 1. are the scored runs still slower than the direct ones (e2e_speed)? 2. what does the MiniLM
# mean+middle ranker (int8) recover at load 2, by trace, in this arrangement?
# Otherwise run Q's settings at load 2 only, 2 repeats per trace, new traces --seed 39.. in this order.
# The predictor and gateways run the new stall watchdog (default 5 s); each trace keeps its logs in
# /tmp/vllm_e2e_runR_seed<N>_logs/. Stop rule fixed in advance: a trace starts only before 14:30 UTC.
cd /work/main
CKPT=runs/sg_inbatch_bf16_mean_middle/best_model.pt
for seed in 39 40 41 42 43 44 45 46 47 48 49 50 51 52; do
  if [ "$(date -u +%H%M)" -ge 1430 ]; then echo "stop before seed $seed $(date -u +%H:%M:%S)" >> /tmp/runR.progress; break; fi
  .venv/bin/python -m experiments.vllm_e2e --start --model-dir /tmp/pars-llama22m --data /tmp/sg/val_data.json \
    --ranker-path $CKPT --ranker-pooling mean --ranker-truncation middle \
    --predictor-backend onnx-int8 --predictor-threads 1 \
    --onnx-cache-dir /tmp/onnx_cache --predictor-timeout-ms 1000 --no-fcfs-gateway --fairness-windows 1000 \
    --load-factors 2 --num-requests 80 --repeats 2 --client-nice 10 --probe 20 --seed $seed \
    --side-cpus 1 --vllm-cpus 0 --engine-cpus 0 --policies "fcfs,oracle,pars@1000" \
    --out experiments/runs/2026-11-25_runR/vllm_e2e_runR_seed$seed.json > /tmp/runR_seed$seed.log 2>&1
  echo "seed $seed rc $? $(date -u +%H:%M:%S)" >> /tmp/runR.progress
done
