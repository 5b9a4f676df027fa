"""
treq's in-memory test client, over InkFlow's real site.

C{treq.testing.StubTreq} serves a resource through a plain C{twisted.web}
C{Site}: the request is not InkFlow's, so its body would take another path
than in production.  L{SiteTreq} does what treq's C{RequestTraversalAgent}
does (an C{Agent} on a memory reactor, each connection pumped to the server
through C{twisted.internet.testing}'s in-memory transports), with the site
given: an L{inkflow.web.site.InkFlowSite}, so a request's head check, body
sink and request state are the production ones.
"""

from __future__ import annotations

from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from twisted.web.server import Site
from zope.interface import implementer

from inkflow.n8n.multipart import BytesProducer

__all__ = ["SiteAgent", "SiteTreq"]


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, "127.0.0.1", uri.port)


@implementer(IAgent)
class SiteAgent:
    """
    An C{IAgent} whose every request is served by C{site}, in memory.

    @param peer: the client's address as the site sees it.
    """

    def __init__(self, site: Site, peer: IPv4Address | None = None) -> None:
        self.site = site
        self.peer = peer or IPv4Address("TCP", "127.0.0.1", 31337)
        self._reactor = MemoryReactorClock()
        self._agent = Agent.usingEndpointFactory(self._reactor, _Endpoints(self._reactor))
        self._pumps: set[iosim.IOPump] = set()

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Any = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        response = self._agent.request(method, uri, headers, bodyProducer)
        _host, port, factory, _timeout, _bind = self._reactor.tcpClients[-1]
        server = self.site.buildProtocol(self.peer)
        server_address = IPv4Address("TCP", "127.0.0.1", port)
        server_transport = iosim.FakeTransport(server, isServer=True, hostAddress=server_address, peerAddress=self.peer)
        client = factory.buildProtocol(None)
        client_transport = iosim.FakeTransport(
            client, isServer=False, hostAddress=self.peer, peerAddress=server_address
        )
        self._pumps.add(iosim.connect(server, server_transport, client, client_transport))
        return response

    def flush(self) -> None:
        """
        Move whatever either side wrote since (an answer finished later).
        """
        pumps, self._pumps = self._pumps, set()
        for pump in pumps:
            pump.flush()
            if not (pump.clientIO.disconnected and pump.serverIO.disconnected):
                self._pumps.add(pump)

    def disconnect(self) -> None:
        """
        Every client leaves: its connection is closed and the server sees it.
        """
        pumps, self._pumps = self._pumps, set()
        for pump in pumps:
            pump.clientIO.loseConnection()
            pump.flush()


def _whole_body(data: bytes | str) -> BytesProducer:
    """
    A request body written at once (no cooperator, no reactor).
    """
    return BytesProducer(data.encode("utf-8") if isinstance(data, str) else data)


class SiteTreq:
    """
    treq's functions (C{get}, C{post}, C{request}, C{content}, ...) bound to
    a L{SiteAgent}, like C{treq.testing.StubTreq}.
    """

    def __init__(self, site: Site, peer: IPv4Address | None = None) -> None:
        self.agent = SiteAgent(site, peer)
        client = HTTPClient(agent=self.agent, data_to_body_producer=_whole_body)
        for name in treq.__all__:
            setattr(self, name, getattr(client, name, None) or getattr(treq, name))
        self.flush = self.agent.flush
        self.disconnect = self.agent.disconnect

    def __getattr__(self, name: str) -> Any:  # for mypy: the functions set above
        raise AttributeError(name)
