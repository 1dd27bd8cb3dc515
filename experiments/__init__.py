"""The research tooling of issue 6, apart from the product (pars/) and its everyday benchmarks (benchmarks/):
the end-to-end experiment against vLLM and the tools that read its reports. Each runs as
`python -m experiments.<tool>`:

  vllm_e2e         the experiment: PARS in front of vLLM's priority scheduler against FCFS, the oracle and
                   prompt length, on a replayed ShareGPT trace (and --build-model, the model vLLM serves)
  e2e_pool         the oracle's gain recovered, pooled over experiments by load factor and by trace
  e2e_guard        the starvation guard's trade-off (p99 against gain kept), pooled by trace
  sched_sim        a deterministic model of vLLM's scheduler: what a ranker's scores can buy, without noise
  e2e_replay       an experiment's runs replayed through that model with the priorities they sent
  e2e_speed        the replay at three server speeds: how much of the shortfall is each run's speed
  trace_tau        rankers compared offline on the experiments' own traces (tau of the order they would send)
  admission_order  whether vLLM admitted requests in the order of the priorities sent (streamed runs)

experiments/lib holds what they share; experiments/vllm_setup.sh installs vLLM and builds the model;
experiments/runs holds the results, a folder per campaign.
"""
