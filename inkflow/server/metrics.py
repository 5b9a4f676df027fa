"""
Prometheus metrics, named C{inkflow_*}, on InkFlow's own registry.

Counters and histograms are fed by the request path (L{Metrics.observe_request},
L{Metrics.observe_chat}, L{Metrics.observe_queue_wait}) and by the forwarder's
attempt observer (L{Metrics.observe_attempt}); gauges (queue depth, breaker
states, connections, RSS, cleanup runs) are read at scrape time from the same
snapshot C{/api/health} uses, so the two never disagree.

Beside them, on the same registry: prometheus_client's C{process_*} (CPU,
memory, open files, start time; on Linux, read from /proc) and
C{python_info}, and C{inkflow_build_info{version, python, twisted}} (1).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import twisted
from inkflow import __version__, paths
from inkflow.snapshot import Health

__all__ = ["CONTENT_TYPE", "Metrics", "route_label"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

_ROUTES = {route.encode(): route for route in paths.ROUTES}
_API_PREFIX = paths.API_PREFIX.encode()


def route_label(path: bytes) -> str:
    """
    A bounded label for a request path: the known routes by name, the API's
    unknown paths as C{/api/other}, everything else as C{static}.
    """
    path = path.split(b"?", 1)[0]
    if path in _ROUTES:
        return _ROUTES[path]
    if path.startswith(_API_PREFIX):
        return paths.API_PREFIX + "other"
    return "static"


class _SnapshotCollector(Collector):
    """
    Gauges read from the health snapshot at scrape time.
    """

    def __init__(self, snapshot: Callable[[], Health]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        health = self._snapshot()
        queue = health["queue"]
        yield _gauge("inkflow_queue_depth", "Chat requests waiting in the queue", queue["depth"])
        yield _gauge("inkflow_queue_in_flight", "Chat requests in flight to n8n", queue["in_flight"])
        yield _counter(
            "inkflow_queue_rejected", "Chat requests refused because the queue was full", queue["rejected_total"]
        )
        yield _counter(
            "inkflow_queue_timed_out", "Chat requests that waited too long in the queue", queue["timed_out_total"]
        )
        yield _counter(
            "inkflow_queue_cancelled", "Chat requests whose client went away while queued", queue["cancelled_total"]
        )
        connections = health["connections"]
        yield _gauge("inkflow_connections_active", "Open client connections", connections["active"])
        yield _counter(
            "inkflow_connections_rejected", "Connections answered 503 over the limit", connections["rejected_total"]
        )
        yield _counter(
            "inkflow_connections_timed_out",
            "Requests whose head or body did not arrive in time (answered 408)",
            connections["timed_out_total"],
        )
        websockets = health["websockets"]
        yield _gauge("inkflow_websockets_open", "Open /chat WebSockets", websockets["open"])
        yield _counter("inkflow_websockets_opened", "/chat WebSockets opened", websockets["opened_total"])
        yield _gauge("inkflow_process_rss_bytes", "Resident memory of this process", health["memory"]["rss_bytes"])
        yield _gauge("inkflow_open_files", "Open file descriptors of this process", health["open_files"])
        yield _counter("inkflow_cleanup_runs", "Cleanup loop runs", health["cleanup"]["runs"])
        yield _counter(
            "inkflow_cleanup_temp_files_removed", "Orphaned temp files removed", health["cleanup"]["temp_files_removed"]
        )
        breaker = GaugeMetricFamily(
            "inkflow_upstream_breaker_state",
            "Circuit breaker state per webhook URL (0 closed, 1 half-open, 2 open)",
            labels=["url_index"],
        )
        for index, upstream in enumerate(health["upstreams"]):
            breaker.add_metric([str(index)], BREAKER_STATES.get(upstream["state"], 0))
        yield breaker
        streams = health.get("streams") or {}
        yield _gauge("inkflow_streams_in_flight", "Streamed chat answers being relayed", streams.get("in_flight", 0))
        yield _gauge("inkflow_draining", "1 while the server drains for shutdown", int(health["status"] == "draining"))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class Metrics:
    """
    InkFlow's metrics.

    @param snapshot: returns the health snapshot (see L{inkflow.health}).
    """

    def __init__(self, snapshot: Callable[[], Health] | None = None) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Info("inkflow_build", "InkFlow's version and what it runs on", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version(), "twisted": twisted.__version__}
        )
        self.requests = Counter(
            "inkflow_http_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.chat_latency = Histogram(
            "inkflow_chat_latency_seconds",
            "Time to answer a chat request (queue wait and n8n included)",
            ["status"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "inkflow_queue_wait_seconds",
            "Time chat requests waited in the queue",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30),
            registry=self.registry,
        )
        self.attempts = Counter(
            "inkflow_upstream_attempts",
            "Attempts at n8n webhook URLs, by URL index and outcome",
            ["url_index", "outcome"],
            registry=self.registry,
        )
        self.failures = Counter(
            "inkflow_upstream_failures",
            "Failed attempts at n8n webhook URLs, by URL index",
            ["url_index"],
            registry=self.registry,
        )
        self.stream_first_byte = Histogram(
            "inkflow_stream_first_byte_seconds",
            "Time from a streamed chat request to its first byte to the client (queue wait included)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.stream_duration = Histogram(
            "inkflow_stream_duration_seconds",
            "Time a streamed chat answer was relayed, from its first byte to its end",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.stream_endings = Counter(
            "inkflow_stream_endings",
            "Streamed chat answers ended, by cause",
            ["cause"],
            registry=self.registry,
        )
        self.stream_bytes = Counter(
            "inkflow_stream_bytes",
            "Bytes of streamed chat answers relayed to clients",
            registry=self.registry,
        )
        if snapshot is not None:
            self.read_health(snapshot)

    #: The Content-Type of L{render}.
    content_type = CONTENT_TYPE

    def read_health(self, snapshot: Callable[[], Health]) -> None:
        """
        Export the health snapshot's figures too (read at each scrape).  The
        composition root calls it once the health reporter is built: the
        reporter reads the forwarder, which reports its attempts here.
        """
        self.registry.register(_SnapshotCollector(snapshot))

    def observe_request(self, path: bytes, status: int) -> None:
        self.requests.labels(route_label(path), str(status)).inc()

    def observe_chat(self, seconds: float, status: int) -> None:
        self.chat_latency.labels(str(status)).observe(seconds)

    def observe_queue_wait(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def observe_attempt(self, url_index: int, outcome: str, seconds: float) -> None:
        self.attempts.labels(str(url_index), outcome).inc()
        if outcome not in ("ok", "cancelled"):  # a client leaving is not n8n's failure
            self.failures.labels(str(url_index)).inc()

    def observe_stream_start(self, seconds: float) -> None:
        self.stream_first_byte.observe(seconds)

    def observe_stream_end(self, cause: str, sent: int, seconds: float) -> None:
        self.stream_endings.labels(cause).inc()
        self.stream_duration.observe(seconds)
        self.stream_bytes.inc(sent)

    def render(self) -> bytes:
        return generate_latest(self.registry)
