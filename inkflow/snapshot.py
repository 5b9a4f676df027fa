"""
The shape of the health snapshot: one definition of each part, as TypedDicts.

Produced by the chat queue (L{QueueSnapshot}), each webhook URL's breaker
(L{BreakerSnapshot}, L{UpstreamSnapshot}), the cleanup loop
(L{CleanupSnapshot}) and the process reader (L{ProcessSnapshot}); put
together by L{inkflow.health.build_health} into L{Health}, the body of
C{/api/health}; read by the metrics (L{inkflow.server.metrics}) and, over
HTTP, by C{inkflow monitor} (L{read_health}).  mypy checks every producer and
reader against these.

Adding a field is adding it here and in its producer; the monitor's
L{read_health} follows by itself, and mypy points at whatever else must
change.  This module is pure and imports nothing from InkFlow, so the
operator tools can use it without importing the server.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict, TypeVar, Union, cast, get_args, get_origin, get_type_hints, is_typeddict

__all__ = [
    "BreakerSnapshot",
    "CleanupSnapshot",
    "ConnectionsSnapshot",
    "Health",
    "LimitsSnapshot",
    "MemorySnapshot",
    "ProcessSnapshot",
    "QueueSnapshot",
    "ServerSnapshot",
    "StateSnapshot",
    "UpstreamSnapshot",
    "WorkerSummary",
    "read_health",
    "read_section",
]


class ConnectionsSnapshot(TypedDict):
    active: int
    max: int
    #: Connections answered 503 over --max-connections.
    rejected_total: int
    #: Requests whose head or body did not arrive in time (answered 408).
    timed_out_total: int


class QueueSnapshot(TypedDict):
    depth: int
    max: int
    in_flight: int
    max_concurrent: int
    #: Slots released: requests that went through, whatever their outcome.
    processed_total: int
    #: Refused at once: queue full, or draining.
    rejected_total: int
    #: Gave up after --queue-timeout.
    timed_out_total: int
    #: Left the queue because the client went away.
    cancelled_total: int
    wait_ms_p50: float
    wait_ms_p95: float


class BreakerSnapshot(TypedDict):
    #: C{closed}, C{open} or C{half_open}.
    state: str
    consecutive_failures: int
    requests_total: int
    failures_total: int
    last_error: str | None


class UpstreamSnapshot(BreakerSnapshot):
    #: The webhook URL, redacted (health shows only its scheme://host:port).
    url: str
    #: Its place in the failover order (in health).
    index: NotRequired[int]


class CleanupSnapshot(TypedDict):
    runs: int
    #: ISO 8601 (UTC) of the last run's start, or C{None} before the first.
    last_run: str | None
    temp_files_removed: int
    gc_collected: int


class MemorySnapshot(TypedDict):
    rss_bytes: int
    vms_bytes: int
    percent: float


class ProcessSnapshot(TypedDict):
    memory: MemorySnapshot
    cpu_percent: float
    open_files: int
    threads: int


class LimitsSnapshot(TypedDict):
    max_file_size: int
    max_files: int
    max_connections: int
    queue_size: int
    max_message_chars: int
    allowed_types: list[str]


class WebSocketsSnapshot(TypedDict):
    #: /chat WebSockets open now, and opened since start.
    open: int
    opened_total: int


class StreamsSnapshot(TypedDict):
    #: Streamed chat answers being relayed now, and relayed since start.
    in_flight: int
    total: int
    #: How streams ended, by cause (complete, upstream_dropped, client_left, ...).
    endings: dict[str, int]


class StateSnapshot(TypedDict):
    #: C{memory}, C{workers} or C{redis}.
    backend: str
    #: False while the shared store is unreachable and this process answers alone.
    shared: bool
    #: Calls to the shared store answered from this process instead.
    fallbacks_total: int
    #: Why the shared store is unreachable (only while it is).
    error: NotRequired[str]


class WorkerSummary(TypedDict):
    #: One worker's own figures (C{--workers N}): a part of its health.
    status: str
    pid: int
    uptime_s: float
    connections: ConnectionsSnapshot
    queue: QueueSnapshot


class ServerSnapshot(TypedDict):
    #: Under C{--workers N}: every C{*_total} of the workers' health summed,
    #: by section (C{{"queue": {"processed_total": 12}, ...}}).
    totals: dict[str, dict[str, float]]
    #: Each worker's own health, by slot.
    workers: dict[str, WorkerSummary]


class Health(ProcessSnapshot):
    """
    The body of C{/api/health}: the process's figures (L{ProcessSnapshot}) at
    the top level, plus these.  Beside them: C{state} (L{StateSnapshot}, the
    shared state) and, under C{--workers N}, C{server} (L{ServerSnapshot},
    the whole server): read with L{read_section}.
    """

    #: C{ok}, C{degraded} or C{draining}.
    status: str
    version: str
    #: C{proxy}, C{demo} or C{static-only}.
    mode: str
    pid: int
    uptime_s: float
    connections: ConnectionsSnapshot
    queue: QueueSnapshot
    websockets: WebSocketsSnapshot
    streams: StreamsSnapshot
    upstreams: list[UpstreamSnapshot]
    cleanup: CleanupSnapshot
    limits: LimitsSnapshot


# --- reading a snapshot that came over the network

_T = TypeVar("_T")
_MISSING: Any = object()


def read_health(data: object) -> Health:
    """
    A health answer as received (any JSON), reduced to what fits the schema.

    The result has every section (a missing or malformed one is empty, and
    the upstreams an empty list); a value of the wrong type is left out, and
    so is an upstream that is not an object.  So read the leaves with C{.get()}: C{health["queue"].get("depth")}
    is an C{int} or C{None}.  Another version of the server may send fields
    this one does not know (ignored) or lack some (absent).
    """
    return _conform(Health, data)


def read_section(kind: type[_T], health: object, name: str) -> _T | None:
    """
    The section C{name} of a health answer (C{state}, C{server}), reduced to
    C{kind} like L{read_health}; C{None} when the server sent none.
    """
    value = health.get(name) if isinstance(health, Mapping) else None
    if not isinstance(value, Mapping):
        return None
    return _conform(kind, value)


def _conform(kind: type[_T], data: object) -> _T:
    source: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
    result: dict[str, Any] = {}
    for key, hint in get_type_hints(kind).items():
        value = _value(hint, source.get(key, _MISSING))
        if value is not _MISSING:
            result[key] = value
    return cast(_T, result)


def _value(hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    if is_typeddict(hint):
        return _conform(hint, value)  # a section is always there, maybe empty
    if origin is list and is_typeddict(get_args(hint)[0]):
        # A list of sections (the upstreams) too; items that are not objects go.
        sections = value if isinstance(value, list) else []
        return [_conform(get_args(hint)[0], item) for item in sections if isinstance(item, Mapping)]
    if value is _MISSING:
        return _MISSING
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        for option in get_args(hint):
            conformed = _value(option, value)
            if conformed is not _MISSING and conformed is not None:
                return conformed
        return _MISSING
    if origin is list:
        if not isinstance(value, list):
            return _MISSING
        (item_hint,) = get_args(hint)
        conformed_items = (_value(item_hint, item) for item in value)
        return [item for item in conformed_items if item is not _MISSING]
    if origin is dict:
        # A mapping of counts by name (stream endings by cause).
        if not isinstance(value, Mapping):
            return _MISSING
        _, item_hint = get_args(hint)
        conformed_map = {str(k): _value(item_hint, v) for k, v in value.items()}
        return {k: v for k, v in conformed_map.items() if v is not _MISSING}
    if isinstance(value, bool):
        return value if hint is bool else _MISSING
    if hint is int and isinstance(value, int | float):
        return int(value)
    if hint is float and isinstance(value, int | float):
        return value
    if hint is str and isinstance(value, str):
        return value
    return _MISSING
