"""Local processes and ports, for the benchmarks, the experiments and the tests that start servers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """A loopback port no one listens on now (the caller binds it soon after; another process may race it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process in MiB, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, flags=re.M)
    return int(found.group(1)) / 1024 if found else None


def stop_process(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM (a server finishes its queued work), SIGKILL if it has not exited within `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
