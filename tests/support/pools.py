"""
What a twisted.web C{HTTPConnectionPool} does when asked for a connection,
seen from the endpoint: the protocol factory it connects with.  No reactor,
no socket.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer


@implementer(IStreamClientEndpoint)
class RecordingEndpoint:
    """
    An endpoint that records the factories it is asked to connect and never
    connects.
    """

    def __init__(self) -> None:
        self.factories: list[IProtocolFactory] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        self.factories.append(protocolFactory)
        return Deferred()


def connection_factory(pool: HTTPConnectionPool) -> Any:
    """
    The protocol factory C{pool} opens a new connection with.
    """
    endpoint = RecordingEndpoint()
    pool.getConnection(("http", b"n8n.test", 80), endpoint)
    [factory] = endpoint.factories
    return factory
