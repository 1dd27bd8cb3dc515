"""Prometheus metrics of the gateway (one registry per app), served at /gateway/metrics: /metrics itself
passes through to vLLM."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pars.common.watchdog import LoopMetrics

_SCORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pars_gateway_requests_total", "completions/chat requests by how their priority "
                                "was set (scored, client, fallback, unscorable, unscored)", ["source"], registry=r)
        self.fallbacks = Counter("pars_gateway_fallbacks_total", "requests sent on with the neutral priority "
                                 "because the predictor failed, by reason", ["reason"], registry=r)
        self.score_seconds = Histogram("pars_gateway_score_seconds", "time spent getting a score (fallbacks "
                                       "included)", buckets=_SCORE_BUCKETS, registry=r)
        self.predictor_timeout = Gauge("pars_gateway_predictor_timeout_seconds", "how long the latest request "
                                       "that asked for a score could wait for it (GATEWAY_PREDICTOR_TIMEOUT_MS "
                                       "alone, up to GATEWAY_PREDICTOR_TIMEOUT_MAX_MS in a burst)", registry=r)
        self.upstream_errors = Counter("pars_gateway_upstream_errors_total", "requests the upstream could not be "
                                       "reached for (answered 502)", registry=r)
        self.ranker_changes = Counter("pars_gateway_ranker_changes_total", "times the predictor's ranker changed "
                                      "(x-pars-ranker-id), each starting the quantile windows afresh", registry=r)
        self.records_written = Counter("pars_gateway_records_written_total", "request records written to "
                                       "GATEWAY_RECORD_DIR", registry=r)
        self.records_dropped = Counter("pars_gateway_records_dropped_total", "request records lost: queue_full "
                                       "(the writer fell behind) or write_error (the directory is full or "
                                       "unwritable)", ["reason"], registry=r)
        self.loop = LoopMetrics(r, "pars_gateway")

    def fallback_count(self) -> int:
        return sum(self.fallbacks_by_reason().values())

    def fallbacks_by_reason(self) -> dict[str, int]:
        return {s.labels["reason"]: int(s.value) for m in self.fallbacks.collect() for s in m.samples
                if s.name.endswith("_total")}

    def records_dropped_by_reason(self) -> dict[str, int]:
        return {s.labels["reason"]: int(s.value) for m in self.records_dropped.collect() for s in m.samples
                if s.name.endswith("_total")}

    def records_written_count(self) -> int:
        return _total(self.records_written)

    def ranker_change_count(self) -> int:
        return _total(self.ranker_changes)


def _total(counter: Counter) -> int:
    return int(sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total")))
