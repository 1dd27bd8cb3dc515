"""benchmarks/serve_bench.py's server specs: runner, backend, threads and a server's own environment."""

from __future__ import annotations

import pytest

from benchmarks import serve_bench


def test_server_spec_with_its_own_environment():
    sb = serve_bench
    assert sb.parse_server("per_request") == ("per_request", "torch", None, {})
    assert sb.parse_server("batching:onnx-int8:1@PREDICTOR_FORWARD_OVERHEAD_TOKENS=128+PREDICTOR_MAX_WAIT_MS=5") == (
        "batching", "onnx-int8", 1, {"PREDICTOR_FORWARD_OVERHEAD_TOKENS": "128", "PREDICTOR_MAX_WAIT_MS": "5"})
    for bad in ("batching:torch@NOVALUE", "sometimes:torch", "batching:torch:two"):
        with pytest.raises(SystemExit):
            sb.parse_server(bad)


def test_an_unknown_endpoint_is_refused_before_any_server_starts(capsys):
    sb = serve_bench
    with pytest.raises(SystemExit):
        sb.main(["--model-path", "m.pt", "--model-name", "tiny", "--endpoints", "score"])
    assert "unknown score" in capsys.readouterr().err
