"""experiments/admission_order.py: admissions dated from TTFT, inversions of vLLM's (priority, arrival) order
counted on hand-made runs."""

from __future__ import annotations

import json

import pytest

from experiments import admission_order as adm


def req(i: int, sent: float, ttft: float, priority: int, score_ms: float | None = None) -> dict:
    return {"i": i, "sent_s": sent, "ttft_s": ttft, "priority": priority, "score_ms": score_ms, "error": None}


def test_admission_dated_from_ttft_less_prefill_and_scoring():
    run = {"requests": [req(0, 1.0, 2.0, 5, score_ms=20.0), req(1, 1.0, 0.01, 5)]}
    a = adm.admissions(run, prompt_tokens=[1000, 1000], prefill_ms_per_token=0.5)
    assert a[0]["reached"] == pytest.approx(1.02) and a[0]["admitted"] == pytest.approx(2.5)
    assert a[1]["admitted"] == pytest.approx(1.0)  # never before it reached vLLM


def test_inversions_by_hand():
    # 0 and 1 wait from t=0; 2 (worst priority) is admitted at 1.0 while 1 (better) waits until 2.0: one
    # inversion. 0 is admitted first, in order. 3 reaches vLLM after 2's admission: passed over by no one.
    reqs = [{"priority": 1, "reached": 0.0, "admitted": 0.5}, {"priority": 2, "reached": 0.0, "admitted": 2.0},
            {"priority": 9, "reached": 0.0, "admitted": 1.0}, {"priority": 0, "reached": 1.5, "admitted": 1.6}]
    got = adm.inversions(reqs, tolerance_s=0.1)
    assert got["inverted_admissions"] == 1 and got["share"] == pytest.approx(0.25)
    assert got["mean_passed_over"] == pytest.approx(0.25)
    # within the tolerance the two events are not ordered
    assert adm.inversions(reqs, tolerance_s=1.5)["inverted_admissions"] == 0
    # equal priorities: ties go by arrival, so a later arrival admitted first is an inversion
    ties = [{"priority": 0, "reached": 0.0, "admitted": 3.0}, {"priority": 0, "reached": 0.5, "admitted": 1.0}]
    assert adm.inversions(ties, 0.1)["inverted_admissions"] == 1


def test_report_table_json_and_png(tmp_path, capsys):
    runs = [{"rate": 2.0, "policy": "oracle", "repeat": 0,
             "requests": [req(0, 0.0, 0.5, 1), req(1, 0.0, 2.0, 2), req(2, 0.0, 1.0, 9)]},
            {"rate": 2.0, "policy": "fcfs", "repeat": 0,
             "requests": [req(0, 0.0, 0.5, 0), req(1, 0.1, 1.0, 0), req(2, 0.2, 2.0, 0)]}]
    path = tmp_path / "e2e.json"
    path.write_text(json.dumps({"trace": {"prompt_tokens": [0, 0, 0]}, "runs": runs}))
    out = tmp_path / "adm.json"
    assert adm.main([str(path), "--out", str(out)]) == 0
    cells = {c["policy"]: c for c in json.loads(out.read_text())["cells"]}
    assert cells["oracle"]["share_inverted"] == pytest.approx(1 / 3) and cells["fcfs"]["share_inverted"] == 0
    assert "| 2 | oracle | 1 | 0.333 |" in capsys.readouterr().out
    assert out.with_suffix(".png").stat().st_size > 0


def test_unstreamed_report_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "e2e.json"
    path.write_text(json.dumps({"trace": {"prompt_tokens": [0]}, "runs": [
        {"rate": 1.0, "policy": "fcfs", "repeat": 0, "requests": [req(0, 0.0, None, 0)]}]}))
    with pytest.raises(SystemExit) as exc:
        adm.main([str(path)])
    assert exc.value.code == 2 and "--stream" in capsys.readouterr().err
