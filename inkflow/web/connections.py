"""
The connection registry: the open connections of the HTTP site, their
figures for health and the limit, the cleanup loop's view of the uploads in
flight, and drain (close the idle connections, let the busy ones close after
their response, and wait until all are gone).

Built by the composition root before the site, so that health, the cleanup
loop and drain can be handed it without waiting for the site.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from twisted.internet import defer

from inkflow.health import SiteStats

__all__ = ["Connection", "Connections", "SiteStats"]


class _Upload(Protocol):
    def upload_paths(self) -> list[str]: ...


class Connection(Protocol):
    """
    What the registry needs of a connection (L{inkflow.web.channel.InkFlowChannel}).
    """

    over_limit: bool

    @property
    def requests(self) -> Iterable[_Upload]: ...

    def close_when_idle(self) -> None: ...

    def abort(self) -> None: ...


class Connections:
    """
    The open connections.

    @ivar admitted: open connections within C{--max-connections} (the others
        are being refused).
    """

    def __init__(self) -> None:
        self.channels: set[Connection] = set()
        self.admitted = 0
        self.connections_rejected = 0
        self.timeouts_total = 0
        self.draining = False
        self._all_gone: list[defer.Deferred[None]] = []

    def stats(self) -> SiteStats:
        return SiteStats(self.admitted, self.connections_rejected, self.timeouts_total, self.draining)

    def opened(self, channel: Connection, limit: int) -> bool:
        """
        A connection opened: register it; return whether it is over C{limit}.
        """
        self.channels.add(channel)
        over = self.admitted >= limit
        if not over:
            self.admitted += 1
        return over

    def gone(self, channel: Connection) -> None:
        if channel in self.channels and not channel.over_limit:
            self.admitted -= 1
        self.channels.discard(channel)
        if not self.channels:
            waiting, self._all_gone = self._all_gone, []
            for d in waiting:
                d.callback(None)

    def active_upload_paths(self) -> set[str]:
        """
        Every temp file an open request still holds.
        """
        return {path for channel in self.channels for request in channel.requests for path in request.upload_paths()}

    def drain(self) -> defer.Deferred[None]:
        """
        Close idle connections, let busy ones finish their response and close;
        fires when every connection is gone.
        """
        self.draining = True
        for channel in list(self.channels):
            channel.close_when_idle()
        if not self.channels:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._all_gone.append(d)
        return d

    def abort_all(self) -> None:
        for channel in list(self.channels):
            channel.abort()
