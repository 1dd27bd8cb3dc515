"""The servers an experiment starts (vLLM, predictor services, gateways): child processes with a log each,
waited for until they answer, stopped by pid at the end, optionally pinned to CPUs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def wait_up(proc: subprocess.Popen, url: str, path: str, timeout: float, name: str) -> None:
    """Until GET url+path answers 200; SystemExit when the process exits first or `timeout` s pass."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited early (code {proc.returncode}); see its log")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise SystemExit(f"{name} at {url} not up after {timeout:.0f} s")


def log_dir_for(log_dir: Path | None, out: Path) -> Path:
    """--log-dir, or one folder per experiment named after its --out: logs outlive the next experiment (the
    predictor stall of run Q went unexplained because the next trace overwrote the shared logs)."""
    return log_dir if log_dir is not None else Path("/tmp") / f"{out.name.removesuffix('.json')}_logs"


@dataclass
class Servers:
    """Child processes, each logging to <log_dir>/<prefix><name>.log, stopped (by pid) by stop()."""

    log_dir: Path
    prefix: str = ""
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{self.prefix}{name}.log", "w")  # noqa: SIM115 - kept open for the child
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        """SIGTERM to all, the last started first; then each is waited for, and killed after 30 s."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def cpu_list(spec: str) -> set[int]:
    """A taskset-style list ("1", "0,2-3") as a set of CPUs this process may use; ValueError otherwise."""
    cpus: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"{spec!r} is not a CPU list like 1 or 0,2-3") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise ValueError(f"CPU list {spec!r} is empty or not within this machine's CPUs {sorted(allowed)}")
    return cpus
