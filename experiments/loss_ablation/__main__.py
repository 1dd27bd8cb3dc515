"""python -m experiments.loss_ablation: the ablation's command line (experiments/loss_ablation/cli.py); a PARSError
(unreadable data, a trainer setting refused) is one line and exit status 2."""

from experiments.loss_ablation.cli import main
from pars.common.errors import run_cli

run_cli(main)
