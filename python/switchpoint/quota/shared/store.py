"""The Redis side of quota leases: the key layout and the atomic Lua scripts.

One hash per pool holds everything about it, so every script touches a single key (atomic by
construction, and valid on Redis Cluster). A budget has a pool per window; a shared rate limit
has one per UTC minute for each of its RPM and TPM (switchpoint.quota.shared.rate):

    {prefix}:budget:{name}:{window}:{window_start}     e.g. switchpoint:budget:team-a:day:1709251200
    {prefix}:rate:{name}:{rpm|tpm}:{minute_start}      e.g. switchpoint:rate:acme:rpm:1709251260
      committed       usage reported by every replica in the window
      leased          sum of the out:* fields (kept so a lease need not scan them)
      out:{replica}   what the replica was granted and has not yet reported as spent
      spent:{replica} what the replica has reported as spent
      seq:{reporter}  last report sequence number applied from one replica incarnation
      limit           a budget's limit for the window (nano-USD), and limit_seq where it came
      limit_seq       from: 0 a replica's config, n > 0 the n-th limit set at run time

A budget's limits set at run time (Admin SetBudget, or a config reload that changed the limit)
live in one hash per budget, which replicas read every sync round and offer to each window:

    {prefix}:budget-limit:{name}                      e.g. switchpoint:budget-limit:team-a
      seq             how many limits were set for the budget: the order of the settings
      limit:*         the limit set for every instance, and seq:* its order
      limit:{scope}   the limit set for one instance (e.g. limit:tenant=acme), and seq:{scope}

Amounts are integers: nano-USD for budgets, whole requests or tokens for rate limits. Lua numbers
are doubles, exact for integers up to 2^53, so sums never drift the way repeated float additions
would (budget limits up to ~$9M per window stay exact).
The window start in the key makes windows roll over without any reset step, and each write moves
the key's expiry to a grace period past the window's end, so old windows clean themselves up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

NANOS_PER_USD = 1_000_000_000
# Keys outlive their window by this much, so a replica that was cut off from Redis when the window
# ended can still report that window's spend into the same key when it reconnects.
KEY_GRACE_S = 86_400

# HINCRBY refuses "1e+14", which is how Lua 5.1 prints large numbers: format integers explicitly.
_COMMON = """
local function int(field)
  return tonumber(redis.call('HGET', KEYS[1], field) or '0')
end
local function str(n)
  return string.format('%d', n)
end
local function expire(at)
  if tonumber(at) > 0 then redis.call('EXPIREAT', KEYS[1], at) end
end
"""

# ARGV: replica, want, limit, expire_at, known. Grants what the pool still has, up to `want`.
# `known` is what the replica knows it has reported in the window; Redis holding less means it
# lost data (restarted without persistence, failed over to a lagging replica, evicted the key),
# and the lost spend is committed again first, so the pool does not hand it out a second time.
_RESTORE = """
local replica, want, known = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5])
local restored = known - int('spent:' .. replica)
if restored > 0 then
  redis.call('HINCRBY', KEYS[1], 'committed', str(restored))
  redis.call('HSET', KEYS[1], 'spent:' .. replica, ARGV[5])
else
  restored = 0
end
"""
_GRANT = """
local committed = int('committed')
local grant = math.min(want, limit - committed - int('leased'))
if grant > 0 then
  redis.call('HINCRBY', KEYS[1], 'out:' .. replica, str(grant))
  redis.call('HINCRBY', KEYS[1], 'leased', str(grant))
else
  grant = 0
end
expire(ARGV[4])
"""
_LEASE = (
    _COMMON
    + _RESTORE
    + "local limit = tonumber(ARGV[3])"
    + _GRANT
    + "return {grant, int('out:' .. replica), int('spent:' .. replica), committed, restored}"
)

# A budget's lease: ARGV as _LEASE's, `limit` being an offer, plus limit_seq, the offer's order.
# The pool's own limit is what grants are measured against: the first offer sets it, and only a
# later setting (a higher limit_seq) replaces it, so replicas whose configs disagree all follow
# the first. Past a lowered limit, the caller's unspent lease is taken back down to what the
# limit still leaves (each replica's at its next lease), so no replica can spend it any more.
_BUDGET_LEASE = (
    _COMMON
    + _RESTORE
    + """
local offered_seq = tonumber(ARGV[6])
if not redis.call('HGET', KEYS[1], 'limit') or offered_seq > int('limit_seq') then
  redis.call('HSET', KEYS[1], 'limit', ARGV[3], 'limit_seq', ARGV[6])
end
local limit = int('limit')
local excess = int('committed') + int('leased') - limit
local revoke = math.min(excess, int('out:' .. replica))
if revoke > 0 then
  redis.call('HINCRBY', KEYS[1], 'out:' .. replica, str(-revoke))
  redis.call('HINCRBY', KEYS[1], 'leased', str(-revoke))
end
"""
    + _GRANT
    + """
return {grant, int('out:' .. replica), int('spent:' .. replica), committed, restored,
        limit, int('limit_seq')}
"""
)

# KEYS[1]: a budget's limits hash. ARGV: scope ("*" for every instance), limit. Returns the
# setting's order, which makes it replace any limit set before it.
_SET_LIMIT = (
    _COMMON
    + """
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'limit:' .. ARGV[1], ARGV[2], 'seq:' .. ARGV[1], str(seq))
return seq
"""
)

# ARGV: replica, reporter, seq, spent, expire_at. Applies each (reporter, seq) at most once: a
# report retried after its reply was lost must not be counted twice.
_REPORT = (
    _COMMON
    + """
local replica, seq, spent = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local seq_field = 'seq:' .. ARGV[2]
local applied = 0
if seq > int(seq_field) then
  local out = int('out:' .. replica)
  -- Spend beyond the lease (calls that cost more than estimated, or fail-open spending) is
  -- committed in full but can only use up what was leased.
  local used = math.min(out, spent)
  redis.call('HSET', KEYS[1], 'out:' .. replica, str(out - used), seq_field, ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'leased', str(-used))
  redis.call('HINCRBY', KEYS[1], 'committed', str(spent))
  redis.call('HINCRBY', KEYS[1], 'spent:' .. replica, str(spent))
  applied = 1
end
expire(ARGV[5])
return {applied, int('out:' .. replica), int('spent:' .. replica), int('committed')}
"""
)

# ARGV: replica. Gives the unspent lease back to the pool; returns how much that was.
_GIVE_BACK = (
    _COMMON
    + """
local out = int('out:' .. ARGV[1])
if out > 0 then
  redis.call('HDEL', KEYS[1], 'out:' .. ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'leased', str(-out))
end
return out
"""
)


def usd_to_nanos(usd: float) -> int:
    """Rounds down, so a spend converted here is never reported as more than it was."""
    return math.floor(usd * NANOS_PER_USD)


def nanos_to_usd(nanos: int) -> float:
    return nanos / NANOS_PER_USD


def expire_at(window_end_s: float) -> int:
    """The key's expiry for a window ending at `window_end_s`; 0 (never) for a "total" budget."""
    if math.isinf(window_end_s):
        return 0
    return int(window_end_s) + KEY_GRACE_S


@dataclass(frozen=True, slots=True)
class LeaseReply:
    granted: int
    # This replica's outstanding lease and reported spend, and everyone's, after the call.
    outstanding: int
    reported: int
    committed: int
    # Spend Redis had lost and was given again from `known`.
    restored: int


@dataclass(frozen=True, slots=True)
class BudgetLeaseReply(LeaseReply):
    # The pool's limit after the call, and its limit_seq (0: from a replica's config).
    limit: int
    limit_seq: int


@dataclass(frozen=True, slots=True)
class ReportReply:
    # False: this (reporter, seq) had been applied before; its earlier reply was lost.
    applied: bool
    outstanding: int
    reported: int
    committed: int


class QuotaStore:
    """The lease scripts over one Redis client. Owns the client: `aclose` closes it."""

    def __init__(self, client: Redis, *, key_prefix: str) -> None:
        self._client = client
        self._prefix = key_prefix
        # register_script sends EVALSHA and loads the script on NOSCRIPT (a restarted or
        # failed-over Redis has an empty script cache), so scripts are sent in full only then.
        self._lease = client.register_script(_LEASE)
        self._report = client.register_script(_REPORT)
        self._give_back = client.register_script(_GIVE_BACK)
        self._budget_lease = client.register_script(_BUDGET_LEASE)
        self._set_limit = client.register_script(_SET_LIMIT)

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str, timeout_s: float) -> QuotaStore:
        # No client-side retries: the sync loop is the retry, and a client that backs off for
        # seconds on its own would delay noticing that Redis is gone.
        client = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, key_prefix=key_prefix)

    @property
    def client(self) -> Redis:
        return self._client

    def budget_key(self, name: str, window: str, window_start_s: float) -> str:
        return f"{self._prefix}:budget:{name}:{window}:{int(window_start_s)}"

    def rate_key(self, name: str, unit: str, minute_start_s: float) -> str:
        return f"{self._prefix}:rate:{name}:{unit}:{int(minute_start_s)}"

    def limits_key(self, budget: str) -> str:
        return f"{self._prefix}:budget-limit:{budget}"

    async def lease(
        self, key: str, *, replica: str, want: int, limit: int, expire: int, known: int = 0
    ) -> LeaseReply:
        reply = await self._lease(keys=[key], args=[replica, want, limit, expire, known])
        return LeaseReply(*_ints(reply, 5))

    async def lease_budget(
        self,
        key: str,
        *,
        replica: str,
        want: int,
        limit: int,
        limit_seq: int,
        expire: int,
        known: int = 0,
    ) -> BudgetLeaseReply:
        args: list[str | int] = [replica, want, limit, expire, known, limit_seq]
        reply = await self._budget_lease(keys=[key], args=args)
        return BudgetLeaseReply(*_ints(reply, 7))

    async def set_limit(self, budget: str, scope: str, limit: int) -> int:
        """Sets `budget`'s limit for one instance's `scope` ("*": every instance); returns the
        setting's order."""
        return int(await self._set_limit(keys=[self.limits_key(budget)], args=[scope, limit]))

    async def read_limits(self, budgets: Iterable[str]) -> dict[str, dict[str, int]]:
        """Each budget's limits hash (field -> integer), in one round trip."""
        names = list(budgets)
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.limits_key(name))
        replies = await pipe.execute()
        return {
            name: {_text(field): int(value) for field, value in reply.items()}
            for name, reply in zip(names, replies, strict=True)
        }

    async def report(
        self, key: str, *, replica: str, reporter: str, seq: int, spent: int, expire: int
    ) -> ReportReply:
        reply = await self._report(keys=[key], args=[replica, reporter, seq, spent, expire])
        applied, outstanding, reported, committed = _ints(reply, 4)
        return ReportReply(applied == 1, outstanding, reported, committed)

    async def give_back(self, key: str, *, replica: str) -> int:
        return int(await self._give_back(keys=[key], args=[replica]))

    async def aclose(self) -> None:
        await self._client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ints(reply: Any, count: int) -> list[int]:
    values = [int(v) for v in reply]
    if len(values) != count:
        raise ValueError(f"lease script returned {values!r}, expected {count} integers")
    return values
