"""
InkFlow's HTTP channel: deadlines, the connection limit, early refusals.

 - B{deadlines}: the request head must arrive within C{--header-timeout}, the
   body at a minimum rate, and an idle keep-alive connection is closed after
   C{--idle-timeout}.  An expired request is answered 408 before the close;
 - B{a connection limit that answers}: a connection over C{--max-connections}
   gets C{503 busy} with C{Retry-After} and C{Connection: close}, except for
   C{/api/health} and C{/api/ready};
 - B{framing errors} get the contract's JSON 400, not twisted.web's bare one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http

from inkflow.errors import ApiError
from inkflow.web.request import LINGER_SECONDS, OVER_LIMIT_TIMEOUT
from inkflow.web.responses import raw_error_response

if TYPE_CHECKING:
    from inkflow.web.site import InkFlowSite

__all__ = ["MIN_BODY_RATE", "InkFlowChannel"]

log = Logger()

#: Slowest accepted request body, in bytes per second, once the head is in.
MIN_BODY_RATE = 64 * 1024


class InkFlowChannel(http.HTTPChannel):
    """
    An HTTP channel with InkFlow's deadlines, connection limit and drain hooks.

    States: C{idle} (between requests: C{--idle-timeout}), C{head} (a request
    has started: its head must be in within C{--header-timeout}), C{body}
    (the body must keep a minimum rate), C{busy} (the request is being
    answered: no deadline here, the route has its own).
    """

    site: InkFlowSite
    over_limit = False
    refused = False
    _dropping = False

    def __init__(self) -> None:
        super().__init__()
        self.state = "head"
        self._deadline: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None
        self.clock: IReactorTime | None = None

    # -- lifetime -----------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        self.clock = site.clock
        site.channels.add(self)
        # Only admitted connections count: one already answered 503 (and
        # closing) must not keep a newcomer out.
        self.over_limit = site.admitted >= site.settings.max_connections
        if not self.over_limit:
            site.admitted += 1
        # A connection over the limit gets one short chance to say what it
        # wants: under a flood of slow clients it must not hold its file
        # descriptor for the whole header timeout.
        self._arm(
            min(site.settings.header_timeout, OVER_LIMIT_TIMEOUT) if self.over_limit else site.settings.header_timeout
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel(self._deadline)
        self._cancel(self._abort_call)
        self._deadline = self._abort_call = None
        try:
            super().connectionLost(reason)
        finally:
            self.site.channel_gone(self)

    # -- deadlines ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._dropping:
            return  # answered already; read and dropped until we close
        if self.state == "idle" and data:
            self.state = "head"
            self._arm(self.site.settings.header_timeout)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._dropping:
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self._dropping:
            return
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self.refused:
            return
        self.state = "body"
        length = self.length if self.length else self.site.settings.max_body_size
        self._arm(self.site.settings.header_timeout + min(length, self.site.settings.max_body_size) / MIN_BODY_RATE)

    def allContentReceived(self) -> None:
        if not self.refused:
            self.state = "busy"
            self._cancel(self._deadline)
            self._deadline = None
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        closing = not self.persistent  # then twisted.web closes the connection itself
        super().requestDone(request)
        if closing:
            return
        if self.site.draining and not self.requests:
            self.loseConnection()
            return
        if not self.requests and self.transport is not None and not self.refused:
            self.state = "idle"
            self._arm(self.site.settings.idle_timeout)

    def _arm(self, seconds: float) -> None:
        if self.clock is None:
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.reset(seconds)
        else:
            self._deadline = self.clock.callLater(seconds, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if self.state == "idle":
            log.debug("Closing idle keep-alive connection")
            self.loseConnection()
            return
        if self.state in ("head", "body"):
            request_id = getattr(self.requests[-1], "request_id", None) if self.requests else None
            if self.over_limit:
                # Cut for the connection limit, not for slowness: the contract's
                # answer over the limit is 503 busy.
                self.site.connections_rejected += 1
                error = ApiError.retry_later("busy", 5, "too many connections")
            else:
                self.site.timeouts_total += 1
                log.info("Request {state} not received in time; answering 408", state=self.state)
                error = ApiError("request_timeout")
            self.refuse(raw_error_response(error, request_id), linger=OVER_LIMIT_TIMEOUT, drop_input=True)

    # -- refusing and closing -------------------------------------------------

    def refuse(self, response: bytes, linger: float = LINGER_SECONDS, drop_input: bool = False) -> None:
        """
        Write C{response} (a complete HTTP response) and close the connection
        once the client stops sending, or after C{linger} seconds.

        @param drop_input: ignore everything the client sends from now on (for
            a request whose head is not complete).  Otherwise the body is still
            parsed, its bytes discarded by the request, and the connection is
            closed as soon as the body is complete: reading it lets the client
            see the answer instead of a reset.
        """
        if self.refused or self.transport is None:
            return
        self.refused = True
        self._dropping = drop_input
        self.state = "refused"
        self.persistent = False
        self._cancel(self._deadline)
        self._deadline = None
        self.transport.write(response)
        if self.clock is not None:
            self._abort_call = self.clock.callLater(linger, self._linger_over)

    def _linger_over(self) -> None:
        self._abort_call = None
        if self.transport is not None:
            self.transport.loseConnection()
            if self.clock is not None:
                self._abort_call = self.clock.callLater(LINGER_SECONDS, self.forceAbortClient)

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        twisted.web's answer to a request it cannot parse (bad framing, bad
        headers) is a bare 400; InkFlow's is the contract's JSON.
        """
        if self.refused or self.transport is None:
            return
        request_id = getattr(self.requests[-1], "request_id", None) if self.requests else None
        self.refuse(
            raw_error_response(ApiError("bad_request", "the request is malformed"), request_id),
            linger=1.0,
            drop_input=True,
        )

    def close_when_idle(self) -> None:
        """
        For drain: close now if no request is open, else after its response.
        """
        self.persistent = False
        if not self.requests and self.transport is not None:
            self.loseConnection()

    def abort(self) -> None:
        if self.transport is not None:
            self.forceAbortClient()

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()
