"""
What must agree across the processes of one server (C{--workers N}) and the
instances behind one load balancer (C{--redis}): one interface, L{SharedState},
every call returning a L{Deferred}.

 - idempotency: L{SharedState.idem_claim} ("is this the first request with
   this key?", atomically), the wait on an in-flight leader, the stored
   answer replayed for C{--idempotency-ttl}, the in-progress mark of a
   streamed answer (L{SharedState.idem_streaming}) and the leader's end
   (L{SharedState.idem_finish}).  A key is scoped to its owner (the session
   id when the client gave one, else its address): the same key from another
   owner is another key, so another client gets its own answer, never this
   one; the same owner with another request under the key gets C{mismatch}
   (422 C{idempotency_mismatch}).
 - the rate limiter: L{SharedState.rate_take}, one token from a bucket.
 - the execution map: L{SharedState.execution_remember} /
   L{SharedState.execution_lookup} (which n8n upstream started an execution).

Nothing here raises L{inkflow.errors.ApiError} for a decision: the caller
turns C{mismatch}, C{in_progress} and a retry delay into its answers.  The
outcome a waiter is woken with crosses process boundaries, so it has a plain
JSON form (L{outcome_to_json} / L{outcome_from_json}).

Pure: no reactor import.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from inkflow.errors import ApiError

__all__ = [
    "LEAD",
    "Answer",
    "Claim",
    "Outcome",
    "SharedState",
    "StateConfig",
    "StateUnavailable",
    "Wake",
    "outcome_from_json",
    "outcome_to_json",
    "scoped_key",
]

#: What a waiter is woken with when the leader ended without an answer: it
#: leads now.
LEAD = "lead"


@dataclass(frozen=True)
class Answer:
    """
    A whole chat answer, as sent: status, body, and the headers a replay keeps.
    """

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(n) + len(v) for n, v in self.headers) + 64


#: What a leader ends with: its answer, its error, or nothing (cancelled,
#: streamed, client gone).
Outcome = Answer | ApiError | None

#: What a waiter is woken with.
Wake = Answer | ApiError | str


@dataclass(frozen=True)
class Claim:
    """
    What L{SharedState.idem_claim} decided.

    @ivar kind: C{"lead"} (run the request, then L{SharedState.idem_finish}),
        C{"wait"} (await C{waiting}: it fires with the leader's L{Answer}, its
        L{ApiError}, or L{LEAD} when the leader ended without an answer and
        this request leads now; cancelling it leaves the queue),
        C{"replay"} (send C{answer}), C{"in_progress"} (409: the answer is
        being streamed), C{"mismatch"} (422: the owner sent another request
        under this key).
    """

    kind: str
    answer: Answer | None = None
    waiting: Deferred[Wake] | None = None


@dataclass(frozen=True)
class StateConfig:
    """
    What every store is built with (from the settings).

    @ivar idempotency_ttl: C{--idempotency-ttl}: seconds a 2xx answer is
        replayed (0: kept only while in flight).
    @ivar rate_limit: C{--rate-limit}: tokens per minute per bucket (0: off).
    @ivar lease: seconds a key stays claimed by a leader that never finishes
        (its process died): C{--request-timeout} plus a margin.
    @ivar execution_ttl: seconds an execution is remembered after its last use.
    @ivar max_answer_bytes: a larger answer is shared with the waiters but
        never stored.
    """

    idempotency_ttl: float = 600.0
    rate_limit: int = 30
    lease: float = 120.0
    execution_ttl: float = 24 * 3600.0
    max_answer_bytes: int = 1024 * 1024


class StateUnavailable(Exception):
    """
    The shared store cannot be reached now (not connected, timed out, gone).
    """


def scoped_key(owner: str, key: str) -> str:
    """
    The store's name for a client's key: the owner and the key, hashed (so
    neither an address nor a session id is ever a Redis key in clear, and the
    length is fixed).
    """
    return hashlib.sha256(f"{owner}\x00{key}".encode()).hexdigest()


class SharedState(Protocol):
    """
    The state the processes of a server share.  Every method returns a
    L{Deferred}; none fails for a decision (only for a broken store, which
    L{inkflow.state.fallback.FallbackState} turns into process-local
    answers).
    """

    @property
    def degraded(self) -> bool:
        """
        True while the shared store cannot be reached and this process
        answers from its own state.
        """

    def idem_claim(self, owner: str, key: str, fingerprint: str) -> Deferred[Claim]:
        """
        A request from C{owner} with C{key} (and C{fingerprint}) arrives.
        """

    def idem_streaming(self, owner: str, key: str) -> Deferred[None]:
        """
        The leader of the key streams its answer: waiters, now and until it
        ends, get C{in_progress}; nothing is stored when it ends.
        """

    def idem_finish(self, owner: str, key: str, outcome: Outcome) -> Deferred[None]:
        """
        The leader of the key is done: a 2xx L{Answer} is stored for
        C{idempotency_ttl} (unless streamed or too large), every waiter is
        woken with the outcome; C{None} wakes one waiter to lead.
        """

    def rate_take(self, bucket: str) -> Deferred[float]:
        """
        Take one token from C{bucket}.

        @return: 0.0 when allowed, else the seconds until the next token.
        """

    def execution_remember(self, execution_id: str, url_index: int) -> Deferred[None]:
        """
        Remember that the upstream C{url_index} started C{execution_id}.
        """

    def execution_lookup(self, execution_id: str) -> Deferred[int | None]:
        """
        The upstream of C{execution_id} (a hit keeps it another TTL), or
        C{None}.
        """

    def close(self) -> Deferred[None]:
        """
        Let go of connections and timers.
        """


# --- the outcome's plain form (AMP and Redis)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def outcome_to_json(outcome: Wake | None) -> dict[str, Any]:
    """
    An outcome (or wake) as plain JSON values.
    """
    if outcome is None:
        return {"kind": "none"}
    if isinstance(outcome, str):
        return {"kind": "lead"}
    if isinstance(outcome, ApiError):
        return {
            "kind": "error",
            "code": outcome.code,
            "status": outcome.status,
            "detail": outcome.detail,
            "headers": outcome.headers,
        }
    return {
        "kind": "answer",
        "status": outcome.status,
        "body": _b64(outcome.body),
        "headers": [[_b64(n), _b64(v)] for n, v in outcome.headers],
    }


def outcome_from_json(value: dict[str, Any]) -> Wake | None:
    """
    The inverse of L{outcome_to_json}.

    @raise ValueError: not an outcome.
    """
    kind = value.get("kind")
    if kind == "none":
        return None
    if kind == "lead":
        return LEAD
    if kind == "error":
        return ApiError(
            str(value["code"]),
            value.get("detail"),
            status=int(value["status"]),
            headers=dict(value.get("headers") or {}),
        )
    if kind == "answer":
        headers = tuple((base64.b64decode(n), base64.b64decode(v)) for n, v in value["headers"])
        return Answer(int(value["status"]), base64.b64decode(value["body"]), headers)
    raise ValueError(f"not an outcome: {kind!r}")


def storable(outcome: Outcome, config: StateConfig) -> bool:
    """
    Whether a leader's outcome is kept for replay.
    """
    return (
        isinstance(outcome, Answer)
        and 200 <= outcome.status < 300
        and config.idempotency_ttl > 0
        and outcome.size <= config.max_answer_bytes
    )
