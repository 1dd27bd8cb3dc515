"""Issue 31, "Show it": the loop live. The quickstart's ranker (ShareGPT first turns, lengths in characters) is
deployed and sent traffic it has not seen and that differs from what it learned: ShareGPT's later human turns
(turn 2 and on of a conversation; none whose text is in --seen-data), as chat requests answered by the served
model with the true answers' lengths in its own tokens (max_tokens = that length, ignore_eos).

Servers (--start, or given by URL): one `vllm serve --scheduling-policy priority`; predictor A with the deployed
ranker and PREDICTOR_ADMIN_RELOAD=true, behind the `pars` (pars-new) gateway, which records every request
(GATEWAY_RECORD_DIR); predictor B with the same ranker, never reloaded, behind the `pars-old` gateway (the
before arm; it records too, so both arms do the same work); an `fcfs` gateway (GATEWAY_SCORER=none) and an
`oracle` gateway (GATEWAY_SCORER=max_tokens).

Phases:
  1 record   --record-requests later turns (each prompt once) through the pars gateway in a closed loop of
             --concurrency requests; the live ranking quality before: Kendall's tau and the length-weighted tau
             of the recorded (score, completion_tokens), with a bootstrap 95 % interval over requests, beside the
             gateway's own gauges (pars_gateway_live_*)
  2 loop     python -m pars.retrain.cycle --records <them> --deployed <ranker> --predictor-url <A>: stage 1
             from the records (split by time), the ranker fine-tuned, judged on the most recent share, A
             reloaded only if the candidate is better; its stdout and decision.json kept, A's ranker_id (GET /)
             checked before and after. Each recorded request ended at exactly the length it asked for, its true
             length, so the gateway marks it censored (finish_reason "length"); --loop-records true-length
             (default) gives the cycle those records marked uncensored, as real traffic that ended by itself
             would be recorded. No reload (candidate not better): the experiment goes on, after = before.
  3 after    --after-requests new later turns through the pars gateway; the live taus of their records
             scored by A's ranker now, and after - before with a bootstrap interval
  4 latency  per --seeds seed a trace of --num-prompts later turns that no other phase sent, replayed with
             vLLM's own benchmark client as experiments.vllm_bench does (quantile windows of one trace,
             filled with its prompts in every scored arm alike; capacity measured, rate = --load-factor x
             capacity, Poisson arrivals from the seed, the same for every policy, the order rotated per seed)
             through fcfs, pars-old (B: before), pars-new (A: after) and oracle; per seed and pooled (t 95 %
             over traces): mean latency of each, pars-old/fcfs, pars-new/fcfs, oracle/fcfs, pars-new/pars-old,
             recovery (fcfs - pars)/(fcfs - oracle) for old and new; and both rankers' tau on the trace from
             their gateways' records (paired by prompt)

Written: --out (JSON; default experiments/runs/<UTC date>_loop_bench/loop_bench.json), the .md and .png beside
it, <stem>_retrain_stdout.txt and <stem>_decision.json (the cycle's), <stem>_client/ (the client's datasets and
results); the records and the cycle's output (its data, the candidate checkpoint) stay in --work-dir (default
/tmp/<run folder>_work), out of git; logs in --log-dir.

    .venv/bin/python -m experiments.loop_bench --start --model-dir /tmp/pars-llama22m \\
        --ranker-path /tmp/qs/model/best_model.pt --seen-data /tmp/sg/train_data.json /tmp/sg/val_data.json
"""

# The package, one job a module: cli (flags, the phases in order), data (the later turns and the disjoint
# sets), servers (--start; the checks), traffic (the closed loop of chat requests), records (the gateway's
# records: selection, taus with intervals, the loop's copy), loop (pars.retrain.cycle), latency (the client
# runs, pooling), report (tables, PNG).
