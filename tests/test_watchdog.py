"""The event-loop stall watchdog (pars/common/watchdog.py): a stalled loop leaves every thread's stack and is
counted; a free loop leaves nothing; the predictor service and the gateway run one."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry
from serving_helpers import serve, start_server, wait_ready

from pars.common.watchdog import LoopMetrics, StallWatchdog


def stalls(registry: CollectorRegistry, prefix: str = "t") -> float:
    return registry.get_sample_value(f"{prefix}_event_loop_stalls_total") or 0.0


def block_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)  # a synchronous call on the event loop: nothing else runs meanwhile


def run_watched(timeout_s: float, scenario, dump_file) -> tuple[CollectorRegistry, StallWatchdog]:
    registry = CollectorRegistry()
    watchdog = StallWatchdog(timeout_s, LoopMetrics(registry, "t"), "test", file=dump_file)

    async def main() -> None:
        watchdog.start()
        try:
            await scenario()
        finally:
            await watchdog.stop()

    asyncio.run(main())
    return registry, watchdog


def test_a_blocked_loop_leaves_every_stack_and_is_counted(tmp_path, caplog):
    async def scenario() -> None:
        await asyncio.sleep(0.3)
        block_the_loop_for(1.3)
        await asyncio.sleep(0.3)  # the watchdog's tick runs again and sees the gap

    with open(tmp_path / "dump.txt", "w+") as f:
        registry, watchdog = run_watched(0.4, scenario, f)
        f.seek(0)
        dump = f.read()
    assert "Timeout (0:00:00.400000)!" in dump
    assert "block_the_loop_for" in dump and "test_watchdog.py" in dump  # where the loop was stuck
    assert dump.count("Timeout (") >= 2  # repeated while the stall lasted (1.3 s at 0.4 s)
    assert stalls(registry) == 1.0
    assert watchdog.longest_stall_s >= 1.3
    assert "the event loop did not run for" in caplog.text
    assert registry.get_sample_value("t_event_loop_lag_seconds_bucket", {"le": "5.0"}) >= 1.0


def test_a_free_loop_leaves_nothing(tmp_path):
    async def scenario() -> None:
        for _ in range(10):
            await asyncio.sleep(0.1)
            block_the_loop_for(0.02)  # short synchronous work is not a stall

    with open(tmp_path / "dump.txt", "w+") as f:
        registry, _ = run_watched(0.5, scenario, f)
        f.seek(0)
        assert f.read() == ""
    assert stalls(registry) == 0.0
    assert registry.get_sample_value("t_event_loop_lag_seconds_count") >= 5  # ticks every 0.125 s for ~1.2 s


def test_zero_turns_it_off(tmp_path):
    async def scenario() -> None:
        block_the_loop_for(0.3)
        await asyncio.sleep(0)

    with open(tmp_path / "dump.txt", "w+") as f:
        registry, watchdog = run_watched(0.0, scenario, f)
        f.seek(0)
        assert f.read() == ""
    assert not watchdog.enabled and stalls(registry) == 0.0
    assert registry.get_sample_value("t_event_loop_lag_seconds_count") == 0.0


def test_predictor_service_reports_a_stopped_process(tiny_model_dir, checkpoint):
    # The stalls seen live (issue 6, runs E and Q): the whole service stopped answering. SIGSTOP makes one.
    proc, url = start_server({"PREDICTOR_MODEL_PATH": str(checkpoint), "PREDICTOR_MODEL_NAME": str(tiny_model_dir),
                              "PREDICTOR_DEVICE": "cpu", "PREDICTOR_NUM_THREADS": "1", "PREDICTOR_STALL_DUMP_S": "0.5"})
    try:
        wait_ready(proc, url)
        assert 'pars_event_loop_stalls_total 0.0' in httpx.get(url + "/metrics").text
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while 'pars_event_loop_stalls_total 1.0' not in httpx.get(url + "/metrics").text:
            assert time.monotonic() < deadline, "the stall was not counted"
            time.sleep(0.1)
        assert httpx.post(url + "/score", json={"prompt": "still here"}).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "Timeout (0:00:00.500000)!" in out  # faulthandler's dump, in the server's own log
    assert "PARS predictor: the event loop did not run for" in out


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_predictor_rejects_a_bad_stall_timeout(value, tiny_model_dir, checkpoint):
    proc, _ = start_server({"PREDICTOR_MODEL_PATH": str(checkpoint), "PREDICTOR_MODEL_NAME": str(tiny_model_dir),
                            "PREDICTOR_DEVICE": "cpu", "PREDICTOR_STALL_DUMP_S": value})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "bad setting PREDICTOR_STALL_DUMP_S" in out


def test_gateway_exposes_its_loop_metrics():
    from pars.gateway.app import create_app
    from pars.gateway.settings import GatewaySettings

    with serve(create_app(GatewaySettings(scorer="none", stall_dump_s=2.0))) as url:
        time.sleep(1.2)  # a few ticks at 0.5 s
        text = httpx.get(url + "/gateway/metrics").text
    assert "pars_gateway_event_loop_stalls_total 0.0" in text
    count = next(float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("pars_gateway_event_loop_lag_seconds_count"))
    assert count >= 1
