"""
L{inkflow.state.aggregate}: the whole server's C{/metrics} from the workers'
texts -- counters summed and never going backwards (a worker that restarts
or exits keeps its counts), gauges one series per worker -- and the parent
asking its workers over AMP (L{StateServerFactory.scrape}).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from inkflow.state.aggregate import Aggregator, merge_health
from inkflow.state.base import StateConfig
from inkflow.state.memory import MemoryState
from inkflow.state.workers import ParentStateService, WorkersState

reactor: Any = _reactor


def run(f: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[Any], Deferred[None]]:
    @functools.wraps(f)
    def wrapper(self: Any) -> Deferred[None]:
        return ensureDeferred(f(self))

    return wrapper


class FakeWorker:
    """
    One worker's registry, shaped like InkFlow's.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("inkflow_http_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("inkflow_chat_latency_seconds", "latency", buckets=(0.1, 1.0), registry=self.registry)
        self.depth = Gauge("inkflow_queue_depth", "queue depth", registry=self.registry)
        Info("inkflow_build", "build", registry=self.registry).info({"version": "0.1.0"})

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def text_of(worker: FakeWorker) -> Callable[[], bytes]:
    return lambda: worker.text().encode()


CHAT = ("inkflow_http_requests_total", (("route", "/api/chat"), ("status", "200")))


class AggregatorTests(TestCase):
    def test_counters_and_histograms_are_summed(self) -> None:
        """Two workers' counters and histogram buckets add up; _created samples are dropped."""
        one, two = FakeWorker(), FakeWorker()
        for _ in range(7):
            one.requests.labels("/api/chat", "200").inc()
        for _ in range(13):
            two.requests.labels("/api/chat", "200").inc()
        one.latency.observe(0.05)
        two.latency.observe(0.5)
        agg = Aggregator()
        agg.update("0", one.text())
        agg.update("1", two.text())
        merged = samples(agg.render())
        self.assertEqual(merged[CHAT], 20)
        self.assertEqual(merged[("inkflow_chat_latency_seconds_count", ())], 2)
        self.assertEqual(merged[("inkflow_chat_latency_seconds_bucket", (("le", "1.0"),))], 2)
        self.assertEqual(merged[("inkflow_chat_latency_seconds_bucket", (("le", "0.1"),))], 1)
        self.assertFalse([key for key in merged if key[0].endswith("_created")])

    def test_gauges_are_labelled_by_worker(self) -> None:
        """Each worker's gauge is its own series (worker="slot"), the build info too (a gauge in the text format)."""
        one, two = FakeWorker(), FakeWorker()
        one.depth.set(3)
        two.depth.set(4)
        agg = Aggregator()
        agg.update("0", one.text())
        agg.update("1", two.text())
        merged = samples(agg.render())
        self.assertEqual(merged[("inkflow_queue_depth", (("worker", "0"),))], 3)
        self.assertEqual(merged[("inkflow_queue_depth", (("worker", "1"),))], 4)
        self.assertEqual(merged[("inkflow_build_info", (("version", "0.1.0"), ("worker", "1")))], 1)

    def test_a_counter_never_goes_backwards_across_a_restart(self) -> None:
        """A worker that exits keeps its counts; its replacement counts on top; scrapes only grow."""
        agg = Aggregator()
        first, other = FakeWorker(), FakeWorker()
        for _ in range(5):
            first.requests.labels("/api/chat", "200").inc()
        other.requests.labels("/api/chat", "200").inc()
        agg.update("0", first.text())
        agg.update("1", other.text())
        before = samples(agg.render())[CHAT]
        agg.retire("0")
        self.assertEqual(samples(agg.render())[CHAT], before)
        restarted = FakeWorker()
        restarted.requests.labels("/api/chat", "200").inc()
        agg.update("0", restarted.text())
        self.assertEqual(samples(agg.render())[CHAT], before + 1)
        gauges = [key for key in samples(agg.render()) if key[0] == "inkflow_queue_depth"]
        self.assertEqual(len(gauges), 2)  # the retired worker's gauge went with it

    def test_health_totals_sum_every_total(self) -> None:
        """merge_health: every *_total summed at any depth, the workers' own snapshots kept."""
        merged = merge_health(
            {
                "0": {"queue": {"processed_total": 3, "depth": 1}, "status": "ok"},
                "1": {"queue": {"processed_total": 4, "depth": 0}, "status": "ok"},
            }
        )
        self.assertEqual(merged["totals"], {"queue": {"processed_total": 7}})
        workers = merged["workers"]
        assert isinstance(workers, dict)
        self.assertEqual(set(workers), {"0", "1"})


class ScrapeOverAmpTests(TestCase):
    @run
    async def test_every_scrape_from_any_worker_counts_every_worker(self) -> None:
        """Two workers on the parent's socket: ten scrapes, each from either worker, all the same total."""
        parent = ParentStateService(MemoryState(Clock(), StateConfig()), reactor)
        parent.startService()
        self.addCleanup(parent.stopService)
        one, two = FakeWorker(), FakeWorker()
        for _ in range(7):
            one.requests.labels("/api/chat", "200").inc()
        for _ in range(13):
            two.requests.labels("/api/chat", "200").inc()
        workers = [
            WorkersState(UNIXClientEndpoint(reactor, parent.path), reactor, str(slot), text_of(w))
            for slot, w in enumerate((one, two))
        ]
        for w in workers:
            self.addCleanup(w.close)
            await w.when_connected()
        totals = []
        for n in range(10):
            text = await workers[n % 2].scrape()
            totals.append(samples(text).get(CHAT))
        self.assertEqual(totals, [20.0] * 10)

    @run
    async def test_the_servers_health_has_every_worker(self) -> None:
        """Health from any worker: the totals of both and a section per worker."""
        parent = ParentStateService(MemoryState(Clock(), StateConfig()), reactor)
        parent.startService()
        self.addCleanup(parent.stopService)
        workers = []
        for slot, processed in enumerate((3, 4)):
            worker = WorkersState(
                UNIXClientEndpoint(reactor, parent.path),
                reactor,
                str(slot),
                health_snapshot=health_of(processed),
            )
            self.addCleanup(worker.close)
            await worker.when_connected()
            workers.append(worker)
        health = await workers[1].server_health()
        self.assertEqual(health["totals"], {"queue": {"processed_total": 7}})
        self.assertEqual(sorted(health["workers"]), ["0", "1"])


def health_of(processed: int) -> Callable[[], dict[str, Any]]:
    return lambda: {"queue": {"processed_total": processed, "depth": 0}}
