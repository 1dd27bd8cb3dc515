"""experiments/vllm_bench.py and experiments/lib/bench_client.py without vLLM: the custom-dataset JSONL, the
benchmark client's command line, the exact-length check, the policy order, and the pooling on made-up client
result dicts against a direct computation."""

from __future__ import annotations

import json
import math
import shlex

import numpy as np
import pytest
from scipy import stats

from experiments import vllm_bench
from experiments.lib.bench_client import (
    RUNNER,
    check_lengths,
    client_argv,
    read_dataset,
    summarize,
    write_dataset,
)
from experiments.lib.traces import Request
from experiments.vllm_e2e import cli, servers

TRACE = [Request("a", "short prompt", 2, 5, 5), Request("b", "a prompt with\nlines and \"quotes\"", 7, 1500, 1024),
         Request("c", "ünïcode", 3, 1, 1)]


def test_dataset_rows_are_the_trace_in_order(tmp_path):
    path = write_dataset(TRACE, tmp_path / "sub" / "trace.jsonl")
    rows = read_dataset(path)
    assert [r["prompt"] for r in rows] == [r.prompt for r in TRACE]
    assert [r["output_tokens"] for r in rows] == [5, 1024, 1]  # max_tokens: the capped length
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3  # one JSON object a line


def flag(argv, name):
    return argv[argv.index(name) + 1]


def test_client_argv_for_a_gateway_run():
    argv = client_argv("/venv/bin/python", "http://127.0.0.1:9000", "/m", "/d/seed0.jsonl", 100, 1.61234567, 7,
                       "/r", "seed7_pars.json")
    assert argv[:3] == ["/venv/bin/python", "-c", RUNNER]
    compile(RUNNER, "<runner>", "exec")
    assert "vllm.benchmarks.serve" in RUNNER and "FlexibleArgumentParser" in RUNNER
    for name, value in [("--backend", "openai"), ("--endpoint", "/v1/completions"), ("--dataset-name", "custom"),
                        ("--dataset-path", "/d/seed0.jsonl"), ("--custom-output-len", "-1"), ("--num-prompts", "100"),
                        ("--temperature", "0"), ("--request-rate", "1.61235"), ("--burstiness", "1"), ("--seed", "7"),
                        ("--percentile-metrics", "ttft,tpot,itl,e2el"), ("--metric-percentiles", "50,90,99"),
                        ("--result-dir", "/r"), ("--result-filename", "seed7_pars.json"),
                        ("--base-url", "http://127.0.0.1:9000"), ("--model", "/m")]:
        assert flag(argv, name) == value, name
    for name in ("--skip-chat-template", "--disable-shuffle", "--no-oversample", "--ignore-eos", "--save-result",
                 "--save-detailed"):
        assert name in argv
    # No priority anywhere: the gateway would keep a client's priority and not score the prompt.
    assert "--extra-body" not in argv and "priority" not in " ".join(argv[3:])
    assert "--output-len" not in argv  # it would override every dataset's output lengths


def test_client_argv_capacity_burst():
    argv = client_argv("py", "http://v", "/m", "d.jsonl", 16, float("inf"), 0, "/r", "cap.json", output_len=128)
    assert flag(argv, "--request-rate") == "inf" and flag(argv, "--custom-output-len") == "128"
    argv = client_argv("py", "http://v", "/m", "d.jsonl", 3, 1.0, 0, "/r", "x.json", extra_body={"priority": 0})
    assert json.loads(flag(argv, "--extra-body")) == {"priority": 0}
    assert shlex.split(shlex.join(argv)) == argv  # quotable as one shell line


def result(lat_s, tpot_ms, lens=None, errors=None):
    """A client result dict with the keys the tool reads (as vllm.benchmarks.serve saves them)."""
    lat = np.asarray(lat_s) * 1000
    tp = np.asarray(tpot_ms)
    out = {"duration": 10.0, "completed": len(lat), "failed": 0, "request_throughput": 1.0, "output_throughput": 99.0,
           "output_lens": lens if lens is not None else [5] * len(lat), "errors": errors or [""] * len(lat),
           "mean_e2el_ms": lat.mean(), "mean_tpot_ms": tp.mean(), "mean_ttft_ms": 100.0}
    for p in (50, 90, 99):
        out[f"p{p}_e2el_ms"] = np.percentile(lat, p)
        out[f"p{p}_tpot_ms"] = np.percentile(tp, p)
        out[f"p{p}_ttft_ms"] = 100.0
    return out


def test_exact_length_check():
    check_lengths(result([1, 2, 3], [10, 10, 10], lens=[5, 1024, 1]), [5, 1024, 1], "ok")
    with pytest.raises(ValueError, match="1 of 3 requests not answered with exactly.*#1: 1023 tokens for 1024"):
        check_lengths(result([1, 2, 3], [10] * 3, lens=[5, 1023, 1]), [5, 1024, 1], "seed 0 pars")
    bad = result([1, 2, 3], [10] * 3, lens=[5, 0, 1], errors=["", "boom", ""])
    bad["completed"], bad["failed"] = 2, 1
    with pytest.raises(ValueError, match="2 of 3 requests completed, 1 failed.*boom"):
        check_lengths(bad, [5, 1024, 1], "seed 0 fcfs")
    with pytest.raises(ValueError, match="no output_lens"):
        check_lengths({k: v for k, v in result([1], [1]).items() if k != "output_lens"}, [5], "x")


def test_policy_order_rotates_between_seeds():
    orders = [vllm_bench.policy_order(k) for k in range(4)]
    assert orders[0] == ["fcfs", "pars", "oracle"]
    assert orders[1] == ["pars", "oracle", "fcfs"] and orders[2] == ["oracle", "fcfs", "pars"]
    assert orders[3] == orders[0]
    assert {o[0] for o in orders[:3]} == set(vllm_bench.POLICIES)  # each policy first once in three seeds
    assert all(sorted(o) == sorted(vllm_bench.POLICIES) for o in orders)


def made_up_seeds():
    rng = np.random.default_rng(3)
    per_seed = []
    for seed in range(3):
        runs = {}
        for pol, scale in (("fcfs", 10.0), ("pars", 7.0 + seed), ("oracle", 5.0 + 0.5 * seed)):
            lat = rng.exponential(scale, 50)
            runs[pol] = {"summary": summarize(result(lat, rng.normal(20, 2, 50)))}
        per_seed.append({"seed": seed, "order": vllm_bench.policy_order(seed), "rate": 1.5,
                         "trace": {"n": 50}, "runs": runs, **vllm_bench.seed_ratios(runs)})
    return per_seed


def t95(values):
    v = np.asarray(values)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return v.mean(), v.mean() - half, v.mean() + half


def test_pooling_and_recovery_against_a_direct_computation():
    per_seed = made_up_seeds()
    pooled = vllm_bench.pool(per_seed)
    f, p, o = ([s["runs"][n]["summary"]["e2el_mean_s"] for s in per_seed] for n in ("fcfs", "pars", "oracle"))
    recovery = [(fi - pi) / (fi - oi) for fi, pi, oi in zip(f, p, o, strict=True)]
    for key, direct in (("recovery", recovery), ("ratio_pars_fcfs", np.divide(p, f)),
                        ("ratio_oracle_fcfs", np.divide(o, f))):
        mean, lo, hi = t95(direct)
        assert pooled[key]["traces"] == 3
        assert pooled[key]["mean"] == pytest.approx(mean)
        assert pooled[key]["t_ci"] == pytest.approx([lo, hi])
    mean, lo, hi = t95(f)
    assert pooled["fcfs"]["e2el_mean_s"]["mean"] == pytest.approx(mean)
    assert pooled["fcfs"]["e2el_mean_s"]["t_ci"] == pytest.approx([lo, hi])
    # the summary's figures are the client's own, in seconds and ms
    lat = [1.0, 2.0, 6.0]
    s = summarize(result(lat, [10.0, 20.0, 30.0]))
    assert s["e2el_mean_s"] == pytest.approx(3.0) and s["e2el_p50_s"] == pytest.approx(2.0)
    assert s["e2el_p99_s"] == pytest.approx(np.percentile(lat, 99)) and s["tpot_mean_ms"] == pytest.approx(20.0)


def test_recovery_without_an_oracle_gain_is_nan_and_left_out_of_the_pool():
    per_seed = made_up_seeds()
    runs = per_seed[0]["runs"]
    runs["oracle"]["summary"]["e2el_mean_s"] = runs["fcfs"]["summary"]["e2el_mean_s"]
    per_seed[0].update(vllm_bench.seed_ratios(runs))
    assert math.isnan(per_seed[0]["recovery"])
    assert vllm_bench.pool(per_seed)["recovery"]["traces"] == 2


def test_outputs_table_and_png(tmp_path):
    per_seed = made_up_seeds()
    report = {"started_at": "2026-12-07T05:00:00+00:00", "config": {"load_factor": 1.5, "fairness_window_s": 10.0},
              "per_seed": per_seed, "pooled": vllm_bench.pool(per_seed)}
    text = vllm_bench.write_outputs(report, tmp_path / "x.json")
    assert (tmp_path / "x.png").stat().st_size > 0 and (tmp_path / "x.md").read_text().strip() == text
    assert "| mean (t 95%) over 3 |" in text and text.count("| oracle |") == 4  # 3 seeds + pooled


def call(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        vllm_bench.main(argv)
    return exc.value.code, capsys.readouterr()


def test_help_and_one_line_errors(tmp_path, capsys):
    code, out = call(["--help"], capsys)
    assert code == 0 and "--load-factor" in out.out and "recovery" in out.out
    data = tmp_path / "val.json"
    data.write_text("[]")
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    py = tmp_path / "python"
    py.write_text("")
    base = ["--data", str(data), "--model-dir", str(model), "--vllm-python", str(py)]
    for extra, message in ([["--load-factor", "0"], "--load-factor and --request-rate must be positive"],
                           [["--seeds", "1,1"], "--seeds must be"],
                           [["--start"], "--start needs --ranker-path"],
                           [[], "without --start, give --vllm-url, --fcfs-url, --pars-url, --oracle-url"],
                           [["--num-prompts", "8", "--vllm-url", "u"], "--capacity-prompts must be 1 to"],
                           [["--num-prompts", "x"], "invalid int value"]):
        code, out = call(base + extra, capsys)
        assert code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1, out.err
    code, out = call(["--data", str(tmp_path / "nope.json"), "--model-dir", str(model)], capsys)
    assert code == 2 and "no such file" in out.err


def test_extra_gateways_start_like_the_others_in_front_of_the_same_vllm(monkeypatch):
    """start_all's extra gateways (vllm_bench's oracle): the shared gateway settings under their own, listed last."""
    started: dict[str, tuple[list[str], dict[str, str]]] = {}

    class Recorder:
        def start(self, name, cmd, env, cwd):
            started[name] = (cmd, env)

    monkeypatch.setattr(servers, "wait_up", lambda *a, **k: None)
    args = cli.parser().parse_args(["--data", "d.json", "--model-dir", "m", "--start", "--fairness-windows", "10",
                                    "--ranker-path", "runs/a/best_model.pt"])
    vllm_url, gateways = servers.start_all(args, Recorder(), extra_gateways=[
        ("oracle-gw", {"GATEWAY_SCORER": "max_tokens", "GATEWAY_FAIRNESS_WINDOW_S": "10"})])
    cmd, env = started["oracle-gw"]
    assert env["GATEWAY_SCORER"] == "max_tokens" and env["GATEWAY_UPSTREAM_URL"] == vllm_url
    assert env["GATEWAY_PREDICTOR_TIMEOUT_MS"] == started["fcfs-gw"][1]["GATEWAY_PREDICTOR_TIMEOUT_MS"]
    assert "scripts.pars_gateway:app" in cmd
    assert len(gateways) == 3 and gateways[-1] == f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"
