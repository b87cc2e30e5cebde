"""A session store on Redis: standalone, Sentinel-managed or Cluster.

Each session is one Redis string under ``key_prefix + session_key``: a
binary header (version, expiry, and since 0.2 the per-user fields of
:class:`~.base.Record`), then the payload. The formats are described in
:mod:`~flask_towersess.stores._header`; records 0.1 wrote (format 1) are
read, saved and touched as they are, and get format 2 on their next save.

The key also carries a Redis expiry (``PXAT``) at the same moment, so Redis
deletes expired sessions by itself: there is nothing to purge and nothing to
migrate. Keeping the version and the expiry in the value lets :meth:`load`
be a single ``GET``.

Since 0.2 the records of each user are indexed in a sorted set,
``key_prefix + "u:{" + tag[:2] + "}" + tag`` (``tag``: 128 bits of SHA-256
of the user id, in hex; its first two digits are a Cluster hash tag):
member = the record's key, score = its expiry in milliseconds, and the
set's own expiry = its greatest score. Entries carry their own deadline,
so the index stays exact with keyspace notifications off, after the app was
down, and on a Cluster: expired entries are dropped by the calls that read
the index, and a listing reads each member's header, so a record that is
gone, retired or of another user is never listed. The index is kept by the
same scripts that write the records, with no extra round trip: records
are kept under a hash tag of their key's first two digits
(:meth:`RedisStore.redis_key`), and on a Cluster a signed-in user's
sessions get keys in the slot of the user's index; see :class:`RedisStore`
for the sessions outside it.

redis-py is imported only when a store is built, so this module imports
without it (``pip install 'flask-towersess[redis]'`` adds it).

.. versionadded:: 0.1
.. versionchanged:: 0.2
    Record format 2 and the per-user index.
"""

from __future__ import annotations

import logging
import sys
import typing as t
from datetime import datetime
from urllib.parse import SplitResult
from urllib.parse import unquote
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from ..errors import ConfigurationError
from ..errors import CreateError
from ..errors import StoreUnavailable
from ..errors import TowerSessError
from ..errors import UpdateError
from ..errors import VersionConflict
from . import _header
from ._epoch import to_epoch_micros
from ._errors import ErrorTranslation
from ._errors import store_unavailable
from ._urls import redact_url
from .base import HASHED_KEY_PATTERN
from .base import KEY_PATTERN
from .base import Counting
from .base import CountingPerUser
from .base import LegacyKeys
from .base import PerUserIndex
from .base import Record
from .base import SessionStore
from .base import check_key
from .base import check_user_id
from .base import recency
from .base import refuse_record
from .base import short_key
from .base import utcnow

if t.TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster
    from redis.sentinel import Sentinel

    #: The clients a :class:`RedisStore` can wrap. A Sentinel-managed master
    #: (``Sentinel(...).master_for(name)``) is a ``Redis``. Unparametrized:
    #: redis-py's own annotations are not generic, types-redis's are.
    RedisClient: t.TypeAlias = "Redis | RedisCluster"

__all__ = ["RedisStore"]

logger = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "session:"

#: Port numbers assumed when a ``redis+sentinel://`` or ``redis+cluster://``
#: host has none.
SENTINEL_DEFAULT_PORT = 26379
CLUSTER_DEFAULT_PORT = 6379

#: Client options :meth:`RedisStore.from_url` uses unless told otherwise. A
#: web request must not hang on a dead server: 5 s bounds every connect and
#: every reply. ``retry`` (one retry, see :func:`_default_retry`) is added
#: at call time because building it needs redis-py.
DEFAULT_CLIENT_OPTIONS: dict[str, t.Any] = {
    "socket_timeout": 5.0,
    "socket_connect_timeout": 5.0,
}

#: What :meth:`RedisStore.cache_from_url` uses instead. A cache in front of a
#: durable store must fail fast: a frozen cache would otherwise cost every
#: request the full timeout before the durable store answers. A quarter of a
#: second is a hundred times a loopback or same-zone round trip. A timeout
#: is not retried (the caching store stops calling the cache for a while
#: instead); a reset connection is, once.
CACHE_CLIENT_OPTIONS: dict[str, t.Any] = {
    "socket_timeout": 0.25,
    "socket_connect_timeout": 0.25,
}

# The value header (formats 1 and 2) is in _header.py, shared with the
# memcached store. A tag byte first, so a value this store did not write
# (another app, Flask-Session's pickles under the same "session:" prefix) is
# recognised and ignored instead of being misread, and so a later format can
# live next to these.

# Replies of the save script.
_SAVED = 1
_MISSING = 0
_CONFLICT = -1

# Helpers every script starts with. A per-user index is a sorted set
# "<prefix>u:{<index tag>}": member = a record's full key, score = the
# record's expiry (ms), and the set's own expiry = its greatest score, so
# that entries and the index end by themselves, with no keyspace
# notification and no purge. The braces make the tag a Cluster hash tag.
_LUA_HELPERS = """
-- GETRANGE, '' for a key of another type (not a record either).
local function getrange(k, first, last)
  local v = redis.pcall('GETRANGE', k, first, last)
  if type(v) == 'table' then
    if string.find(v.err, 'WRONGTYPE', 1, true) then return '' end
    error(v)  -- any other error (an ACL refusal) as it was
  end
  return v
end
local function i64(s, i)
  local n = 0
  for j = i, i + 7 do n = n * 256 + string.byte(s, j) end
  if string.byte(s, i) >= 128 then n = n - 18446744073709551616 end
  return n
end
local function u16(s, i)
  return string.byte(s, i) * 256 + string.byte(s, i + 1)
end
-- The index tag in the first bytes of a value ('' if none, or format 1).
local function tag_of(h)
  if string.byte(h, 1) ~= 0xF2 or #h < 28 then return '' end
  return string.sub(h, 29, 28 + string.byte(h, 28))
end
-- The whole header of a format-2 record (without the payload), or ''.
local function header(k)
  local h = getrange(k, 0, 26)
  if #h < 27 or string.byte(h, 1) ~= 0xF2 then return '' end
  return getrange(k, 0, 26 + u16(h, 26))
end
-- The user id in a format-2 header, or nil.
local function owner(h)
  local at = 29 + string.byte(h, 28) + 8
  if #h < at + 1 then return nil end
  local n = u16(h, at)
  if n == 65535 then return nil end
  return string.sub(h, at + 2, at + 1 + n)
end
-- The index's expiry is its greatest score (none left: the set is gone).
local function fix_ttl(idx)
  local top = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
  if top[2] then redis.call('PEXPIREAT', idx, top[2]) end
end
-- The index of a tag: its first two digits are the Cluster hash tag, as
-- the first two of a stored key are its record's (see RedisStore.redis_key).
local function index_key(prefix, tag)
  return prefix .. 'u:{' .. string.sub(tag, 1, 2) .. '}' .. tag
end
-- Whether this script may use the index of tag, or the record of full key
-- m: group '*' (standalone, Sentinel) reaches every key; on a Cluster
-- group is the hash tag of the keys the script was given ('' for a key
-- without one), and only keys of that slot are reachable.
local function reachable(tag, group)
  return group == '*' or string.sub(tag, 1, 2) == group
end
local function member_here(m, prefix, group)
  return group == '*'
    or string.sub(m, #prefix + 1, #prefix + 4) == '{' .. group .. '}'
end
-- Whether a script may write the index idx it did not declare: always but
-- on a Cluster, where only if idx is on this node now (while its slot
-- migrates it may have moved, or not arrived: the caller then writes it
-- declared, which follows the Cluster's redirection).
local function index_here(idx, group)
  return group == '*' or redis.pcall('EXISTS', idx) == 1
end
-- The header of a member of an index (see header()), or nil if it cannot
-- be told here: on a Cluster a record this script did not declare may be
-- on another node while its slot migrates (a command on it errs, or finds
-- nothing), so the caller reads it, declared.
local function member_header(m, group)
  if group == '*' then return header(m) end
  local ok, h = pcall(header, m)
  if not ok or h == '' then return nil end
  return h
end
local function unindex(prefix, tag, k)
  if tag == '' then return end
  local idx = index_key(prefix, tag)
  if redis.call('ZREM', idx, k) == 1 then fix_ttl(idx) end
end
local function index(idx, k, score)
  if redis.call('EXISTS', k) == 0 then
    -- Stored already expired: Redis dropped it at once.
    if redis.call('ZREM', idx, k) == 1 then fix_ttl(idx) end
    return
  end
  redis.call('ZADD', idx, score, k)
  fix_ttl(idx)
end
"""

# Create a record of a user and index it, in one atomic step (on a Cluster,
# when the record's key is in its user's slot).
_CREATE_SCRIPT = (
    _LUA_HELPERS
    + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PXAT', ARGV[2]) then
  return 0
end
index(KEYS[2], KEYS[1], ARGV[2])
return 1
"""
)

# Compare-and-set in one round trip. The script runs atomically on the
# server, so no other client can slip a write between the check and the SET.
# A missing key is reported, never recreated (a logout elsewhere must stick).
# Only the header's first bytes are read: GETRANGE of a missing key is the
# empty string, which no record is. Either format is compared by its
# version. The index entry moves with the user: out of the old user's
# index (its tag read from the old header), into KEYS[2] (the new user's,
# if the caller gives it). ARGV[6] = the group (see reachable()): an old
# index out of reach is left to the caller, and its tag returned.
_SAVE_SCRIPT = (
    _LUA_HELPERS
    + """
local h = getrange(KEYS[1], 0, 59)
if h == '' then
  return {0, ''}
end
local f = string.byte(h, 1)
if (f ~= 0xF1 and f ~= 0xF2) or string.sub(h, 2, 9) ~= ARGV[1] then
  return {-1, ''}
end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
local old = tag_of(h)
local left = ''
if old ~= '' and (old ~= ARGV[4] or redis.call('EXISTS', KEYS[1]) == 0) then
  if reachable(old, ARGV[6]) and index_here(index_key(ARGV[5], old), ARGV[6]) then
    unindex(ARGV[5], old, KEYS[1])
  else
    left = old
  end
end
if KEYS[2] then
  index(KEYS[2], KEYS[1], ARGV[3])
end
return {1, left}
"""
)

# Move the expiry without sending or rewriting the payload: patch the
# header in place (SETRANGE keeps the key's TTL and value: the expiry, and
# in format 2 last_active_at next to it) and move the TTL and the index
# entry. A key that is missing, or is not a record, is left alone: SETRANGE
# would otherwise create it. ARGV[5] = the group. Returns the index tag of
# a record whose index is out of reach (a Cluster record outside its user's
# slot), for the caller to fix; '' if none; nil for no record.
_TOUCH_SCRIPT = (
    _LUA_HELPERS
    + """
local h = getrange(KEYS[1], 0, 59)
local f = string.byte(h, 1)
if f == 0xF1 and #h >= 17 then
  redis.call('SETRANGE', KEYS[1], 9, ARGV[1])
elseif f == 0xF2 and #h >= 27 then
  redis.call('SETRANGE', KEYS[1], 9, ARGV[1] .. ARGV[3])
else
  return false
end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
local tag = tag_of(h)
if tag == '' then return '' end
local idx = index_key(ARGV[4], tag)
if reachable(tag, ARGV[5]) and index_here(idx, ARGV[5]) then
  index(idx, KEYS[1], ARGV[2])
  return ''
end
return tag
"""
)

# Delete records and their index entries. ARGV[2] = the group (on a
# Cluster, one key). Returns, per key, the index tag of an entry out of
# reach, for the caller to drop ('' for none).
_DELETE_SCRIPT = (
    _LUA_HELPERS
    + """
local left = {}
for i, k in ipairs(KEYS) do
  local tag = tag_of(getrange(k, 0, 59))
  redis.call('DEL', k)
  if tag ~= '' and reachable(tag, ARGV[2])
      and index_here(index_key(ARGV[1], tag), ARGV[2]) then
    unindex(ARGV[1], tag, k)
    tag = ''
  end
  left[i] = tag
end
return left
"""
)

# The live entries of one index, as {{member, header, ...}, {member, ...}}:
# first drop the entries past their deadline, then those whose record is
# gone, is not of format 2 or is in another index (its user changed, and a
# Cluster caller has not moved the entry yet). ARGV[1] = now (ms), ARGV[2] =
# the index tag, ARGV[3] = the key prefix, ARGV[4] = the group. Members out
# of reach (on a Cluster, records outside the user's slot) come second, for
# the caller to read.
_LIST_SCRIPT = (
    _LUA_HELPERS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local out, away = {}, {}
local dropped = false
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local h = nil
  if member_here(m, ARGV[3], ARGV[4]) then h = member_header(m, ARGV[4]) end
  if h == nil then
    away[#away + 1] = m
  else
    if h == '' or tag_of(h) ~= ARGV[2] then
      redis.call('ZREM', KEYS[1], m)
      dropped = true
    else
      out[#out + 1] = m
      out[#out + 1] = h
    end
  end
end
if dropped then fix_ttl(KEYS[1]) end
return {out, away}
"""
)

# End sessions of one user, atomically. ARGV: now (ms), index tag, user id,
# now (microseconds), keep (full key or ''), limit (-1: end all but keep),
# key prefix, group, then the full keys to end ('*' alone: all). Survivors
# of a trim: the `limit` most recent by (last_active_at, key), descending,
# plus keep. Returns {the full keys ended, the live entries out of reach
# (on a Cluster, records outside the user's slot) among those to end, 1};
# a trim that meets one of those ends nothing and returns 0 last, since it
# cannot rank a record it cannot read.
_END_SCRIPT = (
    _LUA_HELPERS
    + """
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local now = tonumber(ARGV[4])
local wanted = nil
if ARGV[9] ~= '*' then
  wanted = {}
  for i = 9, #ARGV do wanted[ARGV[i]] = true end
end
local limit = tonumber(ARGV[6])
local live, away = {}, {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local h = nil
  if member_here(m, ARGV[7], ARGV[8]) then h = member_header(m, ARGV[8]) end
  if h == nil then
    if m ~= ARGV[5] and (wanted == nil or wanted[m]) then away[#away + 1] = m end
  else
    if h == '' or tag_of(h) ~= ARGV[2] or i64(h, 10) <= now then
      redis.call('ZREM', KEYS[1], m)
    elseif owner(h) == ARGV[3] then
      live[#live + 1] = {m, i64(h, 18)}
    end
  end
end
if limit >= 0 and #away > 0 then
  fix_ttl(KEYS[1])
  return {{}, away, 0}
end
if limit >= 0 then
  table.sort(live, function(a, b)
    if a[2] ~= b[2] then return a[2] > b[2] end
    return before(b[1], a[1])
  end)
end
local ended = {}
for i, e in ipairs(live) do
  local m = e[1]
  if m ~= ARGV[5] and i > limit and (wanted == nil or wanted[m]) then
    redis.call('DEL', m)
    redis.call('ZREM', KEYS[1], m)
    ended[#ended + 1] = m
  end
end
fix_ttl(KEYS[1])
return {ended, away, 1}
"""
)

# Cluster only, for records outside their user's slot: the index's own
# commands, in its slot. ARGV[1] = 'add' (ARGV[2] = score, then members:
# ZADD GT, a deadline never moves back, as a save that raced may have
# raised it) or 'rem' (members).
_INDEX_SCRIPT = (
    _LUA_HELPERS
    + """
local idx = KEYS[1]
if ARGV[1] == 'add' then
  for i = 3, #ARGV do redis.call('ZADD', idx, 'GT', ARGV[2], ARGV[i]) end
else
  for i = 2, #ARGV do redis.call('ZREM', idx, ARGV[i]) end
end
fix_ttl(idx)
return 1
"""
)

# Cluster only: the header of one record ('' if none, or format 1).
_HEADER_SCRIPT = (
    _LUA_HELPERS
    + """
return header(KEYS[1])
"""
)

# Cluster only: delete one record if it is a live record of user ARGV[1]
# (ARGV[2] = now in microseconds) and, if ARGV[3] is given, still at the
# version and last activity (header bytes 2-9 and 18-25) a trim chose it
# by. Returns {1, tag} if deleted, {0, tag} if there is no live format-2
# record, {-1, tag} if it is another user's, {-2, tag} if it changed.
_END_ONE_SCRIPT = (
    _LUA_HELPERS
    + """
local h = header(KEYS[1])
if h == '' or i64(h, 10) <= tonumber(ARGV[2]) then return {0, ''} end
local tag = tag_of(h)
if owner(h) ~= ARGV[1] then return {-1, tag} end
if ARGV[3] and string.sub(h, 2, 9) .. string.sub(h, 18, 25) ~= ARGV[3] then
  return {-2, tag}
end
redis.call('DEL', KEYS[1])
return {1, tag}
"""
)


def _require_driver() -> None:
    """Fail with a clear message when redis-py is not installed."""
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "RedisStore needs the redis package. Install it with"
            " pip install 'flask-towersess[redis]'."
        ) from exc


def _default_retry(*, on_timeout: bool = True) -> t.Any:
    # One retry, quickly: enough to replace a pooled connection that a
    # server restart or a Sentinel failover closed, without multiplying the
    # socket timeout by redis-py's own default of ten attempts.
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError
    from redis.exceptions import TimeoutError
    from redis.retry import Retry

    errors = (ConnectionError, TimeoutError) if on_timeout else (ConnectionError,)
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), 1, supported_errors=errors)


def _pxat(micros: int) -> int:
    # Rounded down, so Redis drops the key no later than the record expires;
    # at least 1 because Redis rejects a zero or negative PXAT, and 1 ms
    # after the epoch is just as much in the past.
    return max(1, micros // 1000)


class _Script(t.Protocol):
    """What ``register_script`` returns: a redis-py
    :class:`~redis.commands.core.Script`, called with keys and arguments."""

    def __call__(
        self,
        keys: t.Sequence[str],
        args: t.Sequence[bytes | str | int],
        client: t.Any = None,
    ) -> t.Any: ...  # pragma: no cover


class _Commands(t.Protocol):
    """The part of a redis-py client this store uses.

    ``Redis`` and ``RedisCluster`` both provide it; typing against it keeps
    the store independent of how each client class is annotated.
    """

    def get(self, name: str) -> bytes | None: ...  # pragma: no cover

    def set(
        self, name: str, value: bytes, *, nx: bool, pxat: int
    ) -> bool | None: ...  # pragma: no cover

    def delete(self, *names: str) -> int: ...  # pragma: no cover

    def exists(self, *names: str) -> int: ...  # pragma: no cover

    def ping(self) -> t.Any: ...  # pragma: no cover

    def scan_iter(
        self, match: str, count: int, **options: t.Any
    ) -> t.Iterator[bytes]: ...  # pragma: no cover

    def register_script(self, script: str) -> _Script: ...  # pragma: no cover


class RedisStore(SessionStore, Counting, PerUserIndex, CountingPerUser, LegacyKeys):
    """Keep sessions in Redis, expired by Redis's own TTL.

    :param client: a redis-py :class:`redis.Redis`, a
        :class:`redis.cluster.RedisCluster`, or a Sentinel-managed master
        (``Sentinel(...).master_for("mymaster")``). It is used as is, and
        :meth:`close` leaves it open: it belongs to the caller. It must not
        decode responses (``decode_responses=False``, the default), since
        records are binary.
    :param key_prefix: prepended to every session key; only keys under it
        are ever read or written.

    Every request-path operation is one round trip: ``GET`` to load,
    ``SET NX PXAT`` to create an anonymous session, and one Lua script each
    to create a user's session, save (compare-and-set), touch and delete,
    which keep the per-user index in the same script. Connection failures
    and timeouts raise :class:`~flask_towersess.errors.StoreUnavailable`
    with the redis-py error as ``__cause__``; refused credentials, ACL
    permissions or database number raise
    :class:`~flask_towersess.errors.ConfigurationError`.

    On a Cluster the same holds: the session layer gives a signed-in
    user's sessions keys in the hash slot of the user's index
    (:meth:`colocation_prefix`, :meth:`redis_key`), so one script reaches
    both. A session outside that slot (moved from a 0.1 key, or keyed
    before its user was set by a script of the app's) costs what a Cluster
    cost before: ``create`` and ``save`` send the index's ``ZADD GT`` in
    the same pipeline (two commands when two masters hold them), a save
    that takes it from its user adds one round trip, ``touch`` and
    ``delete`` add one, and ``sessions_of``, ``delete_sessions_of`` and
    ``trim_sessions_of`` add one request per master holding such sessions
    and one to the index (the trim is then not atomic, see it). So do keys
    whose slot is being migrated while a Cluster reshards: no script
    writes an index it did not declare on a node that does not hold it, or
    drops an entry whose record it cannot see; the store then reads and
    writes those keys declared, which follows the Cluster's redirections.
    Anonymous records cost nothing more anywhere.

    A failed ``SET NX`` or compare-and-set on a Cluster may leave an entry
    whose record is not that user's: listings skip it and drop it, and it
    ends at its deadline anyway.

    Needs Redis 6.2 or later (``PXAT``, ``ZADD GT``).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        No ``count_expired()``, ``purge_expired()`` or ``migrate()``: Redis
        expires sessions by itself and there is nothing to create, so the
        store is neither :class:`~.base.Purging` nor :class:`~.base.Migrating`.
        It is :class:`~.base.Counting`: :meth:`count_live` scans the keys.
    .. versionchanged:: 0.2
        :class:`~.base.PerUserIndex`, :class:`~.base.CountingPerUser` and
        :class:`~.base.LegacyKeys`; records written in format 2.
    """

    expires_natively = True
    url_schemes = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")

    def __init__(
        self, client: RedisClient, *, key_prefix: str = DEFAULT_KEY_PREFIX
    ) -> None:
        _require_driver()
        _check_client(client)
        if not isinstance(key_prefix, str):
            raise ConfigurationError(
                f"key_prefix must be a str, got {type(key_prefix).__name__}."
            )
        #: The redis-py client, exactly as given (or as :meth:`from_url` built it).
        self.client: RedisClient = client
        self.key_prefix = key_prefix
        self._commands = t.cast("_Commands", client)
        # redis-py's Script: register_script only hashes the script; each
        # call is an EVALSHA, and a server that does not know the script
        # (a restart, a failover, a new cluster node) gets a SCRIPT LOAD
        # (on every primary, on a Cluster) and the EVALSHA again.
        self._save_script = self._commands.register_script(_SAVE_SCRIPT)
        self._touch_script = self._commands.register_script(_TOUCH_SCRIPT)
        self._create_script = self._commands.register_script(_CREATE_SCRIPT)
        self._delete_script = self._commands.register_script(_DELETE_SCRIPT)
        self._list_script = self._commands.register_script(_LIST_SCRIPT)
        self._end_script = self._commands.register_script(_END_SCRIPT)
        # The rest of redis-py's API (pipelines, EVAL, the Cluster's nodes).
        self._client: t.Any = client
        self._cluster = _is_cluster(client)
        if self._cluster:
            _check_cluster_prefix(key_prefix)
        from redis.exceptions import ResponseError

        self._unavailable_errors = _unavailable_errors()
        # Every call runs in this; _translate sorts the errors out.
        # ResponseError is among them for the settings the server refuses
        # with a plain one ("DB index is out of range"); any other is raised
        # as it was.
        self._translated_errors = ErrorTranslation(
            self._unavailable_errors + (ResponseError,), self._translate
        )
        self._response_error = ResponseError
        # What close() calls: only closers of what from_url built. A client
        # the caller passed in is theirs to close.
        self._owned: list[t.Callable[[], None]] = []
        self._where = _describe_client(client)

    # -- building --------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        **client_options: t.Any,
    ) -> RedisStore:
        """Build a store and its own client from a URL.

        - ``redis://[[user]:password@]host[:port][/db]``,
          ``rediss://...`` (TLS) and ``unix://[[user]:password@]/path?db=N``:
          :meth:`redis.Redis.from_url`, query options included.
        - ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``:
          a :class:`redis.sentinel.Sentinel` over the listed Sentinels and
          its master for ``service``. The credentials are the master's; give
          the Sentinels theirs with ``sentinel_kwargs={"password": ...}``.
        - ``redis+cluster://[[user]:password@]host:port[,host:port...]``:
          a :class:`redis.cluster.RedisCluster` started from those nodes.

        ``client_options`` go to the redis-py client (``ssl_ca_certs``,
        ``max_connections``, ...). Unless given, ``socket_timeout`` and
        ``socket_connect_timeout`` are 5 s and ``retry`` is one quick retry.
        The store owns this client: :meth:`close` closes it.

        :raises ConfigurationError: the URL cannot be used, or redis-py is
            not installed.
        :raises StoreUnavailable: a Cluster URL whose nodes cannot be
            reached (the Cluster client connects at once; the others connect
            on first use).
        """
        _require_driver()
        defaults = {**DEFAULT_CLIENT_OPTIONS, "retry": _default_retry()}
        return cls._build(url, key_prefix, {**defaults, **client_options})

    @classmethod
    def cache_from_url(
        cls,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        **client_options: t.Any,
    ) -> RedisStore:
        """Like :meth:`from_url`, with the defaults of a cache in front of a
        durable store (``SESSION_CACHE``): ``socket_timeout`` and
        ``socket_connect_timeout`` are 0.25 s, and a timeout is not retried.
        See :data:`CACHE_CLIENT_OPTIONS`.

        .. versionadded:: 0.2
        """
        _require_driver()
        defaults = {**CACHE_CLIENT_OPTIONS, "retry": _default_retry(on_timeout=False)}
        return cls._build(url, key_prefix, {**defaults, **client_options})

    @classmethod
    def _build(cls, url: str, key_prefix: str, options: dict[str, t.Any]) -> RedisStore:
        scheme = _split(url).scheme.lower()
        owned: list[t.Callable[[], None]] = []
        client: RedisClient
        if scheme in ("redis", "rediss", "unix"):
            client = _client_from_url(url, options)
        elif scheme == "redis+sentinel":
            sentinel, client = _sentinel_client(url, options)
            owned.append(lambda: _close_sentinel(sentinel))
        elif scheme == "redis+cluster":
            client = _cluster_client(url, options)
        else:
            raise ConfigurationError(
                f"RedisStore cannot use a {scheme or 'scheme-less'!r} URL; use"
                f" one of {', '.join(s + '://' for s in cls.url_schemes)}."
            )
        # The client first: the master client before its Sentinel, the
        # reverse of how they were built.
        owned.insert(0, client.close)
        try:
            store = cls(client, key_prefix=key_prefix)
        except BaseException:
            for close in owned:
                close()
            raise
        store._owned = owned
        store._where = redact_url(url)
        return store

    @classmethod
    def accepts(cls, obj: object) -> bool:
        """Whether ``obj`` is a redis-py client (``Redis`` or ``RedisCluster``).

        Never imports redis: if redis-py has not been imported yet, nothing
        can be one of its clients.
        """
        client_mod = sys.modules.get("redis.client")
        cluster_mod = sys.modules.get("redis.cluster")
        kinds = tuple(
            kind
            for kind in (
                getattr(client_mod, "Redis", None),
                getattr(cluster_mod, "RedisCluster", None),
            )
            if isinstance(kind, type)
        )
        return bool(kinds) and isinstance(obj, kinds)

    # -- the store contract ------------------------------------------------

    def redis_key(self, key: str) -> str:
        """The Redis key the record of ``key`` is kept under.

        A stored key of 64 lowercase hex digits (the SHA-256 of a cookie's key, see
        :func:`~flask_towersess.session.stored_key`) is kept under
        ``key_prefix + "{" + key[:2] + "}" + key``: its first two digits are
        its Cluster hash tag, and its user's index has the same one
        (:meth:`colocation_prefix`), so that one script reaches both. Other
        keys (those 0.1 wrote) are kept under ``key_prefix + key``.

        .. versionadded:: 0.2
        """
        if _is_hashed_key(key):
            return f"{self.key_prefix}{{{key[:2]}}}{key}"
        return self.key_prefix + key

    _key = redis_key

    def colocation_prefix(self, user_id: str) -> str:
        """On a Cluster, the first two digits of the tag of ``user_id``'s
        index: the session layer gives the sessions of a user keys that
        begin with them, which puts each record in the slot of its user's
        index. ``""`` on standalone Redis and Sentinel, where one script
        reaches every key.

        .. versionadded:: 0.2
        """
        if not self._cluster:
            return ""
        return _header.index_tag(check_user_id(user_id))[:2]

    def _group(self, key: str) -> str:
        """The ``group`` argument of the scripts for the record of ``key``:
        ``"*"`` (every key reachable) but on a Cluster, where it is the
        record's hash tag (``""`` if it has none: nothing else is
        reachable)."""
        if not self._cluster:
            return "*"
        return key[:2] if _is_hashed_key(key) else ""

    def _reachable(self, key: str, tag: str) -> bool:
        """Whether a script given the record of ``key`` may use the index of
        ``tag`` (same slot, or not a Cluster)."""
        return not self._cluster or (
            _is_hashed_key(key) is not None and key[:2] == tag[:2]
        )

    def _key_of(self, name: bytes) -> bytes:
        """The record key (as stored) in the Redis key ``name``, which
        begins with :attr:`key_prefix`."""
        rest = name[len(self.key_prefix.encode()) :]
        if rest[:1] == b"{" and rest[3:4] == b"}" and rest[1:3] == rest[4:6]:
            return rest[4:]
        return rest

    def _translate(self, exc: Exception) -> TowerSessError | None:
        problem = _misconfiguration(exc)
        if problem is not None:
            return self._misconfigured(self._where, problem, logger)
        if isinstance(exc, self._unavailable_errors):
            return store_unavailable(self._where, exc, logger)
        return None

    def _index_key(self, tag: str) -> str:
        return f"{self.key_prefix}u:{{{tag[:2]}}}{tag}"

    def load(self, key: str) -> Record | None:
        check_key(key)
        with self._translated_errors:
            try:
                value = self._commands.get(self._key(key))
            except self._response_error as exc:
                if "WRONGTYPE" not in str(exc):
                    raise
                # A hash, list or set under the key: no session record either.
                refuse_record("RedisStore", key, "the key holds no string value")
                return None
        if value is None:
            return None
        return _header.parse("RedisStore", key, value, self.key_prefix)

    def create(self, record: Record) -> None:
        check_key(record.key)
        user_id = record.user_id
        tag = "" if user_id is None else _header.index_tag(check_user_id(user_id))
        micros = to_epoch_micros(record.expires_at)
        value = _header.pack_v2(record, micros, tag)
        name = self._key(record.key)
        pxat = _pxat(micros)
        # NX makes the existence check and the write one atomic step; the
        # expiry is in the same command so no key ever lives without a TTL.
        # An expiry already past stores nothing live: Redis drops the key.
        with self._translated_errors:
            if not tag:
                created = self._commands.set(name, value, nx=True, pxat=pxat)
            elif self._reachable(record.key, tag):
                created = self._create_script(
                    [name, self._index_key(tag)], [value, pxat]
                )
            else:
                # A Cluster record outside its user's slot (a key chosen
                # before the log-in, or by a script): the record and the
                # index entry go in one pipeline (one round trip of latency,
                # a command on each master). Should the SET NX fail, the
                # entry names a record that is not this user's: listings
                # skip it, and it ends at its deadline.
                pipe = self._client.pipeline(transaction=False)
                pipe.set(name, value, nx=True, pxat=pxat)
                self._pipe_eval(
                    pipe, _INDEX_SCRIPT, self._index_key(tag), "add", pxat, name
                )
                created = pipe.execute()[0]
        if not created:
            raise CreateError(f"a session with key {short_key(record.key)} exists")

    def save(self, record: Record, expected_version: int) -> None:
        check_key(record.key)
        user_id = record.user_id
        tag = "" if user_id is None else _header.index_tag(check_user_id(user_id))
        micros = to_epoch_micros(record.expires_at)
        value = _header.pack_v2(record, micros, tag)
        name = self._key(record.key)
        pxat = _pxat(micros)
        args: list[bytes | str | int] = [
            _header.VERSION.pack(expected_version),
            value,
            pxat,
            tag.encode(),
            self.key_prefix.encode(),
            self._group(record.key),
        ]
        with self._translated_errors:
            if not tag or self._reachable(record.key, tag):
                keys = [name, self._index_key(tag)] if tag else [name]
                result, left = self._save_script(keys, args)
            else:
                result, left = self._save_apart(name, tag, micros, pxat, args)
            if result == _SAVED and left:
                # A Cluster record that was outside its old user's slot
                # (a retired or logged-out key): one more round trip.
                self._client.eval(
                    _INDEX_SCRIPT, 1, self._index_key(left.decode()), "rem", name
                )
        if result == _SAVED:
            return
        if result == _MISSING:
            raise UpdateError("the session no longer exists")
        if result == _CONFLICT:
            raise VersionConflict(
                f"expected version {expected_version}; the session was saved"
                f" by another request meanwhile"
            )
        raise RuntimeError(f"unexpected reply from the save script: {result!r}")

    def _save_apart(
        self,
        name: str,
        tag: str,
        micros: int,
        pxat: int,
        args: list[bytes | str | int],
    ) -> tuple[int, bytes]:
        """Cluster: save a user's record outside the user's slot."""
        if micros <= to_epoch_micros(utcnow()):
            # Saved expired (a retirement): no entry to add; the script
            # reports the one to drop.
            result, left = self._save_script([name], args)
            return result, left
        # The compare-and-set and the new index entry in one pipeline; a
        # failed compare-and-set leaves an entry that listings skip and
        # that ends at its deadline.
        pipe = self._client.pipeline(transaction=False)
        self._pipe_eval(pipe, _SAVE_SCRIPT, name, *args)
        self._pipe_eval(pipe, _INDEX_SCRIPT, self._index_key(tag), "add", pxat, name)
        (result, left), _ = pipe.execute()
        return result, left

    def touch(self, key: str, expires_at: datetime) -> None:
        check_key(key)
        micros = to_epoch_micros(expires_at)
        name = self._key(key)
        pxat = _pxat(micros)
        now = to_epoch_micros(utcnow())
        with self._translated_errors:
            tag = self._touch_script(
                [name],
                [
                    _header.VERSION.pack(micros),
                    pxat,
                    _header.VERSION.pack(now),
                    self.key_prefix.encode(),
                    self._group(key),
                ],
            )
            if tag:
                # A Cluster record outside its user's slot: one more round
                # trip, to the index.
                op = ("add", pxat) if micros > now else ("rem",)
                index = self._index_key(tag.decode("ascii", "replace"))
                self._client.eval(_INDEX_SCRIPT, 1, index, *op, name)

    def delete(self, key: str) -> None:
        check_key(key)
        name = self._key(key)
        with self._translated_errors:
            (tag,) = self._delete_script([name], [self.key_prefix, self._group(key)])
            if tag:
                # A Cluster record outside its user's slot.
                index = self._index_key(tag.decode("ascii", "replace"))
                self._client.eval(_INDEX_SCRIPT, 1, index, "rem", name)

    def delete_many(self, keys: t.Collection[str]) -> None:
        """Delete the records of ``keys`` and their index entries: one
        script on standalone Redis; on a Cluster, one pipelined request
        per master holding the records (which drops the entries of records
        kept in their user's slot), then, only for records outside it, one
        per master holding their users' indexes.

        .. versionadded:: 0.2
        """
        checked = [check_key(key) for key in keys]
        names = [self._key(key) for key in checked]
        if not names:
            return
        with self._translated_errors:
            if not self._cluster:
                self._delete_script(names, [self.key_prefix, "*"])
                return
            pipe = self._client.pipeline(transaction=False)
            for key, name in zip(checked, names):
                self._pipe_eval(
                    pipe, _DELETE_SCRIPT, name, self.key_prefix, self._group(key)
                )
            by_tag: dict[str, list[str]] = {}
            for name, (tag,) in zip(names, pipe.execute()):
                if tag:
                    by_tag.setdefault(tag.decode("ascii", "replace"), []).append(name)
            self._unindex_many(by_tag)

    def _pipe_eval(self, pipe: t.Any, script: str, key: str, *args: t.Any) -> None:
        """Cluster: queue ``EVAL script 1 key *args`` in ``pipe``.

        EVAL, not EVALSHA: redis-py refuses EVALSHA in a Cluster pipeline
        (a NOSCRIPT there could not be retried alone). The node is named:
        left to find it, redis-py 8 asks the server with ``COMMAND
        GETKEYS``, a round trip per command.
        """
        node = self._client.get_node_from_key(key)
        pipe.execute_command("EVAL", script, 1, key, *args, target_nodes=node)

    def _unindex_many(self, by_tag: dict[str, list[str]]) -> None:
        """Cluster: remove entries from their indexes, one pipeline."""
        if not by_tag:
            return
        pipe = self._client.pipeline(transaction=False)
        for tag, names in by_tag.items():
            self._pipe_eval(pipe, _INDEX_SCRIPT, self._index_key(tag), "rem", *names)
        pipe.execute()

    # -- the per-user index ------------------------------------------------

    def _entries(self, tag: str) -> list[tuple[str, bytes]]:
        """The (full key, header) of the entries of the index of ``tag``
        whose records exist and are in that index; dead entries are
        dropped on the way."""
        index = self._index_key(tag)
        now_ms = to_epoch_micros(utcnow()) // 1000
        here, away = self._list_script(
            [index], [now_ms, tag, self.key_prefix, self._index_group(tag)]
        )
        entries = _pairs(here)
        if away:
            entries += self._entries_apart(tag, index, away)
        return entries

    def _index_group(self, tag: str) -> str:
        """The ``group`` of the scripts run on the index of ``tag``."""
        return tag[:2] if self._cluster else "*"

    def _entries_apart(
        self, tag: str, index: str, away: list[bytes]
    ) -> list[tuple[str, bytes]]:
        """Cluster: what :meth:`_entries` reads for the members ``away``
        of the index of ``tag``, outside its slot (records written before
        their user logged in, or by a script): their headers, one pipelined
        request per master, and one more round trip to the index only if
        some outlived their records."""
        members = [m.decode("utf-8", "replace") for m in away]
        pipe = self._client.pipeline(transaction=False)
        for name in members:
            self._pipe_eval(pipe, _HEADER_SCRIPT, name)
        entries, dead = [], []
        for name, head in zip(members, pipe.execute()):
            info = _header.parse_info(name, head) if head else None
            if info is None or info.tag != tag:
                dead.append(name)
            else:
                entries.append((name, head))
        if dead:
            # Only when an entry outlived its record (deleted elsewhere, or
            # moved by a save whose follow-up has not run yet).
            self._client.eval(_INDEX_SCRIPT, 1, index, "rem", *dead)
        return entries

    def _entries_of_many(
        self, tags: list[str]
    ) -> t.Iterable[list[tuple[str, bytes]] | None]:
        """What :meth:`_entries` reads for each of ``tags``: in one
        pipeline on standalone Redis; ``None`` (read it then) on a
        Cluster, where each index is in its own slot."""
        if self._cluster:
            return [None] * len(tags)
        now_ms = to_epoch_micros(utcnow()) // 1000
        pipe = self._client.pipeline(transaction=False)
        for tag in tags:
            self._list_script(
                [self._index_key(tag)],
                [now_ms, tag, self.key_prefix, "*"],
                client=pipe,
            )
        return [_pairs(here) for here, _ in pipe.execute()]

    def _live_records(
        self,
        user_id: str | None,
        tag: str,
        entries: list[tuple[str, bytes]] | None = None,
    ) -> list[Record]:
        """The live records listed in the index of ``tag`` (its
        ``entries``, if read already), of ``user_id`` (``None``: of every
        user whose index it is)."""
        now = utcnow()
        records = []
        if entries is None:
            entries = self._entries(tag)
        for name, head in entries:
            key = self._key_of(name.encode()).decode("utf-8", "replace")
            info = _header.parse_info(key, head)
            if info is None or info.tag != tag or info.record.expires_at <= now:
                continue
            owner = info.record.user_id
            if owner is None or (user_id is not None and owner != user_id):
                continue
            if user_id is None and _header.index_tag(owner) != tag:
                continue
            records.append(info.record)
        return records

    def sessions_of(self, user_id: str) -> list[Record]:
        """The live records of ``user_id``, with their per-user fields and
        an empty payload.

        One script, on a Cluster too: there the records of a user's
        sessions are kept in the slot of the user's index. A record outside
        it (written before its user logged in, or by a script) costs one
        pipelined request per master holding such records, and one more
        round trip to the index only if some outlived their records.

        .. versionadded:: 0.2
        """
        tag = _header.index_tag(check_user_id(user_id))
        with self._translated_errors:
            return self._live_records(user_id, tag)

    def delete_sessions_of(
        self,
        user_id: str,
        keys: t.Collection[str] | None = None,
        *,
        keep: str | None = None,
    ) -> list[str]:
        """End the live sessions of ``user_id`` (all, or those of ``keys``)
        but ``keep``; a key of another user's record is left alone.

        One script, however many sessions the user has, on a Cluster too
        (its records are in the slot of its index). Records outside that
        slot (see :meth:`sessions_of`) cost one pipelined request per
        master holding them (each deleted by a script that checks its
        user), and one more round trip to the index.

        .. versionadded:: 0.2
        """
        tag = _header.index_tag(check_user_id(user_id))
        wanted = None if keys is None else {self._key(check_key(k)) for k in keys}
        keep_name = "" if keep is None else self._key(check_key(keep))
        if wanted is not None and not wanted:
            return []
        with self._translated_errors:
            ended, away, _ = self._end_script(
                [self._index_key(tag)],
                self._end_args(tag, user_id, keep_name, -1, wanted),
            )
            keys = self._keys_of(ended)
            if away:
                names = [m.decode("utf-8", "replace") for m in away]
                keys += self._end_apart(user_id, tag, names)
            return keys

    def trim_sessions_of(self, user_id: str, limit: int, *, keep: str) -> list[str]:
        """End the live sessions of ``user_id`` but ``keep`` and the
        ``limit`` most recently active.

        One script, atomic, on a Cluster too (a user's records are in the
        slot of the user's index). Should some of them be outside it
        (written before their user logged in, or by a script), no Redis
        command spans them all: the survivors are chosen from one reading
        of the index and the headers (two or three round trips), then the
        others are ended, each by a script that checks it is still the
        user's, at the version and last activity it was chosen by (one
        round trip per master), and the index is fixed (one more). So a
        session touched or saved after the reading is spared, and two trims
        at once agree on the order: neither ends a session the other keeps
        unless the limit leaves room for one of them only. A session
        created after the reading is not trimmed by that call (the next
        login's trim sees it).

        .. versionadded:: 0.2
        """
        tag = _header.index_tag(check_user_id(user_id))
        keep_name = self._key(check_key(keep))
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError("limit must be an int >= 0")
        with self._translated_errors:
            ended, _, done = self._end_script(
                [self._index_key(tag)],
                self._end_args(tag, user_id, keep_name, limit, None),
            )
            if done:
                return self._keys_of(ended)
            live = self._live_records(user_id, tag)
            live.sort(key=recency, reverse=True)
            chosen = [r for r in live[limit:] if self._key(r.key) != keep_name]
            # Each is ended only if unchanged since it was chosen: one
            # touched or saved meanwhile may now be among the most recent.
            return self._end_apart(
                user_id,
                tag,
                [self._key(r.key) for r in chosen],
                [_header.trim_state(r) for r in chosen],
            )

    def _end_args(
        self,
        tag: str,
        user_id: str,
        keep_name: str,
        limit: int,
        wanted: set[str] | None,
    ) -> list[t.Any]:
        now = to_epoch_micros(utcnow())
        return [
            now // 1000,
            tag,
            user_id.encode(),
            now,
            keep_name,
            limit,
            self.key_prefix,
            self._index_group(tag),
            *(["*"] if wanted is None else sorted(wanted)),
        ]

    def _keys_of(self, names: t.Iterable[bytes]) -> list[str]:
        return [self._key_of(name).decode("ascii") for name in names]

    def _end_apart(
        self,
        user_id: str,
        tag: str,
        names: list[str],
        expected: list[bytes] | None = None,
    ) -> list[str]:
        """Cluster: end the records of ``names`` that are live records of
        ``user_id`` (and, with ``expected``, still at the version and last
        activity packed there), one pipelined request per master; then
        drop their entries (one round trip to the index)."""
        if not names:
            return []
        now = to_epoch_micros(utcnow())
        pipe = self._client.pipeline(transaction=False)
        for i, name in enumerate(names):
            state = () if expected is None else (expected[i],)
            self._pipe_eval(pipe, _END_ONE_SCRIPT, name, user_id.encode(), now, *state)
        ended, dead = [], []
        for name, (status, other) in zip(names, pipe.execute()):
            if status == 1:
                ended.append(name)
            if status in (0, 1) or (
                status == -1 and other.decode("ascii", "replace") != tag
            ):
                dead.append(name)
        if dead:
            self._unindex_many({tag: dead})
        return self._keys_of(name.encode() for name in ended)

    def per_user_counts(self, top: int) -> list[tuple[str, int]]:
        """The ``top`` users with the most live sessions, most first.

        Walks the indexes with ``SCAN`` (on every primary of a Cluster),
        and lists each as :meth:`sessions_of` does (on standalone Redis,
        :data:`SCAN_BATCH` indexes per pipeline): its time grows with the
        users and sessions of the whole store. For ``flask sessions
        stats --top``, not for requests.

        .. versionadded:: 0.2
        """
        pattern = _glob_escape(self.key_prefix) + "u:{*}*"
        options: dict[str, t.Any] = {}
        if self._cluster:
            options["target_nodes"] = "primaries"
        start = len(self.key_prefix.encode()) + 3
        counts: dict[str, int] = {}
        with self._translated_errors:
            # "<prefix>u:{" + the tag's first two digits + "}" + the tag.
            tags = {
                name[start + 3 :].decode("ascii", "replace")
                for name in self._commands.scan_iter(
                    match=pattern, count=SCAN_BATCH, **options
                )
                if name[start + 2 : start + 3] == b"}"
                and name[start : start + 2] == name[start + 3 : start + 5]
            }
            listed = [tag for tag in tags if len(tag) == _header.INDEX_TAG_LENGTH]
            for first in range(0, len(listed), SCAN_BATCH):
                batch = listed[first : first + SCAN_BATCH]
                for tag, entries in zip(batch, self._entries_of_many(batch)):
                    for record in self._live_records(None, tag, entries):
                        owner = t.cast(str, record.user_id)
                        counts[owner] = counts.get(owner, 0) + 1
        ranked = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
        return ranked[:top]

    # -- keys 0.1 wrote ----------------------------------------------------

    def unhashed_keys(
        self, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """Up to about ``limit`` session keys under :attr:`key_prefix` not
        of :data:`~.base.HASHED_KEY_PATTERN` (what 0.1 wrote), walked with
        ``SCAN``; the cursor names the node (on a Cluster) and the
        ``SCAN`` cursor. A key may be listed twice if Redis resizes its
        table meanwhile.

        .. versionadded:: 0.2
        """
        nodes = self._scan_nodes()
        node, scan = (0, 0) if cursor is None else _split_cursor(cursor, len(nodes))
        pattern = _glob_escape(self.key_prefix) + "*"
        found: list[str] = []
        with self._translated_errors:
            while node < len(nodes) and len(found) < limit:
                scan, names = nodes[node].scan(
                    cursor=scan, match=pattern, count=max(limit, 10)
                )
                for name in names:
                    key = self._key_of(name)
                    if _is_session_key(key) and not _is_hashed(key):
                        found.append(key.decode("ascii"))
                if scan == 0:
                    node += 1
        if node >= len(nodes):
            return found, None
        return found, f"{node}:{scan}"

    def count_unhashed(self) -> int:
        """How many session keys under :attr:`key_prefix` are not of
        :data:`~.base.HASHED_KEY_PATTERN`; see :meth:`count_live` for the
        cost.

        .. versionadded:: 0.2
        """
        total, cursor = 0, None
        while True:
            keys, cursor = self.unhashed_keys(cursor, SCAN_BATCH)
            total += len(keys)
            if cursor is None:
                return total

    def _scan_nodes(self) -> list[t.Any]:
        """The clients to ``SCAN``: the one, or each primary of a Cluster
        (replicas would list the keys twice), in a fixed order."""
        if not self._cluster:
            return [self._client]
        primaries = sorted(self._client.get_primaries(), key=lambda n: n.name)
        return [self._client.get_redis_connection(n) for n in primaries]

    def exists(self, key: str) -> bool:
        # EXISTS sends no payload back. Redis's TTL is rounded down from the
        # record's expiry, so a key that exists is a record that is live.
        check_key(key)
        with self._translated_errors:
            return bool(self._commands.exists(self._key(key)))

    def count_live(self) -> int:
        """How many session keys are under :attr:`key_prefix`.

        Redis keeps no count of the keys under a prefix, so this walks them
        with ``SCAN`` (:data:`SCAN_BATCH` keys asked for per call, on every
        primary of a Cluster): its time grows with the whole database, not
        with the sessions alone, though it never blocks the server for
        long. Redis deletes expired keys by itself, so all are live, but for
        a key whose TTL has passed and that Redis has not dropped yet. Keys
        under the prefix that cannot be session keys are not counted.

        ``SCAN`` may return a key twice when Redis resizes its table during
        the walk; the keys are not kept to weed those out (a million
        sessions would take about 100 MB here), so on a busy server the
        count is an estimate, a little high at worst.

        .. versionadded:: 0.2
        """
        # The prefix is literal text; in a MATCH pattern *, ?, [ and \ are
        # not, so escape them.
        pattern = _glob_escape(self.key_prefix) + "*"
        options: dict[str, t.Any] = {}
        if _is_cluster(self.client):
            # Every key lives on exactly one primary; replicas would count
            # them twice.
            options["target_nodes"] = "primaries"
        with self._translated_errors:
            return sum(
                1
                for name in self._commands.scan_iter(
                    match=pattern, count=SCAN_BATCH, **options
                )
                if _is_session_key(self._key_of(name))
            )

    def ping(self) -> None:
        # PING: no key, no payload, and the same errors as any command.
        with self._translated_errors:
            self._commands.ping()

    def close(self) -> None:
        """Close the client if :meth:`from_url` created it; otherwise no-op."""
        owned, self._owned = self._owned, []
        for close in owned:
            close()

    def describe(self) -> str:
        return f"RedisStore({self._where}, key_prefix={self.key_prefix!r})"


# -- helpers -------------------------------------------------------------


#: How many keys :meth:`RedisStore.count_live` asks ``SCAN`` for per call:
#: large enough to need few round trips, small enough that each call keeps
#: the server busy for well under a millisecond.
SCAN_BATCH = 1000


#: Whether a record key is a stored hash (kept under a hash tag of its first
#: two digits, see RedisStore.redis_key), not a key 0.1 stored as it was.
_is_hashed_key = HASHED_KEY_PATTERN.fullmatch


def _glob_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


def _is_session_key(name: bytes) -> bool:
    try:
        return KEY_PATTERN.fullmatch(name.decode("ascii")) is not None
    except UnicodeDecodeError:
        return False


def _pairs(flat: list[bytes]) -> list[tuple[str, bytes]]:
    """The (full key, header) pairs of a reply of the listing script."""
    return [
        (flat[i].decode("utf-8", "replace"), flat[i + 1])
        for i in range(0, len(flat), 2)
    ]


def _is_hashed(name: bytes) -> bool:
    return HASHED_KEY_PATTERN.fullmatch(name.decode("ascii")) is not None


def _split_cursor(cursor: str, nodes: int) -> tuple[int, int]:
    """The node and ``SCAN`` cursor of a cursor of
    :meth:`RedisStore.unhashed_keys`."""
    node, sep, scan = cursor.partition(":")
    if not sep or not node.isdigit() or not scan.isdigit() or int(node) >= nodes:
        raise ValueError("not a cursor of RedisStore.unhashed_keys")
    return int(node), int(scan)


def _check_cluster_prefix(key_prefix: str) -> None:
    """Refuse a Cluster key prefix that would take the hash tag from the
    keys: a ``{`` with no ``}`` after it in the prefix, or an empty ``{}``.
    Redis hashes the text between a key's first ``{`` and the next ``}``;
    with such a prefix a session and its user's index could land in slots
    that the store takes to be one. A prefix with a whole tag
    (``"{myapp}:session:"``) puts every key in one slot, which works."""
    start = key_prefix.find("{")
    if start == -1:
        return
    end = key_prefix.find("}", start + 1)
    if end == -1 or end == start + 1:
        raise ConfigurationError(
            f"key_prefix {key_prefix!r} cannot be used on a Redis Cluster: its"
            " '{' opens a hash tag that the store's keys would close. Leave"
            " braces out of the prefix, or give it a whole tag such as"
            " '{myapp}:session:'."
        )


def _is_cluster(client: object) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


#: How Redis words an ACL refusal met inside a script.
_SCRIPT_ACL_REFUSALS = (
    "ACL failure in script",  # Redis 7.2 and later
    "user executing the script can't",  # Redis 7.0
)


def _misconfiguration(exc: BaseException) -> str | None:
    """What is wrong with the store's settings, if the server refused them
    (credentials, ACL permissions, the database number); ``None`` for any
    other error.
    """
    from redis import exceptions as e

    text = str(exc)
    if isinstance(exc, e.AuthenticationWrongNumberOfArgsError):
        return (
            "this Redis server (before 6.0) has no users, only a password;"
            " remove the user name from the URL"
        )
    # AuthenticationError is a ConnectionError, but no retry will fix a bad
    # password. The texts are for replies redis-py left a plain ResponseError.
    if isinstance(exc, e.AuthenticationError) or text.startswith(
        ("NOAUTH", "WRONGPASS")
    ):
        return (
            "Redis refused the credentials; fix the user name and password in"
            " the URL (redis://user:password@host:port/db), or requirepass or"
            " the ACL on the server"
        )
    # A command refused inside a script comes back as a plain ResponseError
    # (Redis 7.0 and 7.2+ word it differently), not as NOPERM.
    if isinstance(exc, e.NoPermissionError) or (
        isinstance(exc, e.ResponseError)
        and any(refusal in text for refusal in _SCRIPT_ACL_REFUSALS)
    ):
        # Without the command the server names: the message is logged once
        # per store, whichever command meets the refusal first. The list is
        # checked against an ACL user in tests/test_config_errors.py.
        return (
            "the Redis user may not run a command the store needs; allow it"
            " GET, SET, DEL, EXISTS, EVALSHA, SCRIPT LOAD and PING (and EVAL on"
            " a Cluster), and in the store's scripts GETRANGE, SET, DEL,"
            " SETRANGE, PEXPIREAT, EXISTS, ZADD, ZREM, ZRANGE and"
            " ZREMRANGEBYSCORE, on the key prefix"
        )
    if isinstance(exc, e.ResponseError) and "DB index is out of range" in text:
        return (
            "Redis has no database of that number (fewer are set by the"
            " server's `databases`); fix the database number in the URL"
        )
    return None


def _unavailable_errors() -> tuple[type[Exception], ...]:
    """The redis-py errors that mean "unavailable" (once
    :func:`_misconfiguration` has found none of its own among them)."""
    from redis import exceptions as e

    unavailable: tuple[type[Exception], ...] = (
        # Also covers MasterNotFoundError (Sentinel knows no master),
        # BusyLoadingError (the server is loading its data set) and
        # MaxConnectionsError (the pool is exhausted).
        e.ConnectionError,
        e.TimeoutError,
        # ClusterDownError, MasterDownError, and cluster retries exhausted.
        e.ClusterError,
        # Slots being migrated, or not covered by any reachable node.
        e.TryAgainError,
        e.RedisClusterException,
        # A plain client still pointed at a master that a failover demoted.
        e.ReadOnlyError,
    )
    # maxmemory reached: the write was refused and nothing changed. Looked
    # up by name because older redis-py releases lack the class.
    out_of_memory = getattr(e, "OutOfMemoryError", None)
    if isinstance(out_of_memory, type) and issubclass(out_of_memory, Exception):
        unavailable += (out_of_memory,)
    return unavailable


def _check_client(client: object) -> None:
    """Refuse what is not a synchronous, bytes-returning redis-py client."""
    if isinstance(client, str):
        raise ConfigurationError(
            "RedisStore takes a redis client; for a URL use RedisStore.from_url()."
        )
    from redis.sentinel import Sentinel

    if isinstance(client, Sentinel):
        raise ConfigurationError(
            "RedisStore takes the Sentinel-managed master, not the Sentinel:"
            " pass sentinel.master_for('service_name')."
        )
    if not RedisStore.accepts(client):
        raise ConfigurationError(
            "RedisStore needs a redis-py Redis or RedisCluster client (or"
            " Sentinel(...).master_for(...)); got"
            f" {type(client).__module__}.{type(client).__qualname__}."
        )
    encoder = getattr(client, "get_encoder", None)
    if encoder is not None and getattr(encoder(), "decode_responses", False):
        raise ConfigurationError(
            "RedisStore needs a client with decode_responses=False: session"
            " records are binary."
        )


def _close_sentinel(sentinel: Sentinel) -> None:
    # Sentinel.close() is recent (redis-py 6); closing its clients one by
    # one works with every version.
    for client in sentinel.sentinels:
        client.close()


def _client_from_url(url: str, options: dict[str, t.Any]) -> Redis:
    from redis import Redis

    try:
        return Redis.from_url(url, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"Invalid Redis URL or options ({redact_url(url)}): {exc}"
        ) from exc


def _sentinel_client(url: str, options: dict[str, t.Any]) -> tuple[Sentinel, Redis]:
    from redis.sentinel import Sentinel

    nodes, path, connection = _parse_multi_host_url(url, SENTINEL_DEFAULT_PORT)
    parts = [unquote(part) for part in path.strip("/").split("/") if part]
    if not parts or len(parts) > 2:
        raise ConfigurationError(
            "A redis+sentinel URL names the service: redis+sentinel://"
            f"host:port[,host:port]/service_name[/db]; got {redact_url(url)}."
        )
    service = parts[0]
    if len(parts) == 2:
        if "db" in connection:
            raise ConfigurationError(f"The db is given twice in {redact_url(url)}.")
        connection["db"] = _parse_int(parts[1], "db", url)
    # As redis-py does for redis:// URLs, what the URL says wins over options.
    connection = {**options, **connection}
    sentinel_kwargs = connection.pop("sentinel_kwargs", None)
    if sentinel_kwargs is None:
        # The Sentinels get the timeouts and the retry policy (not the
        # master's password): a dead Sentinel must not hang a request any
        # longer than a dead master.
        sentinel_kwargs = {
            k: v
            for k, v in connection.items()
            if k.startswith("socket_") or k == "retry"
        }
    try:
        sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs, **connection)
    except TypeError as exc:
        raise ConfigurationError(f"Invalid Sentinel options: {exc}") from exc
    return sentinel, sentinel.master_for(service)


def _cluster_client(url: str, options: dict[str, t.Any]) -> RedisCluster:
    from redis.cluster import ClusterNode
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisClusterException
    from redis.exceptions import RedisError

    nodes, path, connection = _parse_multi_host_url(url, CLUSTER_DEFAULT_PORT)
    connection = {**options, **connection}
    db = path.strip("/")
    if db and _parse_int(db, "db", url) != 0 or connection.pop("db", 0) != 0:
        raise ConfigurationError(
            f"Redis Cluster has only database 0; got {redact_url(url)}."
        )
    try:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            **connection,
        )
    except TypeError as exc:
        raise ConfigurationError(f"Invalid Redis Cluster options: {exc}") from exc
    except (RedisClusterException, RedisError) as exc:
        # RedisCluster asks the nodes for the slot map while it is built: at
        # start-up, where the error is raised once, not per request.
        problem = _misconfiguration(exc)
        if problem is not None:
            raise ConfigurationError(
                f"SESSION_STORE ({redact_url(url)}): {problem}"
            ) from exc
        raise StoreUnavailable() from exc


def _parse_multi_host_url(
    url: str, default_port: int
) -> tuple[list[tuple[str, int]], str, dict[str, t.Any]]:
    """Split ``scheme://[user:pw@]h1:p1,h2:p2/path?query``.

    Returns the hosts, the path, and the connection options from the
    credentials and the query string, typed as redis-py types them.
    """
    from redis.connection import parse_url

    parts = _split(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    nodes = [
        _parse_host(item.strip(), default_port, url)
        for item in hostlist.split(",")
        if item.strip()
    ]
    if not nodes:
        raise ConfigurationError(
            f"No host in {redact_url(url)}: list one or more host:port."
        )
    # Let redis-py read the credentials and the query string, as it does for
    # redis:// URLs, so options are spelled and typed the same everywhere.
    netloc = f"{userinfo}@localhost" if userinfo else "localhost"
    try:
        connection = parse_url(urlunsplit(("redis", netloc, "", parts.query, "")))
    except ValueError as exc:
        raise ConfigurationError(
            f"Invalid options in {redact_url(url)}: {exc}"
        ) from exc
    connection.pop("host", None)
    connection.pop("port", None)
    connection.pop("connection_class", None)
    return nodes, parts.path, connection


def _parse_host(item: str, default_port: int, url: str) -> tuple[str, int]:
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ConfigurationError(f"Bad host {item!r} in {redact_url(url)}.")
    else:
        host, sep, port_text = item.rpartition(":")
        if not sep:
            host, port_text = item, ""
    if not host:
        raise ConfigurationError(f"Bad host {item!r} in {redact_url(url)}.")
    port = _parse_int(port_text, "port", url) if port_text else default_port
    if not 0 < port < 65536:
        raise ConfigurationError(f"Bad port {port} in {redact_url(url)}.")
    return unquote(host), port


def _parse_int(text: str, what: str, url: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigurationError(
            f"The {what} must be a number; got {text!r} in {redact_url(url)}."
        ) from None


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:  # unbalanced IPv6 brackets, a bad port
        # The URL itself stays out of the message: it may hold a password.
        raise ConfigurationError(f"Invalid Redis URL: {exc}") from exc


def _describe_client(client: object) -> str:
    """Where a client connects, without credentials and without I/O."""
    try:
        nodes = getattr(client, "startup_nodes", None) or getattr(
            getattr(client, "nodes_manager", None), "startup_nodes", None
        )
        if nodes:
            return "redis+cluster://" + ",".join(sorted(nodes))
        pool = getattr(client, "connection_pool", None)
        service = getattr(pool, "service_name", None)
        kwargs: dict[str, t.Any] = getattr(pool, "connection_kwargs", {})
        db = kwargs.get("db", 0)
        if service is not None:
            return f"redis+sentinel service {service!r}, db {db}"
        if "path" in kwargs:
            return f"unix://{kwargs['path']}?db={db}"
        connection_class = getattr(pool, "connection_class", None)
        scheme = (
            "rediss" if "SSL" in getattr(connection_class, "__name__", "") else "redis"
        )
        return f"{scheme}://{kwargs.get('host')}:{kwargs.get('port')}/{db}"
    except Exception:  # pragma: no cover - a description must never fail
        return type(client).__name__
