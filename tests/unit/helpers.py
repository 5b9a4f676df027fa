"""
Small helpers shared by the unit tests.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from inkflow.chat import ChatBody

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    """
    The cyclic garbage collector off: what is freed meanwhile is freed by
    reference counting alone (a test of "no reference cycle left").
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def temp_path(test: TestCase) -> str:
    """
    A fresh path (not yet created) in a private temp folder removed after
    C{test}; unlike C{TestCase.mktemp}, never inside the checkout under pytest.
    """
    folder = tempfile.mkdtemp(prefix="inkflow-test-")
    test.addCleanup(shutil.rmtree, folder, True)
    return folder + "/p"


def pinned(reason: str) -> Callable[[F], F]:
    """
    Mark a test that pins a finding not yet fixed: it must fail.

    Under pytest, C{xfail(strict=True)} (a pass is an error); under trial,
    C{todo} (an expected failure).  The fix removes the marker.
    """

    def mark(test: F) -> F:
        if "_pytest" in sys.modules:
            import pytest

            return cast(F, pytest.mark.xfail(strict=True, reason=reason)(test))
        test.todo = reason  # type: ignore[attr-defined]
        return test

    return mark


class FakeRequest:
    """
    The part of a chat request the idempotency wrapper touches: the
    C{Idempotency-Key} header, the parsed body, the response code and headers.
    """

    def __init__(self, key: bytes | None, fields: dict[str, Any] | None = None) -> None:
        self.requestHeaders = Headers()
        if key is not None:
            self.requestHeaders.setRawHeaders(b"Idempotency-Key", [key])
        self.responseHeaders = Headers()
        self.chat_body: ChatBody | None = ChatBody(fields or {"chatInput": "hi", "sessionId": "s"})
        self.code = 200

    def getHeader(self, key: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(key)
        return values[0] if values else None

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders.setRawHeaders(name, [value])

    def setResponseCode(self, code: int) -> None:
        self.code = code
