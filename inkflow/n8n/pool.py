"""
The connection side of the n8n client: its own persistent pool, an agent
whose endpoints are built once per webhook origin, and each webhook URL's
constant request parts (L{Target}) built once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hyperlink import EncodedURL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, _ensureValidURI
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from inkflow import __version__
from inkflow.n8n.names import with_resolver
from inkflow.settings import Settings
from inkflow.web.twisted_hooks import quiet_pool

__all__ = [
    "ACCEPT",
    "MAX_CONNECT_TIMEOUT",
    "POOL_IDLE_TIMEOUT",
    "USER_AGENT",
    "Endpoints",
    "Target",
    "make_agent",
    "target",
]

#: Seconds a pooled connection may stay idle: below n8n's C{Keep-Alive:
#: timeout=5}, so InkFlow never reuses a connection n8n is about to close.
POOL_IDLE_TIMEOUT = 4

#: The longest connect phase of one attempt, in seconds.
MAX_CONNECT_TIMEOUT = 5.0

USER_AGENT = f"InkFlow/{__version__}"

#: What InkFlow accepts from n8n, in order of preference.
ACCEPT = b"application/json, text/plain;q=0.9, */*;q=0.1"


@implementer(IAgentEndpointFactory)
class Endpoints:
    """
    The endpoints of twisted.web's agent (TCP for http, TLS for https), each
    built once per scheme, host and port: the agent asks for one on every
    request, and building a C{HostnameEndpoint} (IDNA-encoding its host)
    cost 4 % of a proxied chat.

    A webhook at an IP address gets a plain TCP endpoint: a
    C{HostnameEndpoint} resolves even an IP literal in the reactor's thread
    pool and races its addresses on a timer for every new connection, the
    largest cost of a new stream while a thousand a second arrive (issue 24).
    A host name keeps C{HostnameEndpoint} (every address it resolves to is
    tried), over a resolver that reuses each answer for a few seconds
    (L{inkflow.n8n.names}).
    """

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._tls = BrowserLikePolicyForHTTPS()
        self._built: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}
        self._resolving: Any = None

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._built.get(key)
        if endpoint is None:
            endpoint = self._built[key] = self._build(uri)
        return endpoint

    def _build(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        host = uri.host.decode("ascii")
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self._reactor, host, uri.port, timeout=self._connect_timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self._reactor, host, uri.port, timeout=self._connect_timeout)
        else:
            # A host name: resolved once per few seconds, not per connection.
            if self._resolving is None:
                self._resolving = with_resolver(self._reactor)
            endpoint = HostnameEndpoint(self._resolving, host, uri.port, timeout=self._connect_timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


class _Agent(Agent):
    """
    twisted.web's agent, parsing each webhook URL once: it parsed the URL,
    looked its endpoint up and rebuilt its request path on every request
    (3 % of a new stream's CPU).  The same few URLs are sent to again and
    again.
    """

    _MAX_URLS = 64

    def __init__(self, reactor: Any, endpoints: IAgentEndpointFactory, pool: HTTPConnectionPool) -> None:
        super().__init__(reactor, pool=pool)
        self._endpointFactory = endpoints
        self._parsed: dict[bytes, tuple[URI, IStreamClientEndpoint, bytes]] = {}

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        parsed = self._parsed.get(uri)
        if parsed is None:
            if len(self._parsed) >= self._MAX_URLS:
                return super().request(method, uri, headers, bodyProducer)
            try:
                parsed_uri = URI.fromBytes(_ensureValidURI(uri.strip()))
                parsed = (parsed_uri, self._getEndpoint(parsed_uri), parsed_uri.originForm)
            except SchemeNotSupported:
                return super().request(method, uri, headers, bodyProducer)
            self._parsed[uri] = parsed
        parsed_uri, endpoint, path = parsed
        key = (parsed_uri.scheme, parsed_uri.host, parsed_uri.port)
        return self._requestWithEndpoint(key, endpoint, method, parsed_uri, headers, bodyProducer, path)


def make_agent(reactor: Any, settings: Settings) -> tuple[IAgent, HTTPConnectionPool]:
    """
    Build the agent for n8n over its own persistent connection pool (never
    treq's global one).  A plain twisted.web C{Agent}: no cookie jar (a
    cookie n8n sets for one visitor must never travel with another's
    message), no content decoding (InkFlow asks for C{identity} and refuses
    an encoded answer before its cap counts the bytes).

    @param reactor: provides C{IReactorTCP}, C{IReactorTime} and name
        resolution (the real reactor).
    @return: the agent (the L{inkflow.n8n.client.Forwarder} sends through
        it), and the pool (call C{closeCachedConnections()} on shutdown).
    """
    pool = quiet_pool(HTTPConnectionPool(reactor, persistent=True))
    pool.maxPersistentPerHost = max(settings.max_concurrent, 2)
    pool.cachedConnectionTimeout = POOL_IDLE_TIMEOUT
    pool.retryAutomatically = False  # a POST must never be replayed behind our back
    # Strictly inside the attempt: a host that is down must fail as "connect"
    # (safe to fail over: nothing was sent) before the attempt timer calls it a
    # timeout (not retried by default: n8n may have run the workflow).
    connect_timeout = min(MAX_CONNECT_TIMEOUT, settings.attempt_timeout / 2)
    agent: IAgent = _Agent(reactor, Endpoints(reactor, connect_timeout), pool)
    return agent, pool


@dataclass(frozen=True)
class Target:
    """
    One webhook URL, ready to send to.

    @ivar url: the URL as sent (encoded as treq encodes it).
    @ivar headers: the headers every request to it carries (C{Host}, what
        InkFlow accepts, C{User-Agent}, C{--webhook-header}).
    """

    url: bytes
    headers: dict[bytes, list[bytes]]


def target(url: str, extra_headers: tuple[tuple[str, str], ...]) -> Target:
    encoded = EncodedURL.from_text(url).to_uri().to_text().encode("ascii")
    built = Headers()
    built.setRawHeaders(b"Accept", [ACCEPT])
    # An answer in a content encoding would be inflated before the cap counts it.
    built.setRawHeaders(b"Accept-Encoding", [b"identity"])
    built.setRawHeaders(b"User-Agent", [USER_AGENT.encode("ascii")])
    for name, value in extra_headers:
        built.addRawHeader(name.encode("ascii"), value.encode("utf-8"))
    if not built.hasHeader(b"Host"):
        # Set here, the agent need not copy every request's headers to add it.
        built.setRawHeaders(b"Host", [_host_value(URI.fromBytes(encoded))])
    return Target(encoded, {name: list(values) for name, values in built.getAllRawHeaders()})


def _host_value(uri: URI) -> bytes:
    """
    The C{Host} header for C{uri}, as twisted.web's agent writes it.
    """
    host = uri.host
    if isIPv6Address(host.decode("ascii")):
        host = b"[" + host + b"]"
    if (uri.scheme, uri.port) in ((b"http", 80), (b"https", 443)):
        return host
    return b"%b:%d" % (host, uri.port)
