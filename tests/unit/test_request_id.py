"""
Tests for L{inkflow.chat.new_request_id}: unguessable ids drawn from the OS's
random source in batches.
"""

from __future__ import annotations

import os
import re
from unittest import mock

from twisted.trial.unittest import TestCase

from inkflow import chat

HEX32 = re.compile(r"[0-9a-f]{32}")


class NewRequestIdTests(TestCase):
    """
    Tests for L{chat.new_request_id}.
    """

    def test_shape_and_uniqueness(self) -> None:
        """
        Ids are 32 hex digits (like C{uuid4().hex}) and never repeat, across
        several batches of random bytes.
        """
        ids = [chat.new_request_id() for _ in range(1000)]
        for value in ids:
            self.assertRegex(value, HEX32)
        self.assertEqual(len(set(ids)), len(ids))

    def test_one_read_per_batch(self) -> None:
        """
        The OS's random source is read once per 256 ids, not once per id.
        """
        chat._forget_random()
        with mock.patch.object(chat.os, "urandom", wraps=os.urandom) as urandom:
            for _ in range(256):
                chat.new_request_id()
            self.assertEqual(urandom.call_count, 1)
            chat.new_request_id()
            self.assertEqual(urandom.call_count, 2)

    def test_forgotten_after_fork(self) -> None:
        """
        After a fork the child draws fresh bytes: it never repeats its
        parent's next ids.
        """
        chat.new_request_id()
        saved = (chat._random, chat._random_at)
        parent_next = [chat.new_request_id() for _ in range(3)]
        chat._random, chat._random_at = saved
        chat._forget_random()  # what os.register_at_fork runs in the child
        child_next = [chat.new_request_id() for _ in range(3)]
        self.assertFalse(set(parent_next) & set(child_next))
