"""
The C{--workers} parent's side of the state socket
(L{inkflow.state.workers.StateServer}), one connection per worker, driven by
calling its responders on string transports: a worker that dies or whose
request leaves never keeps a key claimed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from inkflow.state.base import StateConfig, outcome_to_json
from inkflow.state.memory import MemoryState
from inkflow.state.workers import BigBytes, StateServer, StateServerFactory


class ParentTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryState(self.clock, StateConfig())
        self.factory = StateServerFactory(self.store, self.clock)

    def worker(self) -> StateServer:
        conn = self.factory.buildProtocol(None)
        conn.makeConnection(StringTransport())
        return conn

    def awaited(self, conn: StateServer, ticket: int) -> dict[str, Any]:
        d: Deferred[dict[str, Any]] = conn.await_key(ticket)
        return self.successResultOf(d)

    def test_a_dead_leader_hands_its_key_to_a_waiter(self) -> None:
        """The leading worker's connection drops: a waiting worker is woken to lead."""
        a, b = self.worker(), self.worker()
        self.assertEqual(a.claim("o", "k", "fp")["kind"], "lead")
        ticket = b.claim("o", "k", "fp")["ticket"]
        a.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.awaited(b, ticket), {"wake": {"kind": "lead"}})

    def test_woken_to_lead_then_dead_frees_the_key(self) -> None:
        """A worker woken to lead that dies before it asked for the wake: the key is free again."""
        a, b, c = self.worker(), self.worker(), self.worker()
        a.claim("o", "k", "fp")
        b.claim("o", "k", "fp")
        a.finish("o", "k", outcome_to_json(None))  # b now leads, before it knows
        b.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(c.claim("o", "k", "fp")["kind"], "lead")

    def test_woken_to_lead_while_leaving_frees_the_key(self) -> None:
        """The lead and the waiter's leave cross: nobody holds the key, the next waiter leads."""
        a, b, c = self.worker(), self.worker(), self.worker()
        a.claim("o", "k", "fp")
        ticket_b = b.claim("o", "k", "fp")["ticket"]
        ticket_c = c.claim("o", "k", "fp")["ticket"]
        a.finish("o", "k", outcome_to_json(None))  # b leads
        self.awaited(b, ticket_b)  # the answer went, but b's request had left
        b.leave(ticket_b)
        self.assertEqual(self.awaited(c, ticket_c), {"wake": {"kind": "lead"}})

    def test_a_leader_that_finishes_is_not_released_by_a_late_leave(self) -> None:
        """A worker that led and finished: a stray leave for its old ticket changes nothing."""
        a, b = self.worker(), self.worker()
        a.claim("o", "k", "fp")
        ticket = b.claim("o", "k", "fp")["ticket"]
        a.finish("o", "k", outcome_to_json(None))
        self.awaited(b, ticket)
        b.finish("o", "k", {"kind": "answer", "status": 200, "body": "e30=", "headers": []})
        b.leave(ticket)
        self.assertEqual(a.claim("o", "k", "fp")["kind"], "replay")

    def test_big_bytes_split_and_joined(self) -> None:
        """BigBytes: 200,000 bytes go as four AMP values and come back whole."""
        value = bytes(range(256)) * 782
        strings: dict[bytes, bytes] = {}
        BigBytes().toBox(b"text", strings, {"text": value}, None)
        self.assertEqual(sorted(strings), [b"text", b"text.2", b"text.3", b"text.4"])
        self.assertTrue(all(len(v) <= 0xFFFF for v in strings.values()))
        objects: dict[str, Any] = {}
        BigBytes().fromBox(b"text", strings, objects, None)
        self.assertEqual(objects["text"], value)
