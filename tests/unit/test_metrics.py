"""
Tests for L{inkflow.server.metrics}: route labels, and the gauges and counters
read from the health snapshot at scrape time.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import TestCase

from inkflow import paths
from inkflow.health import SiteStats, build_health
from inkflow.server.metrics import Metrics, route_label
from inkflow.snapshot import Health
from tests.unit.test_health import health_inputs, upstream


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of a scrape, keyed by (name, sorted labels).
    """
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class RouteLabelTests(TestCase):
    """
    L{route_label} keeps the route label's values bounded.
    """

    def test_labels(self) -> None:
        """Known routes by name (query dropped), other API paths as one label, the rest as static."""
        for route in paths.ROUTES:
            self.assertEqual(route_label(route.encode() + b"?x=1"), route)
        self.assertEqual(route_label(b"/api/nope"), "/api/other")
        self.assertEqual(route_label(b"/style.css"), "static")


class ProcessAndBuildTests(TestCase):
    """
    prometheus_client's process_* and python_info, and inkflow_build_info, on InkFlow's registry.
    """

    def test_build_info_names_the_version(self) -> None:
        import platform

        import twisted
        from inkflow import __version__

        labels = (("python", platform.python_version()), ("twisted", twisted.__version__), ("version", __version__))
        self.assertEqual(samples(Metrics())[("inkflow_build_info", labels)], 1.0)

    def test_process_metrics_where_proc_is(self) -> None:
        import os

        if not os.path.isdir("/proc/self"):
            self.skipTest("process_* are read from /proc (Linux)")
        names = {name for name, _ in samples(Metrics())}
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
            self.assertIn(name, names)
        self.assertIn("python_info", names)


class SnapshotMetricsTests(TestCase):
    """
    The gauges and counters read from the health snapshot.
    """

    def scrape(self, health: Health) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(Metrics(lambda: health))

    def test_queue_and_connections(self) -> None:
        """Each queue and connection figure of the snapshot is exported under its name."""
        found = self.scrape(build_health(health_inputs()))
        expected = {
            "inkflow_queue_depth": 1,
            "inkflow_queue_in_flight": 5,
            "inkflow_queue_rejected_total": 6,
            "inkflow_queue_timed_out_total": 7,
            "inkflow_queue_cancelled_total": 8,
            "inkflow_connections_active": 2,
            "inkflow_connections_rejected_total": 3,
            "inkflow_connections_timed_out_total": 4,
            "inkflow_process_rss_bytes": 50 * 1024 * 1024,
            "inkflow_open_files": 9,
            "inkflow_cleanup_runs_total": 2,
            "inkflow_cleanup_temp_files_removed_total": 1,
            "inkflow_draining": 0,
        }
        self.assertEqual({name: found[(name, ())] for name in expected}, expected)

    def test_breakers_and_draining(self) -> None:
        """One breaker gauge per URL index (0 closed, 1 half-open, 2 open); draining is 1 while draining."""
        inputs = health_inputs(
            site=SiteStats(0, 0, 0, draining=True),
            upstreams=[upstream("closed"), upstream("half_open"), upstream("open")],
        )
        found = self.scrape(build_health(inputs))
        states = [found[("inkflow_upstream_breaker_state", (("url_index", str(i)),))] for i in range(3)]
        self.assertEqual(states, [0, 1, 2])
        self.assertEqual(found[("inkflow_draining", ())], 1)


class ObserverTests(TestCase):
    """
    The counters fed by the request path and the forwarder.
    """

    def test_a_client_leaving_is_not_an_upstream_failure(self) -> None:
        """Attempts are counted by outcome; failures exclude ok and cancelled."""
        metrics = Metrics()
        for outcome in ("ok", "cancelled", "connect", "503"):
            metrics.observe_attempt(0, outcome, 0.1)
        found = samples(metrics)
        self.assertEqual(found[("inkflow_upstream_attempts_total", (("outcome", "cancelled"), ("url_index", "0")))], 1)
        self.assertEqual(found[("inkflow_upstream_failures_total", (("url_index", "0"),))], 2)

    def test_requests_by_route_and_status(self) -> None:
        """A request is counted under its bounded route label and its status."""
        metrics = Metrics()
        metrics.observe_request(b"/api/chat?x", 429)
        found = samples(metrics)
        self.assertEqual(found[("inkflow_http_requests_total", (("route", "/api/chat"), ("status", "429")))], 1)
