"""
The connection registry: the open connections of the HTTP site, their
figures for health and the limit, the connections of each client address
(C{--max-connections-per-ip}), the cleanup loop's view of the uploads in
flight, and drain (close the idle connections, let the busy ones close after
their response, and wait until all are gone).

Built by the composition root before the site, so that health, the cleanup
loop and drain can be handed it without waiting for the site.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, cast

from twisted.internet import defer

from inkflow.health import SiteStats

__all__ = ["AddressClaimant", "Connection", "Connections", "SiteStats"]


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


class AddressClaimant(Protocol):
    """
    What the per-address count needs of a connection: whether it is idle
    between two requests, and closing it then.
    """

    def is_idle(self) -> bool: ...

    def close_when_idle(self) -> None: ...


class Connections:
    """
    The open connections.

    @ivar admitted: open connections within C{--max-connections} (the others
        are being refused).
    """

    def __init__(self) -> None:
        self.channels: set[Connection] = set()
        self.admitted = 0
        self._admitted: set[Connection] = set()
        self.connections_rejected = 0
        self.timeouts_total = 0
        self.draining = False
        self._all_gone: list[defer.Deferred[None]] = []
        # client address key -> its connections (insertion order: oldest first)
        self._by_address: dict[str, dict[AddressClaimant, None]] = {}
        self._address_of: dict[AddressClaimant, str] = {}
        self.address_rejected = 0
        self.idle_closed_for_address = 0

    def stats(self) -> SiteStats:
        return SiteStats(self.admitted, self.connections_rejected, self.timeouts_total, self.draining)

    def opened(self, channel: Connection, limit: int, admit: bool = True) -> bool:
        """
        A connection opened: register it; return whether it is over C{limit}.

        @param admit: take a place within C{limit} (C{False}: a connection
            already refused for its address, which must not hold a place
            other clients need while it is answered).
        """
        self.channels.add(channel)
        over = self.admitted >= limit
        if not over and admit:
            self.admitted += 1
            self._admitted.add(channel)
        return over

    def give_up_place(self, channel: Connection) -> None:
        """
        C{channel} is being refused (over its address's cap): its place
        within C{--max-connections} is free for others at once.
        """
        if channel in self._admitted:
            self._admitted.discard(channel)
            self.admitted -= 1

    def claim(self, channel: AddressClaimant, key: str, limit: int) -> bool:
        """
        Count C{channel} as a connection of the client address C{key} (the
        rate limit's key: an IPv4 address, an IPv6 /64), moving it from the
        address it was counted under (a proxy's kept-alive connection may
        carry another client's next request).

        At C{limit}, the address's oldest idle kept-alive connection is
        closed to make room: an idle socket must not keep its own client out
        (a browser behind a shared address opens a new one while old ones
        idle), and one address still never holds more than C{limit}.

        @param limit: C{--max-connections-per-ip}; 0 counts nothing.
        @return: whether C{channel} is counted; C{False} when the address
            holds C{limit} connections, none of them idle (C{channel} is then
            counted under no address).
        """
        if not limit:
            return True
        if self._address_of.get(channel) == key:
            return True
        self.release_address(channel)
        held = self._by_address.get(key)
        if held is not None and len(held) >= limit:
            idle = next((other for other in held if other.is_idle()), None)
            if idle is None:
                self.address_rejected += 1
                return False
            self.release_address(idle)
            self.idle_closed_for_address += 1
            idle.close_when_idle()
        self._by_address.setdefault(key, {})[channel] = None
        self._address_of[channel] = key
        return True

    def release_address(self, channel: object) -> None:
        """
        Stop counting C{channel} under its address (idempotent).
        """
        key = self._address_of.pop(cast(AddressClaimant, channel), None)
        if key is None:
            return
        held = self._by_address[key]
        held.pop(cast(AddressClaimant, channel), None)
        if not held:
            del self._by_address[key]

    def held_by(self, key: str) -> int:
        """
        How many connections the client address C{key} is counted for.
        """
        return len(self._by_address.get(key, ()))

    def gone(self, channel: Connection) -> None:
        self.release_address(channel)
        self.give_up_place(channel)
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
