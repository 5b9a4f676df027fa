"""
InkFlow's site: settings, clock, the connection registry (for the limit,
health, the cleanup loop and drain: L{inkflow.web.connections}), and the
routes' choices from a request's head: its body sink, its admission, and
the CORS headers of an answer given before the route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.web import http, server
from twisted.web.resource import IResource

from inkflow.web.channel import InkFlowChannel
from inkflow.web.connections import Connections
from inkflow.web.request import CorsChooser, HeadCheck, InkFlowRequest, SinkChooser
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
    @param cors_for: the CORS headers of any answer to a request, from its
        head (C{None}: none); answers given before the route carry them too.
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
        cors_for: CorsChooser | None = None,
    ) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False, timeout=None)
        self.displayTracebacks = False
        self.settings = settings
        self.clock = clock
        self.sink_for = sink_for
        self.admit_head = admit_head
        self.cors_for = cors_for
        self.on_request = on_request
        self.connections = connections if connections is not None else Connections()
        #: The connections' head, body and idle deadlines (L{InkFlowChannel}).
        self.sweep = Sweep(clock, CHANNEL_RESOLUTION)

    def cors_headers(self, method: bytes, path: bytes, headers: http.Headers, secure: bool) -> dict[str, str]:
        """
        The CORS headers of an answer to a request (C{path} percent-decoded),
        for one given before (or instead of) its route.
        """
        return self.cors_for(method, path, headers, secure) if self.cors_for is not None else {}

    def log(self, request: http.Request) -> None:
        if self.on_request is not None:
            self.on_request(request)  # type: ignore[arg-type]
