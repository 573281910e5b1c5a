"""The counters' Redis side: one hash per durable counter, changed only by Lua scripts.

``cnt:<key>`` holds ``durable`` and ``version`` (the PostgreSQL row as last seen), ``pending``
(the sum of the deltas acknowledged to callers and not yet applied, as far as this hash knows) and,
per such delta, a field ``d:<delta id>`` with ``<amount>@<time recorded>``. A read is
``durable + pending``.

Why this is exact, and stays within G5 (docs/design.md: between durable + the acknowledged negative
deltas not yet applied, and durable + the positive ones) when it cannot be:

* The web process publishes a delta (broker confirm) **before** it records ``d:<id>`` here. If the
  publish fails nothing is recorded, so nothing is left counted. If the process dies between the
  two, the delta is in the queue but not here: reads miss it (within the G5 bounds) until the
  worker applies it and ``durable`` catches up.
* After its transaction commits, the worker runs ``apply``: each applied delta's ``d:`` field moves
  into ``durable`` atomically, so the sum does not change. A delta the web process has not recorded
  yet gets a tombstone ``a:<id>`` instead, and the late ``bump`` then records nothing: no double
  count. ``reconcile`` removes tombstones whose bump never came (a web process killed in between).
* ``version`` orders updates: ``durable`` moves only to the next version. An apply that arrives
  before the previous version's (two worker processes' applies crossing) is kept in the hash
  (``v:<version>``, its deltas still pending) and replayed when the gap closes. If the gap stays
  (an apply lost with a crash or a cache outage: past ``STASH_MAX`` batches or ``STASH_AGE_S``),
  the hash is dropped and the next read refills it from PostgreSQL: exact ``durable``, pending
  unknown. ``apply`` never creates a hash, so a late ``apply`` cannot bring back an old value.
* A fill (cache miss) is version-guarded: ``apply`` records the newest applied version in a small
  marker key ``cntv:<key>``, and a fill built from an older PostgreSQL read is refused (the reader
  reads again). This is the stale-set race: a reader that read the row just before a batch
  committed cannot put the old value back.
* A bump that finds no hash fills it first; since the fill may already contain the delta (applied
  between the publish and the bump), the miss path checks the ledger before recording it. So does
  a bump into a hash another reader filled after the delta was published (a late bump: evicted,
  applied, refilled, then the bump).
* One window is left: a fill can read the row just before a batch commits whose deltas the lost
  hash was counting as pending; until that batch's ``apply`` arrives (milliseconds) the hash reads
  low. So for ``FILL_GRACE_S`` after a fill, reads also ask PostgreSQL and report
  ``max(cache, durable)``: a database query per read only just after a miss, never on the hot
  path. (If the worker dies between that commit and its ``apply``, the next batch for the key, or
  ``counters reconcile``, puts the hash right.)
* Eviction or FLUSHALL loses the pending index with the hash; reads fall back to ``durable`` plus
  what is recorded afterwards, low but within bounds, and exact again once the queue drains.
"""

import json
import math
import time
from dataclasses import dataclass

from django_redis import get_redis_connection

PREFIX = "cnt:"
# After a miss refills a counter from PostgreSQL, reads of it also check PostgreSQL for this long
# (the window explained above): far longer than a batch's commit-to-cache gap (milliseconds), and
# nothing a user tunes.
FILL_GRACE_S = 5.0
VERSION_PREFIX = "cntv:"
EPHEMERAL_PREFIX = "eph:"

# KEYS[1] hash; ARGV delta id, amount, now, since, mode. Returns durable + pending; false if the
# hash is missing (the caller fills it from PostgreSQL and calls again); or {0} ("ask the ledger")
# when ``since`` is given and the hash was filled after it: a fill made after the delta's publish
# may already hold the delta (applied before the fill read PostgreSQL), and recording it as
# pending would count it twice. The caller asks the ledger and calls again with mode "pending"
# (not applied: record it, unless the hash was filled again since it asked) or "applied" (the
# hash holds it, or will as the apply's tombstone).
BUMP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local mode = ARGV[5]
if mode ~= 'applied' and ARGV[4] ~= '' then
  local filled = tonumber(redis.call('HGET', KEYS[1], 'filled_at') or '0')
  if filled >= tonumber(ARGV[4]) then return {0} end
end
if redis.call('HDEL', KEYS[1], 'a:' .. ARGV[1]) == 0 and mode ~= 'applied' then
  if redis.call('HSETNX', KEYS[1], 'd:' .. ARGV[1], ARGV[2] .. '@' .. ARGV[3]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'pending', ARGV[2])
  end
end
local v = redis.call('HMGET', KEYS[1], 'durable', 'pending')
return tonumber(v[1]) + tonumber(v[2])
"""
# What ``bump`` returns when the caller must ask the ledger (see BUMP).
ASK_LEDGER = object()

# KEYS[1] hash, KEYS[2] version marker; ARGV durable, version, now. Creates the hash unless it
# holds this or a newer version. Returns durable + pending, or false if a newer version has been
# applied since the caller read PostgreSQL (it reads again).
FILL = """
local latest = tonumber(redis.call('GET', KEYS[2]) or '-1')
if latest > tonumber(ARGV[2]) then return false end
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if current < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'durable', ARGV[1], 'version', ARGV[2], 'pending', 0,
             'filled_at', ARGV[3])
end
local v = redis.call('HMGET', KEYS[1], 'durable', 'pending')
return tonumber(v[1]) + tonumber(v[2])
"""

# KEYS[1] hash, KEYS[2] version marker; ARGV durable, version, now, then delta id / amount pairs
# applied in that version. Never creates the hash: a missing one is filled by the next read.
# Out of order (``v:<version>`` fields): with two worker processes, dropping the hash whenever their
# applies crossed made the next increments refill it from PostgreSQL, ~100 reads per 10 s of
# `make bench` (half its PostgreSQL transactions). A crossing lasts milliseconds.
STASH_MAX = 16
STASH_AGE_S = 2.0
APPLY = """
local durable, version, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if version > tonumber(redis.call('GET', KEYS[2]) or '-1') then
  redis.call('SET', KEYS[2], version)
end
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if current < 0 then return -1 end
local function settle(args, at)
  for i = 4, #args, 2 do
    local id, amount = args[i], args[i + 1]
    if redis.call('HDEL', KEYS[1], 'd:' .. id) == 1 then
      redis.call('HINCRBY', KEYS[1], 'pending', -tonumber(amount))
    else
      redis.call('HSET', KEYS[1], 'a:' .. id, at)
    end
  end
end
if current < version - 1 then
  -- An earlier version's apply has not arrived: two workers' applies crossed, or it was lost.
  -- Keep this one (its deltas stay pending, so reads are unchanged) until the gap closes;
  -- past STASH_MAX batches or STASH_AGE_S seconds, assume it was lost: drop the hash, the
  -- next read refills it from PostgreSQL.
  local stashed = tonumber(redis.call('HGET', KEYS[1], 'stashed') or '0')
  local since = tonumber(redis.call('HGET', KEYS[1], 'stashed_at') or ARGV[3])
  if stashed >= STASH_MAX or now - since > STASH_AGE_S then
    redis.call('DEL', KEYS[1])
    return -1
  end
  if stashed == 0 then redis.call('HSET', KEYS[1], 'stashed_at', ARGV[3]) end
  redis.call('HSET', KEYS[1], 'stashed', stashed + 1, 'v:' .. version, table.concat(ARGV, ' '))
  return current
end
if current == version - 1 then
  redis.call('HSET', KEYS[1], 'durable', durable, 'version', version)
end
settle(ARGV, ARGV[3])
while true do  -- the kept batches that follow this one, in version order
  local nextv = tonumber(redis.call('HGET', KEYS[1], 'version')) + 1
  local kept = redis.call('HGET', KEYS[1], 'v:' .. nextv)
  if not kept then break end
  local args = {}
  for word in string.gmatch(kept, '%S+') do args[#args + 1] = word end
  redis.call('HDEL', KEYS[1], 'v:' .. nextv)
  if redis.call('HINCRBY', KEYS[1], 'stashed', -1) <= 0 then
    redis.call('HDEL', KEYS[1], 'stashed', 'stashed_at')
  end
  redis.call('HSET', KEYS[1], 'durable', args[1], 'version', nextv)
  settle(args, args[3])
end
return current
"""
APPLY_SOURCE = f"local STASH_MAX, STASH_AGE_S = {STASH_MAX}, {STASH_AGE_S}\n" + APPLY


def pending_entry(value: str) -> tuple[int, float]:
    """``(amount, recorded at)`` of a ``d:`` field (older entries hold only the amount)."""
    amount, _, recorded = value.partition("@")
    return int(amount), float(recorded or "inf")


def client():
    return get_redis_connection("default")


def _script(source: str):
    # Not memoised: the client can change (settings overrides in tests); hashing is cheap.
    return client().register_script(source)


def hash_key(key: str) -> str:
    return PREFIX + key


def version_key(key: str) -> str:
    return VERSION_PREFIX + key


@dataclass(frozen=True)
class CachedCounter:
    durable: int
    pending: int
    filled_at: float = 0.0

    @property
    def value(self) -> int:
        return self.durable + self.pending


def bump(
    *, key: str, delta_id: str, amount: int, now: float, since: float | None = None, mode: str = ""
):
    """Record a published delta as pending: the value after it, None if the hash is missing, or
    ASK_LEDGER if the hash was filled after ``since`` (see BUMP)."""
    args = [delta_id, amount, now, "" if since is None else since, mode]
    return _bumped(_script(BUMP)(keys=[hash_key(key)], args=args))


def bump_many(*, bumps: list[tuple[str, str, int, float]], now: float) -> list:
    """``bump`` for many (key, delta id, amount, since) in one round trip (a pipeline): one
    result each, as ``bump`` returns it."""
    script = _script(BUMP)
    pipe = client().pipeline(transaction=False)
    for key, delta_id, amount, since in bumps:
        script(keys=[hash_key(key)], args=[delta_id, amount, now, since, ""], client=pipe)
    return [_bumped(result) for result in pipe.execute()]


def _bumped(result):
    if isinstance(result, list):
        return ASK_LEDGER
    return None if result is None else int(result)


def fill(*, key: str, durable: int, version: int, now: float) -> int | None:
    result = _script(FILL)(keys=[hash_key(key), version_key(key)], args=[durable, version, now])
    return None if result is None else int(result)


# KEYS the hashes; returns durable, pending, filled_at for each (nil where missing). One command
# instead of a pipeline of HMGETs: redis-py packs and parses each command of a pipeline in Python,
# which was most of the time of a 100-counter read (cProfile): 1.96 ms before, 0.66 ms with this.
READ_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'durable', 'pending', 'filled_at')
  out[3 * i - 2], out[3 * i - 1], out[3 * i] = v[1] or false, v[2] or false, v[3] or false
end
return out
"""


def read_many(*, keys: list[str]) -> dict[str, CachedCounter | None]:
    """One round trip for any number of counters; None where the hash is missing."""
    if not keys:
        return {}
    flat = _script(READ_MANY)(keys=[hash_key(key) for key in keys])
    result = {}
    for index, key in enumerate(keys):
        durable, pending, filled_at = flat[3 * index : 3 * index + 3]
        has_value = durable is not None and pending is not None
        result[key] = (
            CachedCounter(int(durable), int(pending), float(filled_at or 0)) if has_value else None
        )
    return result


def apply(
    *, rows: list[tuple[str, int, int]], deltas: dict[str, list[tuple[str, int]]], now: float
):
    """After a batch commit: ``rows`` are (key, durable, version); ``deltas`` per key."""
    script = _script(APPLY_SOURCE)
    pipe = client().pipeline(transaction=False)
    for key, durable, version in rows:
        args: list = [durable, version, now]
        for delta_id, amount in deltas.get(key, []):
            args += [delta_id, amount]
        script(keys=[hash_key(key), version_key(key)], args=args, client=pipe)
    pipe.execute()


# KEYS[1] hash; ARGV delta ids. Forget their pending entries: dead-lettered deltas are out of the
# queue, so reads stop counting them (they are counted again if a replay applies them).
FORGET = """
for i = 1, #ARGV do
  local v = redis.call('HGET', KEYS[1], 'd:' .. ARGV[i])
  if v then
    redis.call('HDEL', KEYS[1], 'd:' .. ARGV[i])
    redis.call('HINCRBY', KEYS[1], 'pending', -tonumber(string.match(v, '^(-?%d+)')))
  end
end
return 0
"""


def forget(*, key: str, delta_ids: list[str]) -> None:
    _script(FORGET)(keys=[hash_key(key)], args=delta_ids)


# An ephemeral counter not changed for this long is dropped: nothing depends on it, and without
# a TTL every key ever counted would stay until evicted, pushing out copies that matter.
EPHEMERAL_TTL_S = 24 * 3600


def ephemeral_incr(*, key: str, amount: int) -> int:
    pipe = client().pipeline(transaction=False)
    pipe.incrby(EPHEMERAL_PREFIX + key, amount)
    pipe.expire(EPHEMERAL_PREFIX + key, EPHEMERAL_TTL_S)
    value, _ = pipe.execute()
    return int(value)


def ephemeral_get_many(*, keys: list[str]) -> dict[str, int]:
    values = client().mget([EPHEMERAL_PREFIX + key for key in keys])
    return {key: int(v or 0) for key, v in zip(keys, values, strict=True)}


# --- apply lag samples, for the operations page ---------------------------------------------

LAG_SAMPLES_KEY = "ops:apply-lag"


def lag_record(*, lags: list[float]) -> None:
    """Remember a batch's publish-to-commit lags (a short rolling window): the oldest, the
    median, the 99th percentile and how many, as ``[time, max, p50, p99, n]``."""
    if not lags:
        return
    ordered = sorted(lags)
    p50 = ordered[(len(ordered) - 1) // 2]
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    sample = [time.time(), ordered[-1], p50, p99, len(ordered)]
    client = get_redis_connection("default")
    pipe = client.pipeline(transaction=False)
    pipe.lpush(LAG_SAMPLES_KEY, json.dumps(sample))
    pipe.ltrim(LAG_SAMPLES_KEY, 0, 999)
    pipe.execute()
