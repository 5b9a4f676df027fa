"""
InkFlow's site: settings, clock, the connection registry (for the limit,
health and the cleanup loop) and drain: close the idle connections, let the
busy ones close after their response, and wait until all are gone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.web import http, server
from twisted.web.resource import IResource

from inkflow.web.channel import InkFlowChannel
from inkflow.web.request import HeadCheck, InkFlowRequest, SinkChooser

if TYPE_CHECKING:
    from inkflow.settings import Settings

__all__ = ["InkFlowChannel", "InkFlowRequest", "InkFlowSite"]


class InkFlowSite(server.Site):
    """
    The site: settings, clock, connection registry, and the choice of body
    sink per route.
    """

    requestFactory = InkFlowRequest
    protocol = InkFlowChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        settings: Settings,
        clock: IReactorTime,
        sink_for: SinkChooser,
        on_request: Callable[[InkFlowRequest], None] | None = None,
        admit_head: HeadCheck | None = None,
    ) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False, timeout=None)
        self.displayTracebacks = False
        self.settings = settings
        self.clock = clock
        self.sink_for = sink_for
        self.admit_head = admit_head
        self.on_request = on_request
        self.channels: set[InkFlowChannel] = set()
        #: Open connections within --max-connections (the others are being refused).
        self.admitted = 0
        self.connections_rejected = 0
        self.timeouts_total = 0
        self.draining = False
        self._all_gone: list[defer.Deferred[None]] = []

    def log(self, request: http.Request) -> None:
        if self.on_request is not None:
            self.on_request(request)  # type: ignore[arg-type]

    def channel_gone(self, channel: InkFlowChannel) -> None:
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
