"""
The chat route's streamed answers: headers, the commit, the relay and the
synthesized stream of a JSON answer.  Called from L{inkflow.web.routes};
the rules are in L{inkflow.n8n.stream}, the relay in L{inkflow.n8n.relay}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from inkflow.n8n.stream import MAX_STREAM_BYTES, STREAM_HEADERS, UPSTREAM_DROPPED, StreamRegistry, synthesize

__all__ = ["StreamAnswers"]


class StreamAnswers:
    """
    Answers streaming clients.

    @param observe_start: called with the seconds from the request's start
        to its first byte (time to first byte).
    @param observe_end: called with (cause, bytes, seconds) when a relayed
        stream ends.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        idle_timeout: float,
        stream_timeout: float,
        max_bytes: int = MAX_STREAM_BYTES,
        observe_start: Callable[[float], None] | None = None,
        observe_end: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.stream_timeout = stream_timeout
        self.max_bytes = max_bytes
        self.registry = StreamRegistry()
        self._observe_start = observe_start
        self._observe_end = observe_end

    def _headers(self, request: Any, started: float) -> None:
        request.setResponseCode(200)
        for name, value in STREAM_HEADERS:
            request.setHeader(name, value)
        if self._observe_start is not None:
            self._observe_start(self.clock.seconds() - started)

    async def relay(self, request: Any, start: Any, started: float) -> str:
        """
        Commit and relay n8n's stream (a L{inkflow.n8n.client.StreamStart});
        return how it ended.  Cancelling the wait is the client leaving.
        """
        from inkflow.n8n.relay import StreamRelay  # proxy mode only: keeps twisted.web.client out of start-up

        self._headers(request, started)
        relay = StreamRelay(
            request,
            start.body,
            self.clock,
            idle_timeout=self.idle_timeout,
            stream_timeout=self.stream_timeout,
            max_bytes=self.max_bytes,
            registry=self.registry,
            on_end=self._observe_end,
            request_id=getattr(request, "request_id", None),
        )
        try:
            cause = await relay.start()
        finally:
            # For the access log line, written when the request finishes.
            request.stream_seconds = self.clock.seconds() - started
        if cause == UPSTREAM_DROPPED:
            start.dropped("n8n dropped the stream")
        return cause

    def synthesized(self, request: Any, answer: Any, started: float) -> None:
        """
        Answer a JSON answer as begin / item / end lines.
        """
        self._headers(request, started)
        body = synthesize(answer, self.clock.seconds())
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
