"""Prometheus metrics of the frontend and its embedded router (DESIGN.md §3).

Names are `rotor_` + Dynamo's suffixes so dashboards built for Dynamo need only a prefix change.
Each app owns its registry (no global state); per-worker and router gauges are read from live
state when scraped, so nothing has to keep them up to date.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from frontend.workers import WorkerPool
    from tracing.service import Tracing


def _log_buckets(low: float, high: float, count: int) -> list[float]:
    ratio = (high / low) ** (1 / (count - 1))
    return [round(low * ratio**i, 6) for i in range(count)]


class FrontendMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "rotor_frontend_"
        self.requests = Counter(p + "requests", "Requests by outcome",
                                ["model", "endpoint", "request_type", "status", "error_type"],
                                registry=r)
        self.inflight = Gauge(p + "inflight_requests", "Requests being served", ["model"],
                              registry=r)
        self.queued = Gauge(p + "queued_requests", "Requests not yet at their first token",
                            ["model"], registry=r)
        self.disconnected = Counter(p + "disconnected_clients",
                                    "Clients that went away before their response ended",
                                    registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Time to first token, seconds",
                              ["model"], buckets=_log_buckets(0.001, 480, 18), registry=r)
        self.itl = Histogram(p + "inter_token_latency_seconds", "Inter-token latency, seconds",
                             ["model"], buckets=_log_buckets(0.001, 2, 13), registry=r)
        self.duration = Histogram(p + "request_duration_seconds", "Request duration, seconds",
                                  ["model"], buckets=_log_buckets(1, 512, 10), registry=r)
        self.input_tokens = Histogram(p + "input_sequence_tokens", "Prompt tokens per request",
                                      ["model"], buckets=_log_buckets(50, 128000, 12), registry=r)
        self.output_tokens = Histogram(p + "output_sequence_tokens", "Output tokens per request",
                                       ["model"], buckets=_log_buckets(50, 32000, 10), registry=r)
        self.cached_tokens = Histogram(p + "cached_tokens", "Prompt tokens served from cache",
                                       ["model"], buckets=_log_buckets(16, 128000, 12), registry=r)
        self.output_tokens_total = Counter(p + "output_tokens", "Output tokens", ["model"],
                                           registry=r)
        self.migrations = Counter(p + "model_migration", "Requests moved to another worker",
                                  ["model", "migration_type"], registry=r)
        self.cancellations = Counter(p + "model_cancellation", "Requests cancelled by clients",
                                     ["model"], registry=r)
        self.rejections = Counter(p + "model_rejection", "Requests shed with 503",
                                  ["model", "endpoint"], registry=r)
        self.speculative_prefills = Counter(p + "speculative_prefill",
                                            "Background next-turn prefills, by outcome",
                                            ["model", "status"], registry=r)
        self.kv_hit_rate = Histogram("rotor_router_kv_hit_rate",
                                     "Fraction of a prompt's tokens cached on its chosen worker",
                                     buckets=[0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                                     registry=r)
        self.router_overhead = Histogram(
            "rotor_router_overhead_ms", "Router overhead per decision, ms", ["phase"],
            buckets=[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25], registry=r)

    def add_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Register metrics computed from live state at scrape time."""
        self.registry.register(_Callback(collect))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Callback(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]):
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()

    def describe(self) -> Iterable[Metric]:
        return []


WORKER_LABELS = ["model", "worker_id", "dp_rank"]


def tracing_metrics(tracing: "Tracing | None") -> Iterable[Metric]:
    """Trace records and tool events, written and dropped."""
    if tracing is None or not tracing.enabled:
        return []
    records = CounterMetricFamily("rotor_agent_trace_records", "Trace records by outcome",
                                  labels=["outcome"])
    records.add_metric(["emitted"], tracing.tracer.emitted)
    records.add_metric(["written"], tracing.tracer.written)
    records.add_metric(["dropped"], tracing.tracer.dropped)
    tools = CounterMetricFamily("rotor_agent_trace_tool_events", "Harness tool events received",
                                labels=["outcome"])
    if tracing.ingress is not None:
        tools.add_metric(["accepted"], tracing.ingress.accepted)
        for reason, count in tracing.ingress.rejected.items():
            tools.add_metric([f"rejected_{reason}"], count)
    return [records, tools]


def fleet_metrics(pool: "WorkerPool") -> Iterable[Metric]:
    """Per-worker load and router state, read when scraped."""
    blocks = GaugeMetricFamily("rotor_frontend_worker_active_decode_blocks",
                               "KV blocks the router books on a worker", labels=WORKER_LABELS)
    prefill = GaugeMetricFamily("rotor_frontend_worker_active_prefill_tokens",
                                "Prompt tokens booked on a worker and not yet prefilled",
                                labels=WORKER_LABELS)
    used = GaugeMetricFamily("rotor_frontend_worker_kv_used_blocks",
                             "KV blocks in use, as the worker reports", labels=WORKER_LABELS)
    queue = GaugeMetricFamily("rotor_frontend_router_queue_pending_requests",
                              "Requests waiting in the router's admission queue", labels=["model"])
    sheds = CounterMetricFamily("rotor_router_shed", "Requests shed by the router",
                                labels=["model", "reason"])
    events = CounterMetricFamily("rotor_component_kv_cache_events_applied",
                                 "Router KV events by outcome", labels=["model", "event_type",
                                                                        "status"])
    for name, model in pool.models.items():
        core = model.router.core
        queue.add_metric([name], core.queue_depth)
        for view in core.worker_loads():
            labels = [name, str(view.worker_id), str(view.dp_rank)]
            blocks.add_metric(labels, view.active_blocks)
            prefill.add_metric(labels, view.prefill_tokens)
        for reason, count in core.metrics.sheds.items():
            sheds.add_metric([name, reason], count)
        for (kind, status), count in core.metrics.events.items():
            events.add_metric([name, kind, status], count)
    mismatches = CounterMetricFamily("rotor_tokenization_mismatch",
                                     "Prompts whose engine token ids differ from Rotor's",
                                     labels=WORKER_LABELS)
    for client in pool.clients.values():
        labels = [client.record.model, str(client.worker_id), "0"]
        if client.load is not None:
            used.add_metric(labels, client.load.kv_used_blocks)
        if "tokenization_mismatch_total" in client.record.stats:
            mismatches.add_metric(labels, client.record.stats["tokenization_mismatch_total"])
    return [blocks, prefill, used, queue, sheds, events, mismatches]
