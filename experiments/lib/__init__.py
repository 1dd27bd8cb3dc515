"""What the experiment tools share: traces, statistics, the scheduler model, server processes, reading
vllm_e2e's JSON, formatting tables and figures, command-line values. One job a module."""
