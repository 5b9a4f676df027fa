"""
InkFlow's site: settings, clock, the connection registry (for the limit,
health, the cleanup loop and drain: L{inkflow.web.connections}), and the
choice of body sink per route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.web import http, server
from twisted.web.resource import IResource

from inkflow.web.channel import InkFlowChannel
from inkflow.web.connections import Connections
from inkflow.web.request import HeadCheck, InkFlowRequest, SinkChooser
from inkflow.web.sweep import Sweep

if TYPE_CHECKING:
    from inkflow.settings import Settings

__all__ = ["CHANNEL_RESOLUTION", "InkFlowChannel", "InkFlowRequest", "InkFlowSite"]

#: Seconds: the connections' deadlines are met within this (never early).
CHANNEL_RESOLUTION = 0.1


class InkFlowSite(server.Site):
    """
    The site: settings, clock, connection registry, and the choice of body
    sink per route.

    @param connections: the registry of open connections (a new one when
        C{None}).
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
        connections: Connections | None = None,
    ) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False, timeout=None)
        self.displayTracebacks = False
        self.settings = settings
        self.clock = clock
        self.sink_for = sink_for
        self.admit_head = admit_head
        self.on_request = on_request
        self.connections = connections if connections is not None else Connections()
        #: The connections' head, body and idle deadlines (L{InkFlowChannel}).
        self.sweep = Sweep(clock, CHANNEL_RESOLUTION)

    def log(self, request: http.Request) -> None:
        if self.on_request is not None:
            self.on_request(request)  # type: ignore[arg-type]
