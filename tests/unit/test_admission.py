"""
Tests for L{inkflow.web.admission}: the chat queue, the rate-limit key and the
client address.  Reactor-free: time is a L{Clock}.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from inkflow.errors import ApiError
from inkflow.web.admission import (
    DEFAULT_RETRY_AFTER,
    DRAINING_RETRY_AFTER,
    WAIT_WINDOW,
    ChatQueue,
    Slot,
    client_ip,
)
from inkflow.web.client_address import UNIX, request_client

QUEUE_KEYS = [
    "depth",
    "max",
    "in_flight",
    "max_concurrent",
    "processed_total",
    "rejected_total",
    "timed_out_total",
    "cancelled_total",
    "wait_ms_p50",
    "wait_ms_p95",
]


def slot_of(d: Deferred[Slot]) -> Slot:
    """
    The slot a Deferred has already fired with.
    """
    results: list[Slot] = []
    d.addCallback(results.append)
    assert results, "the acquire has not fired"
    return results[0]


class ChatQueueTests(TestCase):
    """
    L{ChatQueue}: concurrency gate plus bounded FIFO queue.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.queue = ChatQueue(max_concurrent=2, queue_size=2, queue_timeout=30.0, clock=self.clock)

    def assertBusy(self, d: Deferred[Any], retry_after: str | None = None) -> ApiError:
        error = self.failureResultOf(d, ApiError).value
        self.assertIsInstance(error, ApiError)
        self.assertEqual((error.status, error.code), (503, "busy"))
        self.assertIn("Retry-After", error.headers)
        self.assertGreaterEqual(int(error.headers["Retry-After"]), 1)
        if retry_after is not None:
            self.assertEqual(error.headers["Retry-After"], retry_after)
        return error

    def test_free_slot_fires_at_once(self) -> None:
        """
        An acquire with a free slot fires at once with a slot that waited 0 s.
        """
        slot = self.successResultOf(self.queue.acquire())
        self.assertEqual(slot.waited, 0.0)
        self.assertEqual(self.queue.in_flight, 1)
        self.assertEqual(self.queue.depth, 0)

    def test_overflow_rejected_at_once(self) -> None:
        """
        With 2 slots and 2 queue places, acquires 5 to 8 fail at once with
        503 busy and Retry-After while 2 run and 2 wait.
        """
        ds = [self.queue.acquire() for _ in range(8)]
        self.successResultOf(ds[0])
        self.successResultOf(ds[1])
        self.assertNoResult(ds[2])
        self.assertNoResult(ds[3])
        for d in ds[4:]:
            self.assertBusy(d, retry_after=str(int(DEFAULT_RETRY_AFTER)))
        snap = self.queue.snapshot()
        self.assertEqual((snap["in_flight"], snap["depth"], snap["rejected_total"]), (2, 2, 4))
        self.assertTrue(self.queue.full)

    def test_fifo_order(self) -> None:
        """
        Waiters get slots in the order they arrived.
        """
        queue = ChatQueue(max_concurrent=1, queue_size=5, queue_timeout=30.0, clock=self.clock)
        first = self.successResultOf(queue.acquire())
        order: list[int] = []
        slots: list[Slot] = []

        def granted(slot: Slot, i: int) -> None:
            order.append(i)
            slots.append(slot)

        for i in range(5):
            queue.acquire().addCallback(granted, i)
        first.release()
        while slots:
            slots.pop().release()
        self.assertEqual(order, [0, 1, 2, 3, 4])
        self.assertEqual(queue.processed_total, 6)

    def test_release_wakes_next_with_wait_time(self) -> None:
        """
        Releasing a slot hands it to the head of the queue, which learns how
        long it waited.
        """
        a = self.successResultOf(self.queue.acquire())
        self.successResultOf(self.queue.acquire())
        waiting = self.queue.acquire()
        self.clock.advance(1.5)
        self.assertNoResult(waiting)
        a.release()
        slot = self.successResultOf(waiting)
        self.assertEqual(slot.waited, 1.5)
        self.assertEqual((self.queue.in_flight, self.queue.depth), (2, 0))
        self.assertEqual(self.queue.processed_total, 1)

    def test_release_is_idempotent(self) -> None:
        """
        Releasing a slot twice frees it once.
        """
        a = self.successResultOf(self.queue.acquire())
        self.successResultOf(self.queue.acquire())
        a.release()
        a.release()
        self.assertTrue(a.released)
        self.assertEqual(self.queue.in_flight, 1)
        self.assertEqual(self.queue.processed_total, 1)

    def test_queue_timeout(self) -> None:
        """
        A waiter still queued after queue_timeout fails with 503 busy and is
        counted as timed out; its place is freed.
        """
        self.successResultOf(self.queue.acquire())
        self.successResultOf(self.queue.acquire())
        waiting = self.queue.acquire()
        self.clock.advance(29.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.1)
        error = self.assertBusy(waiting)
        self.assertIn("timed out", str(error))
        snap = self.queue.snapshot()
        self.assertEqual((snap["timed_out_total"], snap["rejected_total"], snap["depth"]), (1, 0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_admitted_waiter_timer_cancelled(self) -> None:
        """
        A waiter that got its slot is not timed out later.
        """
        a = self.successResultOf(self.queue.acquire())
        self.successResultOf(self.queue.acquire())
        waiting = self.queue.acquire()
        a.release()
        self.successResultOf(waiting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertEqual(self.queue.timed_out_total, 0)

    def test_cancel_while_queued_frees_place(self) -> None:
        """
        Cancelling a queued acquire (the client left) removes it from the
        queue at once: its place is free and no slot leaks to it.
        """
        a = self.successResultOf(self.queue.acquire())
        self.successResultOf(self.queue.acquire())
        gone = self.queue.acquire()
        staying = self.queue.acquire()
        self.assertBusy(self.queue.acquire())
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        self.assertEqual(self.queue.depth, 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        again = self.queue.acquire()
        self.assertNoResult(again)
        a.release()
        self.successResultOf(staying)
        self.assertNoResult(again)
        self.assertEqual(self.queue.in_flight, 2)
        self.assertEqual(self.queue.timed_out_total, 0)
        self.assertEqual(self.queue.snapshot()["cancelled_total"], 1)

    def test_cancel_after_grant_is_noop(self) -> None:
        """
        Cancelling an acquire that already fired keeps the slot held: the
        holder must release it.
        """
        d = self.queue.acquire()
        slot = self.successResultOf(d)
        d.cancel()
        self.assertEqual(self.queue.in_flight, 1)
        slot.release()
        self.assertEqual(self.queue.in_flight, 0)

    def test_zero_queue_size(self) -> None:
        """
        With no queue, a request beyond the slots is refused at once.
        """
        queue = ChatQueue(max_concurrent=1, queue_size=0, queue_timeout=30.0, clock=self.clock)
        self.successResultOf(queue.acquire())
        self.assertBusy(queue.acquire())

    def test_retry_after_follows_hold_time(self) -> None:
        """
        Once requests have finished, Retry-After estimates from how long a
        slot is held, between 1 s and queue_timeout.
        """
        for _ in range(2):
            slot = self.successResultOf(self.queue.acquire())
            self.clock.advance(4.0)
            slot.release()
        for _ in range(4):
            self.queue.acquire()
        # hold time 4 s, 2 ahead + 1, over 2 slots: 6 s
        self.assertBusy(self.queue.acquire(), retry_after="6")
        self.assertEqual(self.queue.retry_after(), 6.0)

        clock = Clock()
        slow = ChatQueue(max_concurrent=1, queue_size=0, queue_timeout=10.0, clock=clock)
        slot = self.successResultOf(slow.acquire())
        clock.advance(100)
        slot.release()
        self.successResultOf(slow.acquire())
        self.assertBusy(slow.acquire(), retry_after="10")

    def test_wait_percentiles(self) -> None:
        """
        wait_ms_p50 and wait_ms_p95 are nearest-rank percentiles of the
        recent waits, immediate admissions counting as 0 ms.
        """
        queue = ChatQueue(max_concurrent=1, queue_size=1, queue_timeout=1000.0, clock=self.clock)
        held = self.successResultOf(queue.acquire())  # waited 0 ms
        for ms in range(1, 100):  # then waits of 1..99 ms
            d = queue.acquire()
            self.clock.advance(ms / 1000.0)
            held.release()
            held = self.successResultOf(d)
        held.release()
        snap = queue.snapshot()
        self.assertAlmostEqual(snap["wait_ms_p50"], 49.0, places=3)
        self.assertAlmostEqual(snap["wait_ms_p95"], 94.0, places=3)
        self.assertEqual(snap["processed_total"], 100)

    def test_wait_window_is_bounded(self) -> None:
        """
        Only the last WAIT_WINDOW waits count.
        """
        queue = ChatQueue(max_concurrent=1, queue_size=1, queue_timeout=1000.0, clock=self.clock)
        held = self.successResultOf(queue.acquire())
        for _ in range(WAIT_WINDOW):
            d = queue.acquire()
            self.clock.advance(0.5)
            held.release()
            held = self.successResultOf(d)
        snap = queue.snapshot()
        self.assertEqual((snap["wait_ms_p50"], snap["wait_ms_p95"]), (500.0, 500.0))

    def test_empty_percentiles(self) -> None:
        """
        Before any request, the percentiles are 0.0.
        """
        snap = self.queue.snapshot()
        self.assertEqual((snap["wait_ms_p50"], snap["wait_ms_p95"]), (0.0, 0.0))

    def test_snapshot_shape(self) -> None:
        """
        snapshot() has exactly the contract's queue keys, with its types.
        """
        self.successResultOf(self.queue.acquire())
        snap = self.queue.snapshot()
        self.assertEqual(list(snap), QUEUE_KEYS)
        self.assertEqual(
            {k: v for k, v in snap.items() if not k.startswith("wait")},
            {
                "depth": 0,
                "max": 2,
                "in_flight": 1,
                "max_concurrent": 2,
                "processed_total": 0,
                "rejected_total": 0,
                "timed_out_total": 0,
                "cancelled_total": 0,
            },
        )
        self.assertIsInstance(snap["wait_ms_p50"], float)
        self.assertIsInstance(snap["wait_ms_p95"], float)

    def test_draining_refuses_new_work(self) -> None:
        """
        While draining, new acquires fail with 503 busy, but work in flight
        and already queued still completes.
        """
        a = self.successResultOf(self.queue.acquire())
        b = self.successResultOf(self.queue.acquire())
        queued = self.queue.acquire()
        self.queue.start_draining()
        self.assertTrue(self.queue.draining)
        self.assertTrue(self.queue.full)
        self.assertBusy(self.queue.acquire(), retry_after=str(int(DRAINING_RETRY_AFTER)))
        a.release()
        c = self.successResultOf(queued)
        b.release()
        c.release()
        self.assertBusy(self.queue.acquire())
        self.assertEqual(self.queue.rejected_total, 2)
        self.assertEqual(self.queue.processed_total, 3)

    def test_idle_fires_when_empty(self) -> None:
        """
        idle() fires at once when nothing is in flight or queued, else when
        the last slot is released and the queue is empty.
        """
        self.successResultOf(self.queue.idle())
        a = self.successResultOf(self.queue.acquire())
        b = self.successResultOf(self.queue.acquire())
        queued = self.queue.acquire()
        idle = self.queue.idle()
        a.release()
        b.release()
        self.assertNoResult(idle)
        self.successResultOf(queued).release()
        self.assertIsNone(self.successResultOf(idle))

    def test_idle_waits_for_slots_not_departed_waiters(self) -> None:
        """
        Waiters leaving by timeout or cancel do not make the queue idle while
        a slot is held; releasing it does.
        """
        queue = ChatQueue(max_concurrent=1, queue_size=2, queue_timeout=5.0, clock=self.clock)
        held = self.successResultOf(queue.acquire())
        timing_out = queue.acquire()
        self.clock.advance(1.0)
        cancelled = queue.acquire()
        idle = queue.idle()
        self.clock.advance(4.0)
        self.assertBusy(timing_out)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.assertNoResult(idle)
        held.release()
        self.assertIsNone(self.successResultOf(idle))

    def test_idle_cancellable(self) -> None:
        """
        A cancelled idle() Deferred is forgotten.
        """
        slot = self.successResultOf(self.queue.acquire())
        idle = self.queue.idle()
        idle.cancel()
        self.failureResultOf(idle, CancelledError)
        slot.release()
        self.successResultOf(self.queue.idle())

    def test_reentrant_release_in_callback(self) -> None:
        """
        A waiter that releases its slot inside its callback lets the next
        waiter in, and the counters stay consistent.
        """
        queue = ChatQueue(max_concurrent=1, queue_size=3, queue_timeout=5.0, clock=self.clock)
        held = self.successResultOf(queue.acquire())
        got: list[int] = []

        def granted(slot: Slot, i: int) -> None:
            got.append(i)
            slot.release()

        for i in range(3):
            queue.acquire().addCallback(granted, i)
        held.release()
        self.assertEqual(got, [0, 1, 2])
        self.assertEqual((queue.in_flight, queue.depth, queue.processed_total), (0, 0, 4))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_invalid_arguments(self) -> None:
        """
        Nonsense sizes are refused when the queue is built.
        """
        self.assertRaises(ValueError, ChatQueue, 0, 1, 1.0, self.clock)
        self.assertRaises(ValueError, ChatQueue, 1, -1, 1.0, self.clock)
        self.assertRaises(ValueError, ChatQueue, 1, 1, -1.0, self.clock)


class ClientIpTests(TestCase):
    """
    L{client_ip}: X-Forwarded-For believed only from trusted proxies.
    """

    trusted = ("10.0.0.0/8", "2001:db8:1::/48")

    def test_no_trusted_proxies_ignores_xff(self) -> None:
        """
        Without trusted proxies the peer is the client, whatever XFF says.
        """
        self.assertEqual(client_ip("203.0.113.5", ["1.2.3.4"], ()), "203.0.113.5")

    def test_untrusted_peer_ignores_xff(self) -> None:
        """
        A spoofed XFF from an untrusted peer is not believed.
        """
        self.assertEqual(client_ip("203.0.113.5", ["10.1.1.1, 1.2.3.4"], self.trusted), "203.0.113.5")

    def test_no_header(self) -> None:
        """
        A trusted peer without XFF is the client.
        """
        self.assertEqual(client_ip("10.0.0.2", None, self.trusted), "10.0.0.2")
        self.assertEqual(client_ip("10.0.0.2", [], self.trusted), "10.0.0.2")

    def test_trusted_peer_rightmost_untrusted(self) -> None:
        """
        Through a trusted proxy, the rightmost untrusted XFF entry is the
        client; anything the client put left of it is ignored.
        """
        self.assertEqual(client_ip("10.0.0.2", ["198.51.100.7"], self.trusted), "198.51.100.7")
        self.assertEqual(
            client_ip("10.0.0.2", ["6.6.6.6, 198.51.100.7, 10.0.0.9"], self.trusted),
            "198.51.100.7",
        )

    def test_spoofed_trusted_address_on_the_left(self) -> None:
        """
        A client claiming a trusted address left of its real one gains
        nothing.
        """
        self.assertEqual(client_ip("10.0.0.2", ["10.9.9.9, 198.51.100.7"], self.trusted), "198.51.100.7")

    def test_several_header_lines(self) -> None:
        """
        Several XFF header lines form one chain, in order.
        """
        self.assertEqual(
            client_ip("10.0.0.2", ["6.6.6.6", "198.51.100.7, 10.0.0.3"], self.trusted),
            "198.51.100.7",
        )

    def test_all_trusted(self) -> None:
        """
        When every hop is trusted, the leftmost one is the client.
        """
        self.assertEqual(client_ip("10.0.0.2", ["10.0.0.4, 10.0.0.3"], self.trusted), "10.0.0.4")

    def test_garbage_stops_the_walk(self) -> None:
        """
        A non-address entry ends the walk: the answer is the last trusted hop,
        never the forgeable value left of the garbage.
        """
        self.assertEqual(client_ip("10.0.0.2", ["6.6.6.6, unknown"], self.trusted), "10.0.0.2")
        self.assertEqual(client_ip("10.0.0.2", ["6.6.6.6, <script>, 10.0.0.3"], self.trusted), "10.0.0.3")
        self.assertEqual(client_ip("10.0.0.2", ["garbage, 198.51.100.7"], self.trusted), "198.51.100.7")
        self.assertEqual(client_ip("10.0.0.2", ["x" * 10_000], self.trusted), "10.0.0.2")

    def test_empty_entries_skipped(self) -> None:
        """
        Empty list items are skipped.
        """
        self.assertEqual(client_ip("10.0.0.2", [" , 198.51.100.7,, "], self.trusted), "198.51.100.7")

    def test_address_forms(self) -> None:
        """
        Ports, brackets, quotes and IPv4-mapped IPv6 are understood and the
        answer is canonical.
        """
        self.assertEqual(client_ip("10.0.0.2", ["198.51.100.7:4711"], self.trusted), "198.51.100.7")
        self.assertEqual(client_ip("10.0.0.2", ['"[2001:DB8::1]:443"'], self.trusted), "2001:db8::1")
        self.assertEqual(client_ip("::ffff:10.0.0.2", ["::ffff:198.51.100.7"], self.trusted), "198.51.100.7")
        self.assertEqual(client_ip("2001:db8:1::5", ["2001:db8:2::9"], self.trusted), "2001:db8:2::9")

    def test_single_address_trusted(self) -> None:
        """
        A bare address counts as a /32 trusted proxy.
        """
        self.assertEqual(client_ip("127.0.0.1", ["198.51.100.7"], ("127.0.0.1/32",)), "198.51.100.7")
        self.assertEqual(client_ip("127.0.0.2", ["198.51.100.7"], ("127.0.0.1/32",)), "127.0.0.2")

    def test_non_ip_peer(self) -> None:
        """
        A peer that is not an IP address (a UNIX socket) is returned as is.
        """
        self.assertEqual(client_ip("", ["198.51.100.7"], self.trusted), "")


class RequestClientTests(TestCase):
    """
    L{request_client}: the one reading of a request's client (chat route,
    WebSocket upgrade, idempotency scope), from its peer and headers.
    """

    def request(self, peer: object, forwarded: list[str] | None) -> object:
        headers = Headers({"X-Forwarded-For": forwarded} if forwarded else {})
        return SimpleNamespace(getClientAddress=lambda: peer, requestHeaders=headers)

    def test_tcp_peer_through_a_trusted_proxy(self) -> None:
        """A trusted peer's X-Forwarded-For names the client; an untrusted one's is ignored."""
        via_proxy = self.request(IPv4Address("TCP", "10.0.0.2", 4000), ["198.51.100.7"])
        self.assertEqual(request_client(via_proxy, ("10.0.0.0/8",)), "198.51.100.7")
        self.assertEqual(request_client(via_proxy, ()), "10.0.0.2")

    def test_unix_peer(self) -> None:
        """A unix: listener's peer is UNIX, believed only with --trusted-proxy unix."""
        local = self.request(UNIXAddress(b"/run/inkflow.sock"), ["198.51.100.7"])
        self.assertEqual(request_client(local, ()), UNIX)
        self.assertEqual(request_client(local, (UNIX,)), "198.51.100.7")


class RateLimitKeyTests(TestCase):
    """
    Rate-limit keys: which addresses count as one client.
    """

    def test_ipv6_is_keyed_by_its_64(self) -> None:
        """Two addresses of one IPv6 /64 share a bucket; IPv4 stays per address."""
        from inkflow.web.admission import rate_key

        self.assertEqual(rate_key("2001:db8:1:2::1"), rate_key("2001:db8:1:2:ffff::9"))
        self.assertNotEqual(rate_key("2001:db8:1:2::1"), rate_key("2001:db8:1:3::1"))
        self.assertEqual(rate_key("192.0.2.1"), "192.0.2.1")

    def test_trusted_unix_proxy_is_believed(self) -> None:
        """With --trusted-proxy unix, X-Forwarded-For from a unix: listener's peer is believed."""
        self.assertEqual(client_ip("unix", ["203.0.113.5"], ("unix",)), "203.0.113.5")
        self.assertEqual(client_ip("unix", ["203.0.113.5"], ()), "unix")
