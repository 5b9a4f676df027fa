"""
Tests for C{inkflow monitor}: the pure view model and rates
(L{inkflow.tools.view}), the rendering (L{inkflow.tools.dashboard}), and
C{--once [--json]} and the live loop (L{inkflow.tools.monitor}) against an
in-memory server on a L{Clock}.  No reactor; C{inkflow monitor} as a command
is tested end to end (tests/e2e/test_operations.py).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from inkflow.tools import cli
from inkflow.tools.dashboard import (
    format_bytes,
    format_duration,
    format_of,
    format_rate,
    format_when,
    render,
    status_style,
)
from inkflow.tools.healthcheck import HealthClient
from inkflow.tools.monitor import LiveMonitor, run_once
from inkflow.tools.view import Poll, Rates, Tracker, build_view, compute_rates
from tests.unit.test_healthcheck import RefusingAgent

URL = "http://127.0.0.1:8000/api/health"


def health(
    processed: int = 100,
    rejected: int = 4,
    timed_out: int = 1,
    conn_rejected: int = 2,
    pid: int = 4242,
    uptime: float = 60.0,
    status: str = "ok",
) -> dict[str, Any]:
    """
    A health answer shaped like the contract's.
    """
    return {
        "status": status,
        "version": "0.1.0",
        "mode": "proxy",
        "pid": pid,
        "uptime_s": uptime,
        "connections": {"active": 3, "max": 50, "rejected_total": conn_rejected, "timed_out_total": 6},
        "queue": {
            "depth": 2,
            "max": 20,
            "in_flight": 5,
            "max_concurrent": 10,
            "processed_total": processed,
            "rejected_total": rejected,
            "timed_out_total": timed_out,
            "cancelled_total": 9,
            "wait_ms_p50": 1.5,
            "wait_ms_p95": 12.25,
        },
        "websockets": {"open": 1, "opened_total": 4},
        "streams": {"in_flight": 2, "total": 7, "endings": {"complete": 5}},
        "upstreams": [
            {
                "url": "https://n8n.example:443/webhook/chat",
                "state": "closed",
                "consecutive_failures": 0,
                "requests_total": 90,
                "failures_total": 1,
                "last_error": None,
            },
            {
                "url": "https://backup.example:443/webhook/chat",
                "state": "open",
                "consecutive_failures": 5,
                "requests_total": 10,
                "failures_total": 7,
                "last_error": "connect: refused",
            },
        ],
        "memory": {"rss_bytes": 52 * 1024 * 1024, "vms_bytes": 0, "percent": 1.0},
        "cpu_percent": 3.5,
        "open_files": 12,
        "threads": 4,
        "cleanup": {"runs": 7, "last_run": None, "temp_files_removed": 3, "gc_collected": 120},
        "limits": {"max_file_size": 10485760, "max_files": 5, "max_connections": 50, "queue_size": 20},
    }


def good(at: float, data: Mapping[str, Any], wall: float = 1_700_000_000.0) -> Poll:
    return Poll(at=at, wall=wall + at, health=data)


def failed(at: float, error: str = "connection refused", wall: float = 1_700_000_000.0) -> Poll:
    return Poll(at=at, wall=wall + at, error=error)


def text_of(renderable: Any, width: int = 160) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(renderable)
    return out.getvalue()


class FormatTests(TestCase):
    """
    The small formatters used by the dashboard.
    """

    def test_bytes(self) -> None:
        """
        Sizes are shown in binary units with one decimal; None is a dash.
        """
        self.assertEqual(format_bytes(512), "512 B")
        self.assertEqual(format_bytes(52 * 1024 * 1024), "52.0 MiB")
        self.assertEqual(format_bytes(3 * 1024**3), "3.0 GiB")
        self.assertEqual(format_bytes(None), "—")

    def test_duration(self) -> None:
        """
        Durations are shown as the two or three largest units.
        """
        self.assertEqual(format_duration(5.9), "5s")
        self.assertEqual(format_duration(125), "2m 05s")
        self.assertEqual(format_duration(3723), "1h 02m 03s")
        self.assertEqual(format_duration(2 * 86400 + 3600), "2d 01h 00m")
        self.assertEqual(format_duration(None), "—")

    def test_rate_and_ratio(self) -> None:
        """
        Rates have two decimals and a unit; a value with its limit reads "3 / 50".
        """
        self.assertEqual(format_rate(2.5), "2.50/s")
        self.assertEqual(format_rate(None), "—")
        self.assertEqual(format_of(3, 50), "3 / 50")
        self.assertEqual(format_of(None, 50), "— / 50")
        self.assertEqual(format_of(7, None), "7")

    def test_when(self) -> None:
        """
        A server time (epoch seconds or ISO 8601) is shown as local time and how
        long ago; anything else as sent.
        """
        now = 1_700_000_100.0
        self.assertTrue(format_when(1_700_000_058.0, now).endswith("(42s ago)"))
        self.assertTrue(format_when("2023-11-14T22:13:20Z", now).endswith("(1m 40s ago)"))
        self.assertTrue(format_when("2023-11-14T22:13:20", now).endswith("(1m 40s ago)"))
        self.assertEqual(format_when("yesterday", now), "yesterday")
        self.assertEqual(format_when(None, now), "never")

    def test_status_colours(self) -> None:
        """
        ok is green, degraded yellow, draining magenta, DOWN white on red.
        """
        self.assertIn("green", status_style("ok"))
        self.assertIn("yellow", status_style("degraded"))
        self.assertIn("magenta", status_style("draining"))
        self.assertIn("on red", status_style("DOWN"))
        self.assertEqual(status_style("something new"), "bold")


class ComputeRatesTests(TestCase):
    """
    L{compute_rates} turns two polls of the same server into per-second rates.
    """

    def test_rates_between_two_polls(self) -> None:
        """
        Each counter's increase divided by the seconds between the polls.
        """
        before = good(10.0, health(processed=100, rejected=4, timed_out=1, conn_rejected=2))
        now = good(12.0, health(processed=110, rejected=5, timed_out=1, conn_rejected=6, uptime=62.0))
        self.assertEqual(
            compute_rates(now, before),
            Rates(processed=5.0, rejected=0.5, timed_out=0.0, cancelled=0.0, connections_rejected=2.0),
        )

    def test_no_previous_poll(self) -> None:
        """
        The first poll has nothing to compare with: no rates.
        """
        self.assertEqual(compute_rates(good(1.0, health()), None), Rates())

    def test_server_restarted_with_a_new_pid(self) -> None:
        """
        A new pid means new counters: no rates rather than nonsense.
        """
        before = good(10.0, health(processed=100, pid=1))
        now = good(12.0, health(processed=3, pid=2, uptime=1.0))
        self.assertEqual(compute_rates(now, before), Rates())

    def test_server_restarted_with_the_same_pid(self) -> None:
        """
        In a container the pid can be the same after a restart; a smaller
        uptime gives it away.
        """
        before = good(10.0, health(processed=100, pid=1, uptime=500.0))
        now = good(12.0, health(processed=150, pid=1, uptime=2.0))
        self.assertEqual(compute_rates(now, before), Rates())

    def test_counter_went_backwards(self) -> None:
        """
        A counter smaller than before has no rate; the others still do.
        """
        before = good(10.0, health(processed=100, rejected=4))
        now = good(11.0, health(processed=90, rejected=6, uptime=61.0))
        rates = compute_rates(now, before)
        self.assertIsNone(rates.processed)
        self.assertEqual(rates.rejected, 2.0)

    def test_missing_counter(self) -> None:
        """
        A counter the server does not send has no rate.
        """
        data = health()
        del data["queue"]["timed_out_total"]
        rates = compute_rates(good(11.0, data), good(10.0, health()))
        self.assertIsNone(rates.timed_out)
        self.assertEqual(rates.processed, 0.0)

    def test_no_time_between_polls(self) -> None:
        """
        Two polls at the same instant give no rates (and no division by zero).
        """
        self.assertEqual(compute_rates(good(5.0, health()), good(5.0, health())), Rates())


class BuildViewTests(TestCase):
    """
    L{build_view} picks what the dashboard shows out of a health answer.
    """

    def test_fields_from_a_full_answer(self) -> None:
        """
        Every number the dashboard shows comes from its place in the answer.
        """
        poll = good(1.0, health())
        view = build_view(URL, poll, poll)
        self.assertTrue(view.up)
        self.assertFalse(view.stale)
        self.assertEqual(view.status, "ok")
        self.assertEqual(view.health, health())
        self.assertEqual(view.last_seen_wall, poll.wall)

    def test_missing_and_malformed_fields(self) -> None:
        """
        Sections the server leaves out, or sends with the wrong type, show as
        unknown instead of breaking the view.
        """
        data = {"status": "degraded", "pid": "not a number", "queue": [], "upstreams": [{"url": "x"}, "junk"]}
        poll = good(1.0, data)
        view = build_view(URL, poll, poll)
        self.assertEqual(view.status, "degraded")
        self.assertIsNone(view.health.get("pid"))
        self.assertIsNone(view.health["queue"].get("depth"))
        self.assertIsNone(view.health["memory"].get("rss_bytes"))
        self.assertEqual(view.health["upstreams"], [{"url": "x"}])
        text = text_of(render(view))
        self.assertIn("degraded".upper(), text)
        self.assertIn("?", text)

    def test_status_missing(self) -> None:
        """
        An answer without a status shows "unknown".
        """
        poll = good(1.0, {})
        view = build_view(URL, poll, poll)
        self.assertEqual(view.status, "unknown")
        self.assertIn("UNKNOWN", text_of(render(view)))

    def test_down_after_being_up(self) -> None:
        """
        A failed poll after a good one: DOWN with the error and when the server
        was last seen; the last known numbers stay, marked stale, without rates.
        """
        seen = good(1.0, health())
        view = build_view(URL, failed(5.0, "connection refused"), seen, None)
        self.assertFalse(view.up)
        self.assertTrue(view.stale)
        self.assertEqual(view.status, "DOWN")
        self.assertEqual(view.error, "connection refused")
        self.assertEqual(view.last_seen_wall, seen.wall)
        self.assertEqual(view.health.get("pid"), 4242)
        self.assertEqual(view.rates, Rates())

    def test_down_from_the_start(self) -> None:
        """
        A server never reached: DOWN, nothing last seen, no numbers.
        """
        view = build_view(URL, failed(1.0, "no answer within 5s"), None)
        self.assertEqual(view.status, "DOWN")
        self.assertFalse(view.stale)
        self.assertIsNone(view.last_seen_wall)
        self.assertIsNone(view.health.get("pid"))


class TrackerTests(TestCase):
    """
    L{Tracker} keeps the good polls that rates and the DOWN screen need.
    """

    def test_rates_from_consecutive_polls(self) -> None:
        """
        The second good poll gets rates against the first.
        """
        tracker = Tracker(URL)
        self.assertIsNone(tracker.update(good(0.0, health(processed=100))).rates.processed)
        self.assertEqual(tracker.update(good(2.0, health(processed=104, uptime=62.0))).rates.processed, 2.0)

    def test_survives_an_outage_and_a_comeback(self) -> None:
        """
        Up, DOWN, DOWN, up again (same process): DOWN keeps the last-seen time
        of the last good poll, and the comeback's rates span the outage.
        """
        tracker = Tracker(URL)
        tracker.update(good(0.0, health(processed=100)))
        first_down = tracker.update(failed(1.0))
        second_down = tracker.update(failed(2.0, "no answer within 1s"))
        back = tracker.update(good(4.0, health(processed=120, uptime=64.0)))
        self.assertEqual(first_down.last_seen_wall, second_down.last_seen_wall)
        self.assertEqual(second_down.error, "no answer within 1s")
        self.assertTrue(back.up)
        self.assertEqual(back.status, "ok")
        self.assertEqual(back.rates.processed, 5.0)

    def test_comeback_as_a_new_process(self) -> None:
        """
        When the server comes back as a new process, its first poll has no rates.
        """
        tracker = Tracker(URL)
        tracker.update(good(0.0, health(pid=1)))
        tracker.update(failed(1.0))
        back = tracker.update(good(2.0, health(pid=2, processed=0, uptime=0.5)))
        self.assertEqual(back.health.get("pid"), 2)
        self.assertEqual(back.rates, Rates())


class RenderTests(TestCase):
    """
    L{render} shows the view; checked as plain text.
    """

    def test_up(self) -> None:
        """
        A healthy server: status, identity, numbers, rates and every upstream.
        """
        tracker = Tracker(URL)
        tracker.update(good(0.0, health(processed=100)))
        text = text_of(render(tracker.update(good(2.0, health(processed=107, uptime=62.0))), interval=2.0))
        for expected in (
            " OK ",
            "v0.1.0",
            "proxy",
            "4242",
            "1m 02s",
            "52.0 MiB",
            "3 / 50",
            "5 / 10",
            "107",
            "3.50/s",
            "12.2 ms",
            "https://n8n.example:443/webhook/chat",
            "open",
            "connect: refused",
            "client left",
            "every 2s",
        ):
            self.assertIn(expected, text)

    def test_workers_section_and_server_rates(self) -> None:
        """
        --workers 2: each poll answered by another worker; the chat counts and
        their rate are the server's totals, a row per worker, and the state.
        """

        def of_worker(pid: int, processed: int, total: int) -> dict[str, Any]:
            answer = health(processed=processed, pid=pid)
            answer["state"] = {"backend": "workers", "shared": True, "fallbacks_total": 0}
            answer["server"] = {
                "totals": {"queue": {"processed_total": total}},
                "workers": {
                    "0": {**health(pid=501, processed=total - 40), "status": "ok"},
                    "1": {**health(pid=502, processed=40), "status": "degraded"},
                },
            }
            return answer

        tracker = Tracker(URL)
        tracker.update(good(0.0, of_worker(501, 30, 200)))
        view = tracker.update(good(2.0, of_worker(502, 40, 210)))
        self.assertEqual(view.rates.processed, 5.0)
        text = text_of(render(view, interval=2.0))
        for expected in (
            "Workers (2",
            "501",
            "502",
            "degraded",
            "170",
            "210",
            "Chat requests (all workers)",
            "workers",
        ):
            self.assertIn(expected, text)

    def test_streams_and_websockets_panels(self) -> None:
        """
        Streams (in flight, total, each ending by cause) and /chat WebSockets (open, opened) as health reports them.
        """
        data = health()
        data["streams"] = {"in_flight": 2, "total": 7, "endings": {"complete": 5, "client_left": 1}}
        data["websockets"] = {"open": 3, "opened_total": 11}
        text = text_of(render(Tracker(URL).update(good(0.0, data))))
        for expected in ("Streams", "ended: complete", "ended: client_left", "WebSockets (/chat)", "opened"):
            self.assertIn(expected, text)
        lines = text.splitlines()
        self.assertTrue(any("in flight" in line and " 2 " in line + " " for line in lines))
        self.assertTrue(any("opened" in line and "11" in line for line in lines))

    def test_down_with_last_known_numbers(self) -> None:
        """
        A server that went away: DOWN, the error, when it was last seen, and the
        last known numbers marked as such.
        """
        tracker = Tracker(URL)
        tracker.update(good(0.0, health()))
        text = text_of(render(tracker.update(failed(30.0, "connection refused"))))
        self.assertIn("DOWN", text)
        self.assertIn("connection refused", text)
        self.assertIn("last seen", text)
        self.assertIn("(30s ago)", text)
        self.assertIn("last known", text)

    def test_never_reached(self) -> None:
        """
        A server never reached: only the DOWN header.
        """
        text = text_of(render(Tracker(URL).update(failed(0.0, "connection refused"))))
        self.assertIn("DOWN", text)
        self.assertIn("never reached", text)
        self.assertNotIn("Upstreams", text)


class Answers(Resource):
    """
    Answers GETs with the next of C{bodies} (status 200); the last one again
    once they run out.
    """

    isLeaf = True

    def __init__(self, *bodies: bytes) -> None:
        super().__init__()
        self.bodies = list(bodies)

    def render_GET(self, request: Request) -> bytes:
        return self.bodies.pop(0) if len(self.bodies) > 1 else self.bodies[0]


def client_for(resource: Resource, clock: Clock | None = None) -> HealthClient:
    return HealthClient(clock or Clock(), 5.0, user_agent="t", agent=RequestTraversalAgent(resource))


class RunOnceTests(TestCase):
    """
    C{inkflow monitor --once [--json]}.
    """

    def test_json_snapshot(self) -> None:
        """
        --once --json prints the server's health object as JSON and exits 0.
        """
        out, err = io.StringIO(), io.StringIO()
        client = client_for(Answers(json.dumps(health()).encode()))
        self.assertEqual(self.successResultOf(run_once(client, URL, True, out, err)), 0)
        self.assertEqual(json.loads(out.getvalue()), health())
        self.assertEqual(err.getvalue(), "")

    def test_dashboard_snapshot(self) -> None:
        """
        --once alone prints one frame of the dashboard.
        """
        out, err = io.StringIO(), io.StringIO()
        client = client_for(Answers(json.dumps(health()).encode()))
        self.assertEqual(self.successResultOf(run_once(client, URL, False, out, err)), 0)
        self.assertIn("Upstreams", out.getvalue())

    def test_unreachable(self) -> None:
        """
        A server that cannot be reached: exit 1, nothing on stdout, one line on stderr.
        """
        out, err = io.StringIO(), io.StringIO()
        client = HealthClient(Clock(), 5.0, user_agent="t", agent=RefusingAgent())
        self.assertEqual(self.successResultOf(run_once(client, URL, True, out, err)), 1)
        self.assertEqual(out.getvalue(), "")
        self.assertEqual(err.getvalue(), f"inkflow monitor: cannot read {URL}: connection refused\n")


class LiveMonitorTests(TestCase):
    """
    L{LiveMonitor}: a poll every interval, each redrawn, until stopped.
    """

    def test_polls_every_interval_and_shows_rates(self) -> None:
        """A poll at once and one per interval; the second frame has rates; stop ends it."""
        clock = Clock()
        resource = Answers(json.dumps(health(processed=100)).encode(), json.dumps(health(processed=130)).encode())
        out = io.StringIO()
        console = Console(file=out, width=160, color_system=None, force_terminal=True)
        live = LiveMonitor(clock, client_for(resource, clock), URL, 1.0, console)
        done = live.start()
        self.assertIn("100", out.getvalue())
        clock.advance(1.0)
        self.assertIn("130", out.getvalue())
        self.assertIn("30.00/s", out.getvalue())
        self.assertNoResult(done)
        live.stop()
        self.successResultOf(done)
        before = out.getvalue()
        clock.advance(5.0)
        self.assertEqual(out.getvalue(), before)


class CommandLineTests(TestCase):
    """
    L{cli.main}: the monitor through the console script, and argument errors.
    """

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        return cli.main(list(argv)), out.getvalue(), err.getvalue()

    def test_bad_arguments(self) -> None:
        """
        Bad arguments: exit 2 with one line naming the problem, no traceback.
        """
        cases = [
            (["monitor", "--json"], "--json needs --once"),
            (["monitor", "--interval", "0"], "--interval must be a number of seconds greater than 0"),
            (["monitor", "--interval", "soon"], "--interval must be"),
            (["monitor", "--url", "ftp://x/"], "--url must be an http:// or https:// URL"),
            (["monitor", "--frobnicate"], "option --frobnicate not recognized"),
            (["watchdog", "--failures", "0", "--", sys.executable], "--failures must be a whole number"),
            (["watchdog", "--min-restart-delay", "5", "--max-restart-delay", "1", "--", sys.executable], "max-restart"),
            (["watchdog"], "no COMMAND to run"),
            (["watchdog", "--", "/no/such/inkflow-test-command"], "command not found"),
            (["frobnicate"], "Unknown command: frobnicate"),
            ([], "missing command"),
        ]
        for argv, message in cases:
            code, _, err = self.run_cli(*argv)
            self.assertEqual(code, 2, argv)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn(message, err)
            self.assertNotIn("Traceback", err)

    def test_help(self) -> None:
        """
        --help at each level prints usage and exits 0.
        """
        for argv, expected in (
            ([], "Usage: inkflow COMMAND"),
            (["monitor"], "Usage: inkflow monitor"),
            (["watchdog"], "Usage: inkflow watchdog"),
        ):
            code, out, _ = self.run_cli(*argv, "--help")
            self.assertEqual(code, 0)
            self.assertIn(expected, out)
