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

from twisted.internet.interfaces import IDelayedCall, IReactorTime, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http

from inkflow.errors import ApiError
from inkflow.web import twisted_hooks
from inkflow.web.request import LINGER_SECONDS, OVER_LIMIT_TIMEOUT
from inkflow.web.responses import raw_error_response
from inkflow.web.state import request_state

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
    (every body byte must follow the last within C{--body-timeout}, and the
    whole body arrive by a deadline from the chosen sink's limit at
    L{MIN_BODY_RATE}), C{busy} (the request is being answered: no deadline
    here, the route has its own).

    In every state, a client that stops reading its answers (the transport
    pauses the channel) is aborted after C{--write-timeout} without
    progress, and pipelined requests wait, unread, until the answer before
    them has left the send buffer.  Every close that may not complete is
    followed by an abort.
    """

    site: InkFlowSite
    over_limit = False
    refused = False
    _dropping = False

    def __init__(self) -> None:
        super().__init__()
        self.state = "head"
        self._deadline: IDelayedCall | None = None
        self._progress: IDelayedCall | None = None
        self._write_timer: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None
        self._holding = False
        self._in_head = False
        self._hosts = 0
        self._body_started = 0.0
        self._body_received = 0
        self.clock: IReactorTime | None = None

    # -- lifetime -----------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        self.clock = site.clock
        # Only admitted connections count: one already answered 503 (and
        # closing) must not keep a newcomer out.
        self.over_limit = site.connections.opened(self, site.settings.max_connections)
        # A connection over the limit gets one short chance to say what it
        # wants: under a flood of slow clients it must not hold its file
        # descriptor for the whole header timeout.
        self._arm(
            min(site.settings.header_timeout, OVER_LIMIT_TIMEOUT) if self.over_limit else site.settings.header_timeout
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for call in (self._deadline, self._progress, self._write_timer, self._abort_call):
            self._cancel(call)
        self._deadline = self._progress = self._write_timer = self._abort_call = None
        try:
            super().connectionLost(reason)
        finally:
            self.site.connections.gone(self)

    # -- reading ----------------------------------------------------------------

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
        if self._in_head:
            if line[:1] in (b" ", b"\t"):
                # obs-fold: a strict front proxy reads this head differently.
                twisted_hooks.respond_bad_request(self)
                return
        elif line:
            self._in_head = True  # the request line; headers follow
            if self.state == "idle":
                self.state = "head"
                self._arm(self.site.settings.header_timeout)
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
            # Twisted ignores "identity" and reads the body as the next request.
            twisted_hooks.respond_bad_request(self)
            return False
        if name == b"host":
            self._hosts += 1
            if self._hosts > 1:
                twisted_hooks.respond_bad_request(self)
                return False
        return bool(super().headerReceived(line))

    def rawDataReceived(self, data: bytes) -> None:
        if self._dropping:
            return
        if self.state == "body" and data:
            self._body_received += len(data)
            if self._too_slow():
                self._expired()
                return
            self._arm_progress()
        super().rawDataReceived(data)

    def _too_slow(self) -> bool:
        """
        Whether the body is behind L{MIN_BODY_RATE} (after a grace of
        C{--header-timeout}): the overall deadline's rule applied as the bytes
        come, so a trickle of one byte every few seconds is cut in seconds,
        not at the end of a deadline sized for the largest body.
        """
        if self.clock is None:
            return False
        late = self.clock.seconds() - self._body_started - self.site.settings.header_timeout
        return late > 0 and self._body_received < late * MIN_BODY_RATE

    def allHeadersReceived(self) -> None:
        hosts, self._hosts, self._in_head = self._hosts, 0, False
        if hosts == 0 and twisted_hooks.request_version(self) == b"HTTP/1.1":
            twisted_hooks.respond_bad_request(self)
            return
        super().allHeadersReceived()
        if self.refused:
            return
        self.state = "body"
        settings = self.site.settings
        self._body_started = self.clock.seconds() if self.clock is not None else 0.0
        self._body_received = 0
        limit = self._body_limit()
        self._arm(settings.header_timeout + limit / MIN_BODY_RATE)
        self._arm_progress()

    def _body_limit(self) -> int:
        """
        The most body bytes the chosen sink takes (the C{Content-Length} when
        smaller): what the overall body deadline is computed from.
        """
        limit = request_state(self.requests[-1]).body_limit if self.requests else None
        if limit is None:
            limit = self.site.settings.max_body_size
        if self.length:
            limit = min(limit, self.length)
        return limit

    def _arm_progress(self) -> None:
        if self.clock is None:
            return
        if self._progress is not None and self._progress.active():
            self._progress.reset(self.site.settings.body_timeout)
        else:
            self._progress = self.clock.callLater(self.site.settings.body_timeout, self._expired)

    def allContentReceived(self) -> None:
        if self._dropping:
            return  # refused from its head: never processed
        if not self.refused:
            self.state = "busy"
            self._cancel(self._deadline)
            self._cancel(self._progress)
            self._deadline = self._progress = None
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        closing = not self.persistent  # then twisted.web closes the connection itself
        if not closing and twisted_hooks.waiting_for_transport(self) and self.transport is not None:
            # The answer is still buffered: hold what the client pipelined
            # (and stop reading) until the transport drains.
            self._holding = True
            twisted_hooks.hold_input(self, True)
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        super().requestDone(request)
        if closing:
            return
        if self.site.connections.draining and not self.requests:
            self.loseConnection()
            return
        if not self.requests and self.transport is not None and not self.refused:
            self.state = "idle"
            self._arm(self.site.settings.idle_timeout)

    # -- writing ------------------------------------------------------------------

    def pauseProducing(self) -> None:
        """
        The transport's send buffer is full: the client has this long to read.
        """
        super().pauseProducing()
        if self.clock is not None and (self._write_timer is None or not self._write_timer.active()):
            self._write_timer = self.clock.callLater(self.site.settings.write_timeout, self._write_expired)

    def resumeProducing(self) -> None:
        """
        The client read: progress.  Requests held behind the answer go on.
        """
        self._cancel(self._write_timer)
        self._write_timer = None
        super().resumeProducing()
        if self._holding:
            self._holding = False
            twisted_hooks.hold_input(self, False)
            self.dataReceived(b"")  # parse what waited

    def _write_expired(self) -> None:
        self._write_timer = None
        self.site.connections.timeouts_total += 1
        log.info("Client did not read its answer in time; aborting the connection")
        self._abort_now()

    # -- deadlines ------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        if self.clock is None:
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.reset(seconds)
        else:
            self._deadline = self.clock.callLater(seconds, self._expired)

    def _expired(self) -> None:
        self._cancel(self._deadline)
        self._cancel(self._progress)
        self._deadline = self._progress = None
        if self.state == "idle":
            log.debug("Closing idle keep-alive connection")
            self.loseConnection()
            return
        if self.state in ("head", "body"):
            request_id = request_state(self.requests[-1]).request_id if self.requests else None
            if self.over_limit:
                # Cut for the connection limit, not for slowness: the contract's
                # answer over the limit is 503 busy.
                self.site.connections.connections_rejected += 1
                error = ApiError.retry_later("busy", 5, "too many connections")
            else:
                self.site.connections.timeouts_total += 1
                log.info("Request {state} not received in time; answering 408", state=self.state)
                error = ApiError("request_timeout")
            self.refuse(
                raw_error_response(error, request_id, secure=self.secure), linger=OVER_LIMIT_TIMEOUT, drop_input=True
            )

    @property
    def secure(self) -> bool:
        """
        Whether this connection is TLS (C{--listen ssl:...}).
        """
        return ISSLTransport.providedBy(self.transport)

    def loseConnection(self) -> None:
        """
        Close after the send buffer drains; abort if it does not within
        C{--write-timeout}.
        """
        super().loseConnection()
        if self.clock is not None and (self._abort_call is None or not self._abort_call.active()):
            self._abort_call = self.clock.callLater(self.site.settings.write_timeout, self._abort_now)

    def _abort_now(self) -> None:
        self._abort_call = None
        if self.transport is not None:
            log.debug("Aborting a connection that did not close")
            self.transport.abortConnection()  # type: ignore[attr-defined]

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
        self._cancel(self._progress)
        self._deadline = self._progress = None
        self.transport.write(response)
        if self.clock is not None:
            self._abort_call = self.clock.callLater(linger, self._linger_over)

    def _linger_over(self) -> None:
        self._abort_call = None
        if self.transport is not None:
            self.transport.loseConnection()
            if self.clock is not None:
                self._abort_call = self.clock.callLater(LINGER_SECONDS, self._abort_now)

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        twisted.web's answer to a request it cannot parse (bad framing, bad
        headers) is a bare 400; InkFlow's is the contract's JSON.
        """
        if self.refused or self.transport is None:
            return
        request_id = request_state(self.requests[-1]).request_id if self.requests else None
        self.refuse(
            raw_error_response(ApiError("bad_request", "the request is malformed"), request_id, secure=self.secure),
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
        self._abort_now()

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()
