"""Where the repository and the experiments' results lie."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The default home of a tool's output; a campaign's results are kept in a folder of their own under it.
RUNS = ROOT / "experiments" / "runs"
