"""
InkFlow's HTTP channel: deadlines, the connection limit, early refusals.

 - B{deadlines}: the request head must arrive within C{--header-timeout}, the
   body at a minimum rate, and an idle keep-alive connection is closed after
   C{--idle-timeout}.  An expired request is answered 408 before the close;
 - B{a connection limit that answers}: a connection over C{--max-connections}
   gets C{503 busy} with C{Retry-After} and C{Connection: close}, except for
   C{/api/health}, C{/api/ready} and the chat's CORS preflight
   (L{inkflow.web.request.always_answered});
 - B{a limit per client address} (C{--max-connections-per-ip}, keyed like the
   rate limit): counted when the connection opens (its peer is the client),
   or from each request's head when the peer is a trusted proxy; over it,
   C{503 too_many_connections_from_address} the same way.  The connection
   stays counted while it is open (kept alive, streaming, a WebSocket);
 - B{framing errors} get the contract's JSON 400, not twisted.web's bare one;
 - B{every refusal before the route} (these, a deadline's 408, the
   request's own 413 / 415 / 429) is written by L{InkFlowChannel.refusal},
   with the CORS headers the route's answers carry (an embed on a
   C{--cors-origin} reads it);
 - B{request targets} (RFC 9112 3.2): only visible ASCII (a DEL, a control or
   a byte over 0x7e is a JSON 400: Twisted lets 0x7f-0xb0 through); the
   absolute form (C{http://host/path}) is served like the origin form when
   its authority is the request's C{Host} (the server's own name), a JSON 400
   otherwise (InkFlow is not a proxy).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http

from inkflow.errors import ApiError
from inkflow.web import twisted_hooks
from inkflow.web.admission import rate_key
from inkflow.web.client_address import client_ip, is_trusted_peer, peer_host
from inkflow.web.request import LINGER_SECONDS, OVER_LIMIT_TIMEOUT, routing_line
from inkflow.web.responses import raw_error_response
from inkflow.web.state import request_state

if TYPE_CHECKING:
    from inkflow.web.site import InkFlowSite

__all__ = ["MIN_BODY_RATE", "InkFlowChannel", "origin_form"]

log = Logger()

#: Slowest accepted request body, in bytes per second, once the head is in.
MIN_BODY_RATE = 64 * 1024

#: Retry-After (seconds) of a connection over C{--max-connections-per-ip}.
ADDRESS_RETRY_AFTER = 5

#: How early (float rounding) a swept deadline still counts as reached.
_SLACK = 1e-6

#: A byte no request target may hold: anything but visible ASCII.
_NOT_VISIBLE = re.compile(rb"[^\x21-\x7e]")
#: An absolute-form target: scheme, authority, and the rest (path and query).
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
_DEFAULT_PORTS = {b"http": b"80", b"https": b"443"}


def _host_and_port(authority: bytes, scheme: bytes) -> tuple[bytes, bytes]:
    """
    An authority (C{host}, C{host:port}, C{[v6]:port}) as a lower-case host
    and a port (the scheme's default when none is given).
    """
    authority = authority.strip().lower()
    if authority.startswith(b"["):
        host, _, rest = authority.partition(b"]")
        host += b"]"
        port = rest[1:] if rest.startswith(b":") else b""
    elif authority.count(b":") == 1:
        host, _, port = authority.partition(b":")
    else:
        host, port = authority, b""
    return host, port or _DEFAULT_PORTS.get(scheme, b"")


def origin_form(line: bytes) -> tuple[bytes, tuple[bytes, bytes] | None] | None:
    """
    A request line with its target checked and, in the absolute form, turned
    into the origin form.

    @return: C{None} when the target is refused (a byte that is not visible
        ASCII, or an absolute form whose scheme is not http/https or that
        has no host or carries user information); else the line to parse
        and, for an absolute form, its scheme and authority (to be checked
        against C{Host} once the headers are in).  A line that is not three
        parts is returned as it is (Twisted's parser refuses it).
    """
    parts = line.split(b" ")
    if len(parts) != 3:
        return line, None
    method, target, version = parts
    if _NOT_VISIBLE.search(target):
        return None
    if target[:1] == b"/" or target == b"*":
        return line, None
    match = _ABSOLUTE.fullmatch(target)
    if match is None:
        return line, None  # not a form InkFlow serves: routed (and refused) as before
    scheme, authority, rest = match.group(1).lower(), match.group(2), match.group(3)
    if scheme not in _DEFAULT_PORTS or not authority or b"@" in authority:
        return None
    if not rest.startswith(b"/"):
        rest = b"/" + rest
    return b" ".join((method, rest, version)), (scheme, authority)


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
    #: Over C{--max-connections-per-ip} (only this connection's health
    #: requests are answered).
    over_address = False
    refused = False
    _dropping = False

    def __init__(self) -> None:
        super().__init__()
        self.state = "head"
        # The head/body/idle deadline and the body's progress deadline, as
        # clock times, checked by the site's sweep (one reactor timer for
        # every connection's deadlines, L{inkflow.web.sweep}).
        self._deadline: float | None = None
        self._progress: float | None = None
        self._write_timer: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None
        self._holding = False
        self._in_head = False
        self._hosts = 0
        self._absolute: tuple[bytes, bytes] | None = None
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
        # A peer that is not a trusted proxy is the client: count it now,
        # silent sockets included.  A proxy's requests are counted from their
        # heads (check_address).  A connection over its address's cap takes
        # no place within --max-connections while it is answered.
        host = self._peer_host()
        if not is_trusted_peer(host, site.settings.trusted_proxy):
            key = rate_key(client_ip(host, None, site.settings.trusted_proxy))
            self.over_address = not site.connections.claim(self, key, site.settings.connections_per_ip)
        self.over_limit = site.connections.opened(self, site.settings.max_connections, admit=not self.over_address)
        if self.over_limit:
            self.over_address = False
            site.connections.release_address(self)
        # A connection over a limit gets one short chance to say what it
        # wants: under a flood of slow clients it must not hold its file
        # descriptor for the whole header timeout.
        refused_soon = self.over_limit or self.over_address
        self._arm(
            min(site.settings.header_timeout, OVER_LIMIT_TIMEOUT) if refused_soon else site.settings.header_timeout
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        for call in (self._write_timer, self._abort_call):
            self._cancel(call)
        self._write_timer = self._abort_call = None
        try:
            super().connectionLost(reason)
        finally:
            self.site.connections.gone(self)

    def _peer_host(self) -> str:
        return peer_host(self.transport.getPeer() if self.transport is not None else None)

    def check_address(self, forwarded_for: Sequence[str] | None, always_answered: bool) -> None:
        """
        A request's head is in: check C{--max-connections-per-ip} for its
        client (through a trusted proxy, this request's client; the
        connection is counted under it from now on).

        @param always_answered: a health request, answered over the limit
            too (on a connection then closed after it).
        @raise ApiError: 503 C{too_many_connections_from_address}.
        """
        site = self.site
        if self.over_limit:
            return
        host = self._peer_host()
        if not self.over_address and is_trusted_peer(host, site.settings.trusted_proxy):
            key = rate_key(client_ip(host, forwarded_for, site.settings.trusted_proxy))
            self.over_address = not site.connections.claim(self, key, site.settings.connections_per_ip)
        if not self.over_address:
            return
        self.persistent = False
        site.connections.give_up_place(self)
        if not always_answered:
            site.connections.connections_rejected += 1
            raise ApiError.retry_later(
                "too_many_connections_from_address", ADDRESS_RETRY_AFTER, "too many connections from one address"
            )

    def is_idle(self) -> bool:
        """
        Between two requests of a kept-alive connection (for the per-address
        count: an idle connection makes room for its address's new one).
        """
        return self.state == "idle" and not self.requests and not self.refused

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
            checked = origin_form(line)
            if checked is None:
                twisted_hooks.respond_bad_request(self)
                return
            line, self._absolute = checked
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
        absolute, self._absolute = self._absolute, None
        if hosts == 0 and twisted_hooks.request_version(self) == b"HTTP/1.1":
            twisted_hooks.respond_bad_request(self)
            return
        if absolute is not None and not self._own_authority(*absolute):
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

    def _own_authority(self, scheme: bytes, authority: bytes) -> bool:
        """
        Whether an absolute-form target names this server: its authority is
        the request's C{Host} (or, without one, the address the client
        connected to).
        """
        host = (self.requests[-1].requestHeaders.getRawHeaders(b"Host") or [None])[0] if self.requests else None
        if host is None:
            local = self.transport.getHost() if self.transport is not None else None
            if not isinstance(local, (IPv4Address, IPv6Address)):
                return False
            address = f"[{local.host}]" if isinstance(local, IPv6Address) else local.host
            host = f"{address}:{local.port}".encode()
        return _host_and_port(authority, scheme) == _host_and_port(host, scheme)

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
        self._progress = due = self.clock.seconds() + self.site.settings.body_timeout
        self.site.sweep.schedule(self, due)

    def allContentReceived(self) -> None:
        if self._dropping:
            return  # refused from its head: never processed
        if not self.refused:
            self.state = "busy"
            self._disarm()
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
        self._deadline = due = self.clock.seconds() + seconds
        self.site.sweep.schedule(self, due)

    def _disarm(self) -> None:
        if self._deadline is not None or self._progress is not None:
            self._deadline = self._progress = None
            self.site.sweep.cancel(self)

    def swept(self) -> None:
        """
        The sweep reached this connection's slot: a deadline passed, or the
        next one is scheduled (a deadline moved later meanwhile).
        """
        if self.clock is None:
            return
        dues = [due for due in (self._deadline, self._progress) if due is not None]
        if not dues:
            return
        due = min(dues)
        if self.clock.seconds() + _SLACK >= due:
            self._expired()
        else:
            self.site.sweep.schedule(self, due)

    def _expired(self) -> None:
        self._disarm()
        if self.state == "idle":
            log.debug("Closing idle keep-alive connection")
            self.loseConnection()
            return
        if self.state in ("head", "body"):
            if self.over_limit:
                # Cut for the connection limit, not for slowness: the contract's
                # answer over the limit is 503 busy.
                self.site.connections.connections_rejected += 1
                error = ApiError.retry_later("busy", 5, "too many connections")
            elif self.over_address:
                self.site.connections.connections_rejected += 1
                error = ApiError.retry_later(
                    "too_many_connections_from_address", ADDRESS_RETRY_AFTER, "too many connections from one address"
                )
            else:
                self.site.connections.timeouts_total += 1
                log.info("Request {state} not received in time; answering 408", state=self.state)
                error = ApiError("request_timeout")
            self.refuse(self.refusal(error), linger=OVER_LIMIT_TIMEOUT, drop_input=True)

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

    def refusal(self, error: ApiError) -> bytes:
        """
        The whole answer C{error} to the request being read (its head or its
        body), given before its route runs: with its request id and the CORS
        headers its route's answers carry for the headers in so far (an
        embed on a C{--cors-origin} then reads the error, not an opaque
        network error).  Before a request line there is no request: neither.
        """
        if not self.requests:
            return raw_error_response(error, None, secure=self.secure)
        request = self.requests[-1]
        method, path = routing_line(self)
        cors = self.site.cors_headers(method, path, request.requestHeaders, self.secure)
        return raw_error_response(error, request_state(request).request_id, secure=self.secure, headers=cors)

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
        self._disarm()
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
        self.refuse(self.refusal(ApiError("bad_request", "the request is malformed")), linger=1.0, drop_input=True)

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
