"""python -m experiments.loop_bench: the experiment's command line (experiments/loop_bench/cli.py)."""

from experiments.loop_bench.cli import main

raise SystemExit(main())
