"""
Name resolution for the n8n client: each webhook host's addresses
remembered for a few seconds.

twisted.web's agent connects through a C{HostnameEndpoint}, which asks the
reactor's resolver for every new connection, and the default resolver runs
C{getaddrinfo} in the reactor's thread pool.  A burst of streams opens a new
n8n connection each, so a webhook at C{http://localhost:5678} or
C{http://n8n:5678} paid a thread hand-off per stream: the largest cost of a
new stream in issue 24's profile (a webhook at an IP address skips
resolution altogether: L{inkflow.n8n.pool.Endpoints}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IReactorTime,
    IResolutionReceiver,
)
from zope.interface import implementer

__all__ = ["RESOLUTION_TTL", "CachingResolver", "with_resolver"]

#: Seconds a resolved address list is reused: short, so a container that
#: comes back at a new address is found again within seconds.
RESOLUTION_TTL = 5.0

#: At most this many names are remembered (a few webhook hosts in practice).
MAX_NAMES = 64


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass  # answered at once


@implementer(IResolutionReceiver)
class _Recorder:
    """
    Passes a resolution on to its receiver, keeping the addresses.
    """

    def __init__(self, receiver: IResolutionReceiver, done: Any) -> None:
        self.receiver = receiver
        self.addresses: list[IAddress] = []
        self.done = done

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        self.receiver.resolutionBegan(resolutionInProgress)

    def addressResolved(self, address: IAddress) -> None:
        self.addresses.append(address)
        self.receiver.addressResolved(address)

    def resolutionComplete(self) -> None:
        self.done(self.addresses)
        self.receiver.resolutionComplete()


@implementer(IHostnameResolver)
class CachingResolver:
    """
    Resolves through C{resolver} and reuses a non-empty answer for C{ttl}
    seconds (a failed or empty one is asked again next time).
    """

    def __init__(self, resolver: IHostnameResolver, clock: IReactorTime, ttl: float = RESOLUTION_TTL) -> None:
        self._resolver = resolver
        self._clock = clock
        self._ttl = ttl
        self._known: dict[tuple[Any, ...], tuple[float, list[IAddress]]] = {}

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        key = (hostName, portNumber, tuple(addressTypes) if addressTypes is not None else None, transportSemantics)
        now = self._clock.seconds()
        known = self._known.get(key)
        if known is not None and known[0] > now:
            resolution = _Resolution(hostName)
            resolutionReceiver.resolutionBegan(resolution)
            for address in known[1]:
                resolutionReceiver.addressResolved(address)
            resolutionReceiver.resolutionComplete()
            return resolution

        def done(addresses: list[IAddress]) -> None:
            if not addresses:
                self._known.pop(key, None)
                return
            if len(self._known) >= MAX_NAMES:
                self._known.clear()
            self._known[key] = (self._clock.seconds() + self._ttl, addresses)

        recorder = _Recorder(resolutionReceiver, done)
        return self._resolver.resolveHostName(recorder, hostName, portNumber, addressTypes, transportSemantics)


@implementer(IReactorPluggableNameResolver)
class _ResolvingReactor:
    """
    The reactor as a C{HostnameEndpoint} sees it: everything the real one
    does, with L{CachingResolver} as its name resolver.
    """

    def __init__(self, reactor: Any, resolver: IHostnameResolver) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        previous, self.nameResolver = self.nameResolver, resolver
        return previous

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def with_resolver(reactor: Any, ttl: float = RESOLUTION_TTL) -> Any:
    """
    C{reactor} with its name resolver wrapped in a L{CachingResolver} (for
    the n8n client's endpoints only; the reactor itself is unchanged).
    """
    return _ResolvingReactor(reactor, CachingResolver(reactor.nameResolver, reactor, ttl))
