"""The soak campaign, short (issue 7): benchmarks/soak.py for 40 s on the tiny model, mixed endpoints,
deliberate 4xx and client disconnects at 32 clients; no errors, RSS growth within 10 %, server alive.

The full campaign (30 minutes) is the same script without --seconds; see the README's Hardening section.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_short_soak_has_no_errors_and_flat_memory(tiny_model_dir, checkpoint, tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--model-path", str(checkpoint), "--model-name",
         str(tiny_model_dir), "--seconds", "40", "--warmup-seconds", "8", "--concurrency", "32", "--interval", "2",
         "--env", "PREDICTOR_NUM_THREADS=1", "--output", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["passed"] and result["errors"] == 0 and result["server_unhandled_exceptions"] == 0
    assert result["valid_requests"] > 0 and result["deliberate_4xx"] > 0 and result["disconnects"] > 0
    for kind in ("score", "score_batch", "compare", "compare_batch"):
        assert result["by_kind"][kind]["statuses"].get("200", 0) == result["by_kind"][kind]["requests"] > 0
    assert set(result["by_kind"]["bad"]["statuses"]) <= {"404", "413", "422"}
    assert result["rss_mib"]["growth"] <= 0.10
    assert result["samples"] and out.with_suffix(".png").stat().st_size > 0
    assert "PASS" in proc.stdout


def test_soak_help_explains():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--minutes", "--seconds", "--concurrency", "--val-data", "--max-rss-growth", "--output"):
        assert flag in proc.stdout
