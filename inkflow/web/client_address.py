"""
The address a request really came from: the peer, or what a trusted proxy
says in C{X-Forwarded-For}.  Pure: no reactor, no twisted.web.

L{request_client} reads it off any request (its peer and headers): the one
reading the chat route, the WebSocket upgrade and the idempotency scope share.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.logger import Logger

__all__ = ["UNIX", "client_ip", "is_trusted_peer", "peer_host", "request_client"]

#: The peer host of a unix: listener's connections, and the --trusted-proxy
#: value that believes them.
UNIX = "unix"

log = Logger()

# --- client address


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_address(text: str) -> _Address | None:
    """
    One address as found in C{X-Forwarded-For} or as a peer host: plain IPv4
    or IPv6, optionally quoted, bracketed, or with a port.  IPv4-mapped IPv6
    becomes IPv4.  Anything else (C{unknown}, host names, junk) is L{None}.
    """
    text = text.strip().strip('"').strip()
    if not text or len(text) > 64:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def _peer(peer_host: str) -> tuple[_Address | None, str]:
    """
    A peer host parsed, and its canonical text: the same few peers (a load
    balancer, a busy client) send request after request, and parsing an
    address cost 1.5 % of a new stream's CPU.
    """
    address = _parse_address(peer_host)
    return address, (peer_host if address is None else str(address))


@functools.lru_cache(maxsize=64)
def _networks(trusted: tuple[str, ...]) -> tuple[_Network, ...]:
    networks: list[_Network] = []
    for text in trusted:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            log.warn("ignoring trusted proxy {entry!r}: not an address or CIDR", entry=text)
    return tuple(networks)


def _is_trusted(address: _Address, networks: Iterable[_Network]) -> bool:
    # An IPv4 address is never "in" an IPv6 network and vice versa (False, no error).
    return any(address in network for network in networks)


def is_trusted_peer(peer_host: str, trusted: tuple[str, ...]) -> bool:
    """
    Whether the connection's peer is a trusted proxy (its C{X-Forwarded-For}
    is believed): then the client's address is known only from each
    request's head; otherwise it is the peer's, known when it connects.
    """
    if peer_host == UNIX:
        return UNIX in trusted
    peer = _parse_address(peer_host)
    return peer is not None and _is_trusted(peer, _networks(tuple(t for t in trusted if t != UNIX)))


def client_ip(peer_host: str, forwarded_for: Sequence[str] | None, trusted: tuple[str, ...]) -> str:
    """
    The address a request really came from.

    C{X-Forwarded-For} is believed only when the peer (the TCP connection's
    far end) is in one of the C{trusted} networks.  The chain is then walked
    from the right (the hop nearest to us), skipping trusted proxies, and the
    first untrusted address is the client.  Every entry left of that one was
    written by the client and may be forged, so it is never looked at.

    Empty entries are skipped.  An entry that is not an address (C{unknown},
    a host name, junk) ends the walk: what lies left of it cannot be
    vouched for, so the answer is the last trusted hop reached (at worst the
    peer itself), never a forgeable value.  If every entry is trusted, the
    leftmost one is the answer.

    @param peer_host: the connection's peer address (L{UNIX} for a unix:
        listener).
    @param forwarded_for: the raw C{X-Forwarded-For} header values in the
        order received (each may hold a comma-separated list), or L{None}.
    @param trusted: addresses / CIDRs, as in C{Settings.trusted_proxy}.
    @return: the address in canonical text form (IPv4-mapped IPv6 as IPv4);
        the peer host unchanged when it is not an IP address.
    """
    networks = _networks(tuple(t for t in trusted if t != UNIX))
    nearest: _Address | str
    if peer_host == UNIX:
        # A unix: listener's peer is a local proxy, believed only with
        # --trusted-proxy unix.
        if UNIX not in trusted or not forwarded_for:
            return peer_host
        nearest = peer_host
    else:
        peer, canonical = _peer(peer_host)
        if peer is None:
            return peer_host
        if not trusted or not forwarded_for or not _is_trusted(peer, networks):
            return canonical
        nearest = peer
    entries = [entry for value in forwarded_for for entry in str(value).split(",")]
    for entry in reversed(entries):
        if not entry.strip():
            continue
        address = _parse_address(entry)
        if address is None:
            break
        if not _is_trusted(address, networks):
            return str(address)
        nearest = address
    return str(nearest)


def peer_host(peer: object) -> str:
    """
    A connection's peer as L{client_ip} takes it: L{UNIX} for a unix:
    listener's peer, the address text of an IP one, C{"unknown"} otherwise.
    """
    return UNIX if isinstance(peer, UNIXAddress) else (getattr(peer, "host", None) or "unknown")


def request_client(request: Any, trusted: tuple[str, ...]) -> str:
    """
    L{client_ip} of a request: its peer (L{UNIX} for a unix: listener's) and
    its C{X-Forwarded-For}, believed from C{trusted} peers only.

    @param request: anything with C{getClientAddress()} and C{requestHeaders}
        (an C{IRequest}).
    """
    host = peer_host(request.getClientAddress())
    return client_ip(host, request.requestHeaders.getRawHeaders("X-Forwarded-For"), trusted)
