"""python -m experiments.vllm_e2e: the experiment's command line (experiments/vllm_e2e/cli.py)."""

from experiments.vllm_e2e.cli import main

raise SystemExit(main())
