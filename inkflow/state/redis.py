"""
C{--redis URL}: the state every process of every instance shares, in Redis
(or Valkey), through txredisapi (Twisted-native; it reconnects by itself).

 - "first request with this key" and the token bucket are Lua scripts
   (C{EVALSHA}, loaded on first use), so each decision is atomic across
   instances; the bucket reads Redis's C{TIME}, so the instances' clocks do
   not matter;
 - every key is under C{--redis-prefix} and has a TTL: a claimed key its
   lease (a leader whose process died frees it), a stored answer
   C{--idempotency-ttl}, a bucket the time it takes to refill, an execution
   its TTL from its last use;
 - every call has a short timeout (L{CALL_TIMEOUT}); a failure is
   L{StateUnavailable}, which L{inkflow.state.fallback.FallbackState} turns
   into this process's own answer;
 - a request waiting on another instance's leader polls the key (every
   20 ms, growing to 250 ms) until the leader ends; the leader of a key in
   this very process wakes its local pollers at once when it ends.

Keys: C{<prefix>idem:<sha256(owner, key)>} (a hash: fingerprint, state,
generation, answer), C{<prefix>idem:<...>:end:<generation>} (a leader's
non-stored outcome, kept L{END_TTL} seconds for its waiters),
C{<prefix>rate:<bucket>}, C{<prefix>exec:<execution id>}.

txredisapi imports the global reactor when it is imported: this module
imports it only when a store is built (in L{connect}), i.e. after twistd
installed its reactor.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from inkflow.settings.urls import RedisAddress, parse_redis_url
from inkflow.state.base import (
    LEAD,
    Claim,
    Outcome,
    StateConfig,
    StateUnavailable,
    Wake,
    outcome_from_json,
    outcome_to_json,
    scoped_key,
    storable,
)

__all__ = [
    "CALL_TIMEOUT",
    "DEFAULT_PREFIX",
    "RedisAddress",
    "RedisState",
    "connect",
    "parse_redis_url",
]

#: Seconds one Redis call may take before this process answers alone.
CALL_TIMEOUT = 0.25
DEFAULT_PREFIX = "inkflow:"
#: Seconds a leader's non-stored outcome (an error, a 5xx) is kept for the
#: requests polling on it.
END_TTL = 10.0
POLL_FIRST = 0.02
POLL_MAX = 0.25

CLAIM = """
if ARGV[4] ~= '' then
  local ended = redis.call('GET', KEYS[2])
  if ended then return {'ended', ended} end
end
local e = redis.call('HMGET', KEYS[1], 'fp', 'state', 'gen', 'answer')
if not e[1] then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'flight', 'gen', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'lead', ARGV[3]}
end
if e[1] ~= ARGV[1] then return {'mismatch', ''} end
if e[2] == 'done' then return {'replay', e[4]} end
if e[2] == 'streaming' then return {'in_progress', ''} end
return {'wait', e[3]}
"""

STREAMING = """
local e = redis.call('HMGET', KEYS[1], 'state', 'gen')
if e[1] == 'flight' and e[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'streaming')
  return 1
end
return 0
"""

FINISH = """
local e = redis.call('HMGET', KEYS[1], 'state', 'gen')
if e[2] ~= ARGV[1] or e[1] == 'done' then return 0 end
if e[1] == 'streaming' then
  redis.call('DEL', KEYS[1])
  return 1
end
if ARGV[2] == 'store' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'answer', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
else
  redis.call('DEL', KEYS[1])
  if ARGV[2] == 'end' then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5]) end
end
return 1
"""

TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap = tonumber(ARGV[1])
local rate = cap / 60
local b = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = cap
if b[1] then
  tokens = math.min(cap, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate)
end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'stamp', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((cap - tokens) / rate * 1000) + 1000)
return string.format('%.17g', wait)
"""


def connect(address: RedisAddress, timeout: float = CALL_TIMEOUT) -> Any:
    """
    A txredisapi lazy connection to C{address} (connecting, and reconnecting,
    in the background).
    """
    import txredisapi
    from twisted.internet.ssl import optionsForClientTLS

    common: dict[str, Any] = {
        "dbid": address.db or None,
        "reconnect": True,
        "charset": "utf-8",
        "password": address.password,
        "connectTimeout": max(1, int(timeout * 4 + 0.999)),
        "convertNumbers": False,
    }
    if address.username:
        common["username"] = address.username
    if address.scheme == "unix":
        return txredisapi.lazyUnixConnection(address.path, **common)
    tls = optionsForClientTLS(address.host) if address.tls else False
    return txredisapi.lazyConnection(address.host, address.port, ssl_context_factory=tls, **common)


class _Poll:
    """
    A request waiting on another process's leader: claims the key again
    until the leader's outcome is known.
    """

    def __init__(self, state: RedisState, name: str, owner: str, key: str, fingerprint: str, gen: str) -> None:
        self.state = state
        self.name = name
        self.owner = owner
        self.key = key
        self.fingerprint = fingerprint
        self.gen = gen
        self.delay = POLL_FIRST
        self.timer: IDelayedCall | None = None
        self.busy = False
        self.result: Deferred[Wake] = Deferred(self._cancel)
        self._schedule()

    def _schedule(self, delay: float | None = None) -> None:
        self.timer = self.state.clock.callLater(self.delay if delay is None else delay, self._poll)
        self.delay = min(POLL_MAX, self.delay * 1.5)

    def now(self) -> None:
        """
        Poll at once (the leader in this process ended).
        """
        if self.timer is not None and self.timer.active() and not self.busy:
            self.timer.cancel()
            self._schedule(0)

    def _cancel(self, _: Deferred[Wake]) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.state._polls_drop(self)

    def _poll(self) -> None:
        self.timer = None
        self.busy = True
        d = self.state._claim(self.name, self.fingerprint, self.gen)
        d.addCallbacks(self._decided, self._failed)

    def _decided(self, result: tuple[str, str]) -> None:
        self.busy = False
        if self.result.called:
            if result[0] == "lead":
                # Claimed for a request that left meanwhile: free it at once
                # rather than after the lease.
                self.state._release(self.name, result[1])
            return
        kind, value = result
        if kind == "wait":
            self.gen = value
            self._schedule()
            return
        self.state._polls_drop(self)
        if kind == "ended":
            wake = outcome_from_json(json.loads(value))
            self.result.callback(LEAD if wake is None else wake)
        elif kind == "lead":
            self.state._leading[self.name] = value
            self.result.callback(LEAD)
        elif kind == "replay":
            answer = outcome_from_json(json.loads(value))
            assert answer is not None
            self.result.callback(answer)
        elif kind == "in_progress":
            from inkflow.errors import ApiError

            self.result.callback(ApiError("in_progress"))
        else:
            self.result.errback(StateUnavailable(f"unexpected claim while waiting: {kind}"))

    def _failed(self, reason: Failure) -> None:
        self.busy = False
        if self.result.called:
            return
        self.state._polls_drop(self)
        self.result.errback(reason)


class RedisState:
    """
    L{SharedState} in Redis.

    @param redis: a txredisapi connection (L{connect}), or anything with
        C{eval}, C{execute_command} and C{disconnect} (tests).
    @param clock: times the calls out and paces the polls.
    """

    def __init__(
        self,
        redis: Any,
        clock: IReactorTime,
        config: StateConfig,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = CALL_TIMEOUT,
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.config = config
        self.prefix = prefix
        self.timeout = timeout
        #: Scoped key -> generation, for the keys this process leads.
        self._leading: dict[str, str] = {}
        self._polls: dict[str, set[_Poll]] = {}
        self.healthy = True

    @property
    def degraded(self) -> bool:
        return not self.healthy

    def _idem(self, name: str) -> str:
        return f"{self.prefix}idem:{name}"

    def _call(self, f: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        try:
            d = f()
        except Exception as e:
            return fail(StateUnavailable(str(e)))
        d.addTimeout(self.timeout, self.clock)

        def ok(value: Any) -> Any:
            self.healthy = True
            return value

        def failed(reason: Failure) -> Failure:
            self.healthy = False
            if reason.check(StateUnavailable):
                return reason
            return Failure(StateUnavailable(f"redis: {reason.getErrorMessage() or repr(reason.value)}"))

        return d.addCallbacks(ok, failed)

    def _eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        return self._call(lambda: self.redis.eval(script, keys, [str(a) for a in args]))

    def _claim(self, name: str, fingerprint: str, waited: str = "") -> Deferred[tuple[str, str]]:
        entry = self._idem(name)
        gen = secrets.token_hex(8)
        d = self._eval(
            CLAIM,
            [entry, f"{entry}:end:{waited}"],
            [fingerprint, _ms(self.config.lease), gen, waited],
        )
        return d.addCallback(lambda r: (_text(r[0]), _text(r[1])))

    # --- idempotency

    def idem_claim(self, owner: str, key: str, fingerprint: str) -> Deferred[Claim]:
        name = scoped_key(owner, key)

        def decided(result: tuple[str, str]) -> Claim:
            kind, value = result
            if kind == "lead":
                self._leading[name] = value
                return Claim("lead")
            if kind == "replay":
                answer = outcome_from_json(json.loads(value))
                return Claim("replay", answer=answer)  # type: ignore[arg-type]
            if kind == "wait":
                poll = _Poll(self, name, owner, key, fingerprint, value)
                self._polls.setdefault(name, set()).add(poll)
                return Claim("wait", waiting=poll.result)
            return Claim(kind)

        return self._claim(name, fingerprint).addCallback(decided)

    def _polls_drop(self, poll: _Poll) -> None:
        polls = self._polls.get(poll.name)
        if polls is not None:
            polls.discard(poll)
            if not polls:
                del self._polls[poll.name]

    def _wake_local(self, name: str) -> None:
        for poll in list(self._polls.get(name, ())):
            poll.now()

    def idem_streaming(self, owner: str, key: str) -> Deferred[None]:
        name = scoped_key(owner, key)
        gen = self._leading.get(name)
        if gen is None:
            return succeed(None)
        d = self._eval(STREAMING, [self._idem(name)], [gen])
        return d.addCallback(lambda _: self._wake_local(name))

    def idem_finish(self, owner: str, key: str, outcome: Outcome) -> Deferred[None]:
        name = scoped_key(owner, key)
        gen = self._leading.pop(name, None)
        if gen is None:
            return succeed(None)
        entry = self._idem(name)
        if storable(outcome, self.config):
            mode, ttl = "store", self.config.idempotency_ttl
        elif outcome is None:
            mode, ttl = "none", 0.0
        else:
            mode, ttl = "end", 0.0
        payload = json.dumps(outcome_to_json(outcome))
        d = self._eval(FINISH, [entry, f"{entry}:end:{gen}"], [gen, mode, payload, _ms(ttl), _ms(END_TTL)])
        return d.addCallback(lambda _: self._wake_local(name))

    def _release(self, name: str, gen: str) -> None:
        entry = self._idem(name)
        payload = json.dumps(outcome_to_json(None))
        d = self._eval(FINISH, [entry, f"{entry}:end:{gen}"], [gen, "none", payload, 1, 1])
        d.addCallbacks(lambda _: self._wake_local(name), lambda _: None)

    # --- rate limit

    def rate_take(self, bucket: str) -> Deferred[float]:
        if not self.config.rate_limit:
            return succeed(0.0)
        d = self._eval(TAKE, [f"{self.prefix}rate:{bucket}"], [self.config.rate_limit])
        return d.addCallback(lambda r: float(_text(r)))

    # --- executions

    def execution_remember(self, execution_id: str, url_index: int) -> Deferred[None]:
        key = f"{self.prefix}exec:{execution_id}"
        ms = _ms(self.config.execution_ttl)
        d = self._call(lambda: self.redis.execute_command("SET", key, str(url_index), "PX", ms))
        return d.addCallback(lambda _: None)

    def execution_lookup(self, execution_id: str) -> Deferred[int | None]:
        key = f"{self.prefix}exec:{execution_id}"
        ms = _ms(self.config.execution_ttl)
        d = self._call(lambda: self.redis.execute_command("GETEX", key, "PX", ms))

        def found(value: Any) -> int | None:
            if value is None:
                return None
            text = _text(value)
            return int(text) if text.isdigit() else None

        return d.addCallback(found)

    def close(self) -> Deferred[None]:
        for polls in list(self._polls.values()):
            for poll in list(polls):
                poll.result.cancel()
        try:
            d = self.redis.disconnect()
        except Exception:
            return succeed(None)
        if not isinstance(d, Deferred):
            return succeed(None)

        def ignore(reason: Failure) -> None:
            reason.trap(Exception, CancelledError)

        return d.addCallbacks(lambda _: None, ignore)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)
