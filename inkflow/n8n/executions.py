"""
Which n8n upstream started which execution, for the Chat Trigger's "Using
Response Nodes" mode: n8n answers the first chat POST with
C{{"executionStarted": true, "executionId": ...}} and the widget then opens a
WebSocket that must reach the same n8n instance.

Pure: an injected clock, bounded by count, entries expiring C{ttl} seconds
after they were last used.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet.interfaces import IReactorTime

__all__ = ["DEFAULT_TTL", "MAX_EXECUTIONS", "ExecutionMap", "started_execution"]

#: Executions remembered at most (the least recently used go first).
MAX_EXECUTIONS = 10_000
#: Seconds an execution is remembered after its last use: a "Send and Wait
#: for Response" may wait for the visitor a long time.
DEFAULT_TTL = 24 * 3600.0
#: The longest execution id kept (n8n's are short decimal strings).
MAX_ID_LENGTH = 128


def started_execution(body: Any) -> str | None:
    """
    The execution id of an C{executionStarted} answer, else C{None}.
    """
    if not isinstance(body, dict) or body.get("executionStarted") is not True:
        return None
    value = body.get("executionId")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    return text if 0 < len(text) <= MAX_ID_LENGTH else None


class ExecutionMap:
    """
    execution id -> index of the webhook URL whose n8n started it.
    """

    def __init__(self, clock: IReactorTime, ttl: float = DEFAULT_TTL, max_entries: int = MAX_EXECUTIONS) -> None:
        self._clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def note_answer(self, body: Any, url_index: int) -> str | None:
        """
        Remember the upstream of an C{executionStarted} answer; return its id.
        """
        execution_id = started_execution(body)
        if execution_id is not None:
            self.remember(execution_id, url_index)
        return execution_id

    def remember(self, execution_id: str, url_index: int) -> None:
        self._entries.pop(execution_id, None)
        self._entries[execution_id] = (url_index, self._clock.seconds() + self.ttl)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def lookup(self, execution_id: str) -> int | None:
        """
        The upstream index for C{execution_id}, or C{None} (unknown or
        expired).  A hit keeps the entry for another C{ttl}.
        """
        entry = self._entries.get(execution_id)
        if entry is None:
            return None
        index, expires = entry
        now = self._clock.seconds()
        if expires <= now:
            del self._entries[execution_id]
            return None
        self._entries.move_to_end(execution_id)
        self._entries[execution_id] = (index, now + self.ttl)
        return index
