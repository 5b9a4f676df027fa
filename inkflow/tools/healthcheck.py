"""
The one health-check client of the operator tools: C{inkflow monitor} reads
the health object with it, C{inkflow watchdog} asks it whether the child is
healthy.

 - L{health_url}: what the user typed to the URL to GET.  The server's base
   URL (C{http://host:8000} or C{http://host:8000/}) means its
   C{/api/health}; any other path is taken as it is.
 - L{probe_timeout}: the one timeout rule, from the polling interval.
 - L{HealthClient}: one GET over a fresh connection (never a kept-alive one
   to a process that has since been replaced), bounded as a whole exchange,
   failing with a L{HealthCheckFailed} whose message is one short line.

It speaks HTTP only: nothing here imports the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from treq import collect
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionRefusedError
from twisted.internet.error import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent, IResponse

from inkflow import paths

__all__ = [
    "DEFAULT_URL",
    "HealthAnswer",
    "HealthCheckFailed",
    "HealthClient",
    "describe_failure",
    "health_url",
    "probe_timeout",
]

HEALTH_PATH = paths.HEALTH
DEFAULT_URL = "http://127.0.0.1:8000" + HEALTH_PATH
#: The longest one check may take, whatever the interval.
MAX_TIMEOUT = 5.0
#: The share of the polling interval one check may take.
INTERVAL_SHARE = 0.8
#: The largest health answer read.
MAX_BODY = 1024 * 1024


def health_url(url: str) -> str:
    """
    The URL to GET for C{url}: the server's C{/api/health} when C{url} has no
    path (or just C{/}), else C{url} itself.
    """
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return urlunsplit((parts.scheme, parts.netloc, HEALTH_PATH, parts.query, ""))
    return url


def probe_timeout(interval: float | None) -> float:
    """
    How long one check may take: 80% of the polling interval, at most 5
    seconds (5 seconds for a single check, C{interval=None}).  Shorter than
    the interval, so a hung server fails one check per interval rather than
    one every other interval.
    """
    if interval is None:
        return MAX_TIMEOUT
    return min(interval * INTERVAL_SHARE, MAX_TIMEOUT)


class HealthCheckFailed(Exception):
    """
    The health URL could not be read, or did not answer as asked; the message
    is one short line.
    """


@dataclass(frozen=True)
class HealthAnswer:
    """
    What the health URL answered.
    """

    code: int
    phrase: str
    body: bytes

    def status_line(self) -> str:
        return f"HTTP {self.code} {self.phrase}".rstrip()

    def health(self) -> dict[str, Any]:
        """
        The health object of a 2xx answer.

        @raise HealthCheckFailed: another status, or a body that is not a JSON
            object.
        """
        if not 200 <= self.code < 300:
            raise HealthCheckFailed(self.status_line())
        try:
            data = json.loads(self.body)
        except ValueError:
            raise HealthCheckFailed("health answer is not JSON") from None
        if not isinstance(data, dict):
            raise HealthCheckFailed("health answer is not a JSON object")
        return data


def describe_failure(reason: Failure, timeout: float) -> str:
    """
    One short line saying why a check failed.
    """
    if reason.check(HealthCheckFailed):
        return str(reason.value)
    if reason.check(DeferredTimeoutError, CancelledError):
        return f"no answer within {timeout:g}s"
    if reason.check(ConnectingCancelledError):
        return f"could not connect within {timeout:g}s"
    if reason.check(ConnectionRefusedError):
        return "connection refused"
    if reason.check(ConnectError):
        return str(reason.value).strip().splitlines()[0] if str(reason.value).strip() else "could not connect"
    inner = getattr(reason.value, "reasons", None)  # twisted.web's ResponseFailed and friends
    if isinstance(inner, list) and inner and isinstance(inner[0], Failure):
        return describe_failure(inner[0], timeout)
    text = str(reason.value).strip().splitlines()
    return f"{type(reason.value).__name__}: {text[0] if text else ''}".rstrip(": ")


class HealthClient:
    """
    GET a health URL, bounded by C{timeout} seconds from connecting to the
    last byte.

    @param reactor: the clock for the timeout; also connects, unless C{agent}
        is given.
    @param agent: the agent to use (tests pass a
        L{treq.testing.RequestTraversalAgent}); by default one with a connect
        timeout and no kept-alive connections.
    """

    def __init__(self, reactor: IReactorTime, timeout: float, *, user_agent: str, agent: IAgent | None = None) -> None:
        self._clock = reactor
        self.timeout = timeout
        self._headers: dict[bytes | str, list[bytes | str]] = {
            "User-Agent": [user_agent],
            "Accept": ["application/json"],
        }
        if agent is None:
            agent = Agent(reactor, connectTimeout=timeout, pool=HTTPConnectionPool(reactor, persistent=False))
        self._http = HTTPClient(agent)

    def get(self, url: str) -> Deferred[HealthAnswer]:
        """
        The answer, whatever its status.

        @return: fails with L{HealthCheckFailed} (one line) when there is no
            answer in time, or one larger than 1 MiB.
        """
        d = self._http.get(url, headers=self._headers)

        def read(response: IResponse) -> Deferred[HealthAnswer]:
            chunks: list[bytes] = []
            size = [0]

            def take(data: bytes) -> None:
                size[0] += len(data)
                if size[0] > MAX_BODY:
                    raise HealthCheckFailed("health answer is larger than 1 MiB")
                chunks.append(data)

            def answer(_: None) -> HealthAnswer:
                phrase = response.phrase.decode("latin-1") if isinstance(response.phrase, bytes) else ""
                return HealthAnswer(int(response.code), phrase, b"".join(chunks))

            return collect(response, take).addCallback(answer)

        result: Deferred[HealthAnswer] = d.addCallback(read)
        result.addTimeout(self.timeout, self._clock)
        return result.addErrback(self._one_line)

    def health(self, url: str) -> Deferred[dict[str, Any]]:
        """
        The health object (2xx, a JSON object); else fails with
        L{HealthCheckFailed}.
        """
        return self.get(url).addCallback(HealthAnswer.health)

    def _one_line(self, reason: Failure) -> HealthAnswer:
        raise HealthCheckFailed(describe_failure(reason, self.timeout))
