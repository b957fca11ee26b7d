"""The suppression list: recipients the pool must not send to again.

Hard bounces (invalid recipient) and complaints (ARF reports) add to it; the submission listener
looks every RCPT up in it. Two backends behind one protocol:

- ``SQLiteSuppressions``: one file per engine (default ``<spool>/suppressions.db``). The set of
  suppressed addresses lives in memory, loaded at start and updated on every write, so the
  lookup at RCPT for a recipient that is *not* suppressed - nearly all of them - touches no disk
  and takes no lock. Only a hit reads its row (reason, source, time), and only writes and
  listings go to SQLite, on one thread of their own.
- ``RedisSuppressions``: one list for the whole fleet. Every lookup is an HGET, so an addition by
  one engine is seen by every other at its next RCPT; on loopback or in-cluster that is well
  under a millisecond.

Every address is stored and looked up under one key (``normalize_recipient``): the canonical
spelling of ``addresses.canonical_address`` - a quoted local part unquoted where the quotes are
unnecessary (``"victim"@x`` and ``"vic\\tim"@x`` are ``victim@x``), a source route dropped, the
domain as A-labels - in lower case, local part included. Without that, any of those spellings at
RCPT reached a suppressed mailbox. Entries stored under another spelling by an older version
are rewritten when a SQLite list opens; a Redis list is still read and cleared under the old
key (``_legacy_key``).
RFC 5321 §2.4 lets a server treat local parts case-sensitively, but no mailbox provider of
consequence does, and a suppression list that misses ``Jane@x`` after ``jane@x`` complained would
mail a complainer again. Folding case can only over-suppress a mailbox that differs by case
alone, which does not exist in practice. Provider-specific aliasing (Gmail dots, ``+tags``) is
deliberately *not* folded: that would suppress distinct addresses on other providers.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mailfleet.mta.addresses import AddressError, canonical_address
from mailfleet.mta.config import SuppressionConfig

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "RedisSuppressions",
    "SQLiteSuppressions",
    "Suppression",
    "SuppressionStore",
    "SuppressionStoreError",
    "check_reason",
    "check_recipient",
    "normalize_recipient",
    "open_store",
    "redis_key",
]

T = TypeVar("T")

# Redis client timeouts: a lookup happens while an SMTP client waits for the RCPT answer, so a
# Redis that stopped answering must turn into an error (the caller answers 4xx) quickly.
REDIS_SOCKET_TIMEOUT = 2.0
REDIS_CONNECT_TIMEOUT = 2.0


class SuppressionStoreError(RuntimeError):
    """The store could not be read or written (disk or Redis failure). The caller decides:
    at RCPT, a temporary failure (451 4.3.0) is the safe answer."""


@dataclass(frozen=True, slots=True)
class Suppression:
    recipient: str
    reason: str  # "invalid-recipient" | "complaint" | "manual" | another reply class
    source: str  # the reply text, "arf:<reporter>", "admin", ...
    created_at: float  # Unix time


class SuppressionStore(Protocol):
    async def add(self, recipient: str, reason: str, source: str) -> Suppression:
        """Suppress `recipient`. Idempotent: an address already listed keeps its first entry
        (the original cause is what an audit needs), and that entry is returned."""
        ...

    async def remove(self, recipient: str) -> bool:
        """True when the address was listed."""
        ...

    async def get(self, recipient: str) -> Suppression | None: ...

    async def list(self, limit: int = 100, after: str | None = None) -> list[Suppression]:
        """Up to `limit` entries in recipient order, starting after `after` (a recipient)."""
        ...

    async def count(self) -> int: ...

    async def close(self) -> None: ...


MAX_REASON = 64
_REASON = re.compile(r"[\x20-\x7e]*")


def check_reason(reason: str) -> str:
    """A reason is echoed in the 550 reply at RCPT: printable ASCII only (a CR or LF would end
    that reply and inject another), at most MAX_REASON characters. ValueError names the rule."""
    if not _REASON.fullmatch(reason) or len(reason) > MAX_REASON:
        raise ValueError(
            f"reason: printable ASCII only (no control characters), at most {MAX_REASON} characters"
        )
    return reason


# A dot-string local part and an LDH domain: canonical once in lower case, no parsing needed
# (nearly every lookup at RCPT).
_PLAIN = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")


def _legacy_key(recipient: str) -> str:
    """The key of an older version: stripped of <>, whitespace, "rfc822;" and a trailing dot of
    the domain, all lower case."""
    r = recipient.strip()
    if r.startswith("<") and r.endswith(">"):
        r = r[1:-1].strip()
    if r.lower().startswith("rfc822;"):
        r = r[7:].strip()
    local, at, domain = r.rpartition("@")
    if at:
        r = f"{local}@{domain.rstrip('.')}"
    return r.lower()


def normalize_recipient(recipient: str) -> str:
    """The key an address is stored under: its canonical spelling (module docstring), in lower
    case. Text that is no mailbox keeps the plain lower-cased form, so it can still be looked
    up and removed."""
    r = _legacy_key(recipient)
    if _PLAIN.fullmatch(r):
        return r
    try:
        return canonical_address(r).lower()
    except AddressError:
        return r


def check_recipient(recipient: str) -> str | None:
    """Why `recipient` (as the admin API takes it: "user@domain", "<user@domain>") is not an
    envelope address, in words for a 400; None when it is one."""
    try:
        canonical_address(_legacy_key(recipient) if "@" in recipient else recipient)
    except AddressError as e:
        return f"recipient: not an envelope address (RFC 5321): {e.reply.partition(': ')[2]}"
    return None


def _check_limit(limit: int) -> int:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return limit


# --- SQLite ----------------------------------------------------------------------------------


def _rekey(db: sqlite3.Connection, members: set[str]) -> set[str]:
    """Rows stored under a key that is not canonical now (an older version kept quoted local
    parts and U-labels) moved to their canonical key, the first entry kept; the new key set."""
    stale = {m: k for m in members if (k := normalize_recipient(m)) != m}
    if not stale:
        return members
    db.execute("BEGIN IMMEDIATE")
    try:
        for old, new in stale.items():
            db.execute(
                "INSERT OR IGNORE INTO suppressions SELECT ?, reason, source, created_at"
                " FROM suppressions WHERE recipient = ?",
                (new, old),
            )
            db.execute("DELETE FROM suppressions WHERE recipient = ?", (old,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return (members - stale.keys()) | set(stale.values())


_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppressions (
    recipient TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID
"""


REFRESH_OVERLAP = 60.0


class SQLiteSuppressions:
    """Suppressions in a SQLite file (WAL), with the address set cached in memory.

    The file belongs to this engine alone: another process writing it is not seen until
    restart (a fleet-wide list is what the Redis backend is for). Opening reads every address
    once; a million take about a second and ~100 MB.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        # One thread owns the connection: writes are serialised without a lock, and the event
        # loop never waits on disk.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="suppressions")
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._seen = self._clock()
        try:
            self._members: set[str] = self._executor.submit(self._open).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    def _open(self) -> set[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # Writes are rare (a bounce, a complaint) and losing one means mailing someone who
            # complained: pay for the fsync.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute(_SCHEMA)
            members = {row[0] for row in db.execute("SELECT recipient FROM suppressions")}
            members = _rekey(db, members)
        except sqlite3.Error as e:
            raise SuppressionStoreError(f"cannot open suppression list {self.path}: {e}") from e
        self._db = db
        return members

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or self._db is None:
            raise SuppressionStoreError("suppression list is closed")
        db = self._db

        def call() -> T:
            try:
                return fn(db)
            except sqlite3.Error as e:
                raise SuppressionStoreError(f"suppression list {self.path}: {e}") from e

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    @staticmethod
    def _row(row: tuple[Any, ...]) -> Suppression:
        return Suppression(str(row[0]), str(row[1]), str(row[2]), float(row[3]))

    async def add(self, recipient: str, reason: str, source: str) -> Suppression:
        key = normalize_recipient(recipient)
        entry = Suppression(key, check_reason(reason), source, self._clock())

        def write(db: sqlite3.Connection) -> Suppression:
            db.execute(
                "INSERT OR IGNORE INTO suppressions VALUES (?, ?, ?, ?)",
                (entry.recipient, entry.reason, entry.source, entry.created_at),
            )
            row = db.execute(
                "SELECT recipient, reason, source, created_at FROM suppressions "
                "WHERE recipient = ?",
                (key,),
            ).fetchone()
            return self._row(row)

        stored = await self._run(write)
        self._members.add(key)
        return stored

    async def remove(self, recipient: str) -> bool:
        key = normalize_recipient(recipient)

        def delete(db: sqlite3.Connection) -> bool:
            cur = db.execute("DELETE FROM suppressions WHERE recipient = ?", (key,))
            return cur.rowcount > 0

        removed = await self._run(delete)
        self._members.discard(key)
        return removed

    def contains(self, recipient: str) -> bool:
        """Synchronous membership test, from memory only."""
        return normalize_recipient(recipient) in self._members

    async def get(self, recipient: str) -> Suppression | None:
        key = normalize_recipient(recipient)
        if key not in self._members:
            return None

        def read(db: sqlite3.Connection) -> Suppression | None:
            row = db.execute(
                "SELECT recipient, reason, source, created_at FROM suppressions "
                "WHERE recipient = ?",
                (key,),
            ).fetchone()
            return None if row is None else self._row(row)

        return await self._run(read)

    async def list(self, limit: int = 100, after: str | None = None) -> list[Suppression]:
        n = _check_limit(limit)
        start = "" if after is None else normalize_recipient(after)

        def read(db: sqlite3.Connection) -> list[Suppression]:
            rows = db.execute(
                "SELECT recipient, reason, source, created_at FROM suppressions "
                "WHERE recipient > ? ORDER BY recipient LIMIT ?",
                (start, n),
            ).fetchall()
            return [self._row(r) for r in rows]

        return await self._run(read)

    async def count(self) -> int:
        return len(self._members)

    async def refresh(self) -> int:
        """Addresses other processes of the pod added to the file since the last look (the
        engine processes of `mailfleet mta --processes N` share it); how many were new here.
        Looks back REFRESH_OVERLAP seconds: a row is stamped before its commit, so one stamped
        earlier than the newest seen may still arrive."""
        since = self._seen - REFRESH_OVERLAP

        def read(db: sqlite3.Connection) -> list[tuple[str, float]]:
            return db.execute(
                "SELECT recipient, created_at FROM suppressions WHERE created_at >= ?", (since,)
            ).fetchall()

        rows = await self._run(read)
        new = {r for r, _ in rows} - self._members
        self._members |= new
        self._seen = max([self._seen, *(t for _, t in rows)])
        return len(new)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        db = self._db
        self._db = None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)


# --- Redis -----------------------------------------------------------------------------------


def redis_key(namespace: str) -> str:
    """The hash holding a namespace's entries (field: recipient, value: JSON)."""
    return f"mailfleet:suppressions:{namespace}"


# Adds atomically to the hash and to the sorted index that listing pages through, keeping the
# first entry when the address is already listed; returns the stored value either way.
_ADD_SCRIPT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
    redis.call('ZADD', KEYS[2], 0, ARGV[1])
    return ARGV[2]
end
return redis.call('HGET', KEYS[1], ARGV[1])
"""
_REMOVE_SCRIPT = """
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
"""


class RedisSuppressions:
    """Suppressions in Redis, shared by every engine that uses the same URL and namespace.

    Keys: the hash ``mailfleet:suppressions:<namespace>`` (recipient -> JSON of reason, source,
    created_at) and, for listing in recipient order, the sorted set ``<hash>:index`` (all scores
    0, so ZRANGEBYLEX pages through it). Both change together in one Lua script.
    The client connects lazily; a Redis that is down surfaces as SuppressionStoreError.
    """

    def __init__(
        self,
        url: str,
        namespace: str = "default",
        *,
        clock: Callable[[], float] = time.time,
        client: Redis | None = None,
    ) -> None:
        if not namespace:
            raise ValueError("suppression namespace must not be empty")
        from redis.asyncio import Redis

        self.namespace = namespace
        self.key = redis_key(namespace)
        self.index_key = f"{self.key}:index"
        self._clock = clock
        self._redis: Redis = client or Redis.from_url(
            url,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
            health_check_interval=30,
            decode_responses=True,
        )
        self._add = self._redis.register_script(_ADD_SCRIPT)
        self._remove = self._redis.register_script(_REMOVE_SCRIPT)

    def _entry(self, recipient: str, raw: str) -> Suppression:
        try:
            d = json.loads(raw)
            return Suppression(
                recipient, str(d["reason"]), str(d["source"]), float(d["created_at"])
            )
        except (ValueError, KeyError, TypeError):
            # Written by something else: still a suppression, of unknown cause.
            return Suppression(recipient, "unknown", raw, 0.0)

    async def _call(self, what: str, coro: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coro
        except RedisError as e:
            raise SuppressionStoreError(f"suppression list (redis, {what}): {e}") from e

    async def add(self, recipient: str, reason: str, source: str) -> Suppression:
        key = normalize_recipient(recipient)
        check_reason(reason)
        value = json.dumps(
            {"reason": reason, "source": source, "created_at": self._clock()},
            separators=(",", ":"),
        )
        stored = await self._call(
            "add", self._add(keys=[self.key, self.index_key], args=[key, value])
        )
        return self._entry(key, str(stored))

    async def remove(self, recipient: str) -> bool:
        removed = False
        for key in dict.fromkeys((normalize_recipient(recipient), _legacy_key(recipient))):
            n = await self._call(
                "remove", self._remove(keys=[self.key, self.index_key], args=[key])
            )
            removed = removed or int(n) > 0
        return removed

    async def get(self, recipient: str) -> Suppression | None:
        key = normalize_recipient(recipient)
        raw = await self._call("get", self._redis.hget(self.key, key))
        legacy = _legacy_key(recipient)
        if raw is None and legacy != key:
            # An entry an older version stored under the spelling it was given.
            raw = await self._call("get", self._redis.hget(self.key, legacy))
        return None if raw is None else self._entry(key, str(raw))

    async def list(self, limit: int = 100, after: str | None = None) -> list[Suppression]:
        n = _check_limit(limit)
        start = "-" if after is None else "(" + normalize_recipient(after)
        # The index may name an address whose hash field another writer just removed; fetch a
        # page, drop such holes, and go on until the page is full or the index ends.
        out: list[Suppression] = []
        while len(out) < n:
            names: list[str] = await self._call(
                "list",
                self._redis.zrangebylex(self.index_key, start, "+", start=0, num=n - len(out)),
            )
            if not names:
                break
            values: list[str | None] = await self._call("list", self._redis.hmget(self.key, names))
            out.extend(self._entry(r, v) for r, v in zip(names, values, strict=True) if v)
            start = "(" + names[-1]
        return out

    async def count(self) -> int:
        return int(await self._call("count", self._redis.hlen(self.key)))

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(cfg: SuppressionConfig, spool_path: Path) -> SuppressionStore:
    """The configured backend. SQLite opens (and loads its cache) here, synchronously: call it
    at start-up. Redis connects at first use."""
    if cfg.backend == "redis":
        if not cfg.redis_url:
            raise ValueError("suppression.redisURL is required when suppression.backend is redis")
        return RedisSuppressions(cfg.redis_url, cfg.namespace)
    return SQLiteSuppressions(cfg.path or Path(spool_path) / "suppressions.db")
