"""
What InkFlow knows about one request besides what twisted.web keeps: one
small dataclass, L{RequestState}, reached through one function,
L{request_state}.

InkFlow's request (L{inkflow.web.request.InkFlowRequest}) makes its state when
it is made and fills it in as the head and the body arrive; the routes, the
idempotency wrapper, the stream relay, the channel and the access log read
it.  Any other request (the admin listener's plain C{twisted.web} request)
gets one the first time it is asked for, with a fresh request id sent back as
C{X-Request-ID}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from inkflow.chat import ChatBody, new_request_id
from inkflow.errors import ApiError

__all__ = ["RequestState", "request_state"]

#: The attribute a request's state is kept under (only this module reads it).
_ATTRIBUTE = "inkflow_state"


@dataclass
class RequestState:
    """
    One request's state.

    @ivar request_id: sent back as C{X-Request-ID}, logged with every line
        about the request.
    @ivar admitted: the head check (Origin, rate limit) passed before the body.
    @ivar body: the parsed body (its spooled files are the request's until it
        ends: L{inkflow.web.request.InkFlowRequest} removes them).
    @ivar body_error: why the body could not be taken (exactly one of C{body}
        and C{body_error} is set once a body route's body is in).
    @ivar body_limit: the most body bytes the chosen sink takes (C{None}
        without a sink).
    @ivar stream_seconds: how long a streamed answer took (for the access log).
    @ivar rate_decision: the rate limit's answer (seconds to wait, 0.0:
        allowed) when the shared state had not given it by the end of the
        head; the route awaits it before anything else.
    """

    request_id: str
    admitted: bool = False
    body: ChatBody | None = None
    body_error: ApiError | None = None
    body_limit: int | None = None
    stream_seconds: float | None = None
    rate_decision: Deferred[float] | None = None
    #: The (owner, key) an Idempotency-Key's claim holds for this request
    #: (L{inkflow.state.chat.SharedIdempotentChat}); None when it holds none.
    idempotency_scope: tuple[str, str] | None = None

    def take_body(self) -> ChatBody:
        """
        The parsed body.

        @raise ApiError: the body was refused or is malformed; or there is none.
        """
        if self.body_error is not None:
            raise self.body_error
        if self.body is None:
            raise ApiError("bad_request", "the request has no body")
        return self.body


def request_state(request: object) -> RequestState:
    """
    The request's state; a request that has none (not InkFlow's) gets one
    here, with a new request id set as its C{X-Request-ID}.
    """
    state = vars(request).get(_ATTRIBUTE)
    if state is None:
        state = RequestState(new_request_id())
        setattr(request, _ATTRIBUTE, state)
        cast(IRequest, request).setHeader(b"X-Request-ID", state.request_id.encode("ascii"))
    assert isinstance(state, RequestState)
    return state


def attach_state(request: object, state: RequestState) -> None:
    """
    Give a new request its state (InkFlow's request, when it is made).
    """
    setattr(request, _ATTRIBUTE, state)
