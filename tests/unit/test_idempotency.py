"""
Tests for L{inkflow.web.idempotency}: the key and the fingerprint.  The store
is tested in test_state_memory and test_state_contract, the chat wrapper in
test_state_chat.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from inkflow.chat import ChatBody, UploadedFile
from inkflow.errors import ApiError
from inkflow.web.idempotency import fingerprint, parse_key


class KeyTests(TestCase):
    """
    L{parse_key}: 1-128 of A-Z a-z 0-9 _ - . :
    """

    def test_valid(self) -> None:
        """Absent is None; a valid key is returned as is."""
        self.assertIsNone(parse_key(None))
        self.assertEqual(parse_key([b"a-Z_0.9:x"]), "a-Z_0.9:x")
        self.assertEqual(parse_key([b"k" * 128]), "k" * 128)

    def test_invalid(self) -> None:
        """Empty, too long, other characters, non-ASCII or two keys: 400 invalid_idempotency_key."""
        for values in ([b""], [b"k" * 129], [b"a b"], [b"a/b"], ["מפתח".encode()], [b"a", b"b"]):
            with self.assertRaises(ApiError) as raised:
                parse_key(values)
            self.assertEqual((raised.exception.status, raised.exception.code), (400, "invalid_idempotency_key"))

    def test_fingerprint(self) -> None:
        """The same message is the same fingerprint; another session, text or file is not."""
        a = fingerprint(ChatBody({"chatInput": "hi", "sessionId": "s"}), "chatInput", "sessionId")
        self.assertEqual(a, fingerprint(ChatBody({"chatInput": "hi", "sessionId": "s"}), "chatInput", "sessionId"))
        self.assertNotEqual(a, fingerprint(ChatBody({"chatInput": "ho", "sessionId": "s"}), "chatInput", "sessionId"))
        self.assertNotEqual(a, fingerprint(ChatBody({"chatInput": "hi", "sessionId": "t"}), "chatInput", "sessionId"))
        self.assertEqual(a, fingerprint(ChatBody({"message": "hi", "sessionId": "s"}), "chatInput", "sessionId"))
        other_metadata = ChatBody({"chatInput": "hi", "sessionId": "s", "metadata": {"page": "/b"}})
        self.assertNotEqual(a, fingerprint(other_metadata, "chatInput", "sessionId"))

    def test_fingerprint_covers_the_bytes_of_each_file(self) -> None:
        """The same file name and size with other bytes is another fingerprint; the same bytes the same."""

        def with_file(digest: str) -> str:
            upload = UploadedFile("/nowhere", "a.png", "image/png", 3, sha256=digest)
            return fingerprint(ChatBody({"chatInput": "hi"}, [upload]), "chatInput", "sessionId")

        self.assertEqual(with_file("aa" * 32), with_file("aa" * 32))
        self.assertNotEqual(with_file("aa" * 32), with_file("bb" * 32))
