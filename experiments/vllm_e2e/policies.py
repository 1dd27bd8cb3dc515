"""The policies compared and what each sends: the priority of a request, the gateway a policy goes through,
and the names policies carry in the reports (pars@W, pars[R]@W, pars+lenX@W)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from experiments.lib.traces import Request

BASELINE = "fcfs"
ORACLE = "oracle"
DIRECT_POLICIES = ("fcfs", "oracle", "prompt-length")


def baseline_priority(name: str, max_tokens: int, prompt_tokens: int) -> int | None:
    """What the policies that need no ranker send: fcfs 0 for all (ties go by arrival), the oracle the true
    length served, prompt-length the prompt's; None for any other policy."""
    if name == "fcfs":
        return 0
    if name in ("oracle", "oracle-gw"):  # oracle-gw: sent as the client's own, which the gateway keeps
        return max_tokens
    if name == "prompt-length":
        return prompt_tokens
    return None


@dataclass
class Policy:
    name: str
    url: str  # where its requests go
    kind: str  # direct, gateway
    window_s: float | None = None  # pars gateways: GATEWAY_FAIRNESS_WINDOW_S
    scorer: str | None = None  # gateways: none, remote, local

    def priority(self, req: Request) -> int | None:
        """The priority the harness sends; None for gateway policies: a client priority would be respected
        by the gateway (GATEWAY_CLIENT_PRIORITY=respect) and the prompt never scored."""
        return baseline_priority(self.name, req.max_tokens, req.prompt_tokens)


def gateway_policy(url: str, health: dict, ranker: str | None = None) -> Policy:
    """A gateway's policy from its /gateway/health; `ranker` labels it when several rankers run."""
    if health.get("scorer") == "none":
        return Policy("fcfs-gw", url, "gateway", health.get("fairness_window_s"), "none")
    w = float(health["fairness_window_s"])
    weight = float(health.get("prompt_length_weight") or 0.0)
    name = "pars" + (f"[{ranker}]" if ranker else "") + (f"+len{weight:g}" if weight else "") + f"@{w:g}"
    return Policy(name, url, "gateway", w, health.get("scorer"))


def pars_window(name: str) -> tuple[str | None, float] | None:
    """(ranker label or None, W) of a plain PARS policy (pars@W, pars[R]@W); None for anything else,
    pars+lenX@W included."""
    m = re.fullmatch(r"pars(?:\[([^\]]+)\])?@([0-9.eE+-]+)", name)
    return (m.group(1), float(m.group(2))) if m else None


def split_gateway(spec: str) -> tuple[str | None, str]:
    """--gateway [RANKER=]URL -> (RANKER or None, URL)."""
    label, sep, url = spec.partition("=")
    return (label, url) if sep and "://" not in label else (None, spec)


def body_of(policy: Policy, req: Request, model: str, stream: bool, max_tokens: int | None = None) -> bytes:
    """The /v1/completions body of one request under one policy: exactly max_tokens tokens (ignore_eos)."""
    body: dict[str, Any] = {"model": model, "prompt": req.prompt, "max_tokens": max_tokens or req.max_tokens,
                            "ignore_eos": True, "temperature": 0.0}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    priority = policy.priority(req)
    if priority is not None:
        body["priority"] = priority
    return json.dumps(body).encode()
