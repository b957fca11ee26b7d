"""The durable queue: SQLite in WAL mode, written by one thread with group commit.

Bodies stay in the spool: the queue runner keeps only scheduling records in memory and reads a
body when an attempt starts (`SpoolReader`, its own connection and thread, so reads never wait
for the writer's fsyncs). `recipients(next_attempt, message_id)` and `(domain, next_attempt)`
indexes let it page through what is due, oldest first, without scanning the queue.

Why SQLite: one file per pod on the spool volume, atomic multi-row transactions (a message and its
recipients land together or not at all), crash recovery by the WAL, and no server to run. Why one
writer thread: SQLite serialises writers anyway; a single thread that takes every operation waiting
at that moment and commits them as one transaction turns N concurrent sessions into one fsync, so
"250 only after fsync" does not cost one disk flush per message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("mailfleet.mta.spool")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          TEXT PRIMARY KEY,
    mail_from   TEXT NOT NULL,
    received_at REAL NOT NULL,
    client      TEXT NOT NULL DEFAULT '',
    data        BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id   TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    recipient    TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_reply   TEXT NOT NULL DEFAULT '',
    domain       TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (message_id, recipient)
);
CREATE TABLE IF NOT EXISTS shaping_state (
    ip       TEXT NOT NULL,
    provider TEXT NOT NULL,
    state    TEXT NOT NULL,
    PRIMARY KEY (ip, provider)
);
CREATE TABLE IF NOT EXISTS warmup_sent (
    ip       TEXT NOT NULL,
    provider TEXT NOT NULL,
    day      INTEGER NOT NULL,
    sent     INTEGER NOT NULL,
    PRIMARY KEY (ip, provider, day)
);
"""

# After the tables (and after the migration that adds recipients.domain to an older spool).
INDEXES = """
CREATE INDEX IF NOT EXISTS recipients_due ON recipients (next_attempt, message_id);
CREATE INDEX IF NOT EXISTS recipients_domain ON recipients (domain, next_attempt, message_id);
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at);
"""

# Pages freed per housekeeping pass (4 KiB each): 16 MiB back to the filesystem at a time (64 MiB
# a minute at the default interval), in slices of 1 MiB between the writer's other commits, so
# new mail's 250 never waits long and the checkpoint after it has little to copy.
VACUUM_PAGES = 4096
VACUUM_SLICE = 256
# The WAL is truncated to this after a checkpoint (it is reused, not regrown, up to here).
WAL_SIZE_LIMIT = 64 * 1024 * 1024


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class DueRow:
    """One recipient due for an attempt, with what scheduling needs of its message."""

    message_id: str
    recipient: str
    domain: str
    attempts: int
    next_attempt: float
    received_at: float
    size: int


@dataclass(frozen=True)
class SpoolCounts:
    """What the queue holds, counted once at start (then kept by the queue runner)."""

    messages: int
    recipients_by_domain: dict[str, int]


@dataclass(frozen=True)
class DiskUsage:
    db_bytes: int
    wal_bytes: int
    free_pages_bytes: int  # inside the file: reused by new mail, returned by incremental vacuum
    disk_free_bytes: int  # on the spool's filesystem, for unprivileged writers


@dataclass
class QueuedRecipient:
    recipient: str
    attempts: int = 0
    next_attempt: float = 0.0
    last_reply: str = ""


@dataclass
class QueuedMessage:
    id: str
    mail_from: str
    received_at: float
    data: bytes
    recipients: list[QueuedRecipient] = field(default_factory=list)
    client: str = ""


@dataclass(frozen=True)
class RecipientUpdate:
    """The state of one recipient after an attempt: done (delivered/bounced) or retry at a time."""

    recipient: str
    done: bool
    attempts: int = 0
    next_attempt: float = 0.0
    last_reply: str = ""


_Op = Callable[[sqlite3.Connection], Any]
# An operation, the future its result goes to, and whether it needs an fsync before it returns.
_Item = tuple[_Op, "asyncio.Future[Any]", bool]


class SpoolError(Exception):
    pass


# Seeded from the OS once per process: a getrandom() system call per message showed in profiles.
_ids = random.Random(os.urandom(32))


def new_message_id() -> str:
    # Time-ordered, so recovery and `ORDER BY id` replay in arrival order.
    return f"{time.time_ns():016x}{_ids.getrandbits(40):010x}"


class Spool:
    def __init__(
        self,
        path: Path,
        *,
        group_commit_window: float = 0.0,
        observe_commit: Callable[[float, int], None] | None = None,
    ) -> None:
        self.path = path
        self.window = group_commit_window
        self._observe = observe_commit
        self._ops: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._db_file = path / "spool.db"

    # -- lifecycle ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self._db_file.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._db_file, isolation_level=None, check_same_thread=False)
        # Only takes effect on a new file (before the first table): deleted messages' pages can
        # then be handed back to the filesystem a slice at a time (`maintain`).
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, which is what makes our 250 honest.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(recipients)")}
        if "domain" not in columns:  # a spool written before bodies stayed on disk
            db.execute("ALTER TABLE recipients ADD COLUMN domain TEXT NOT NULL DEFAULT ''")
            db.execute(
                "UPDATE recipients SET domain ="
                " lower(rtrim(substr(recipient, instr(recipient, '@') + 1), '.'))"
            )
        db.executescript(INDEXES)
        return db

    def reader(self) -> SpoolReader:
        """A read-only view on its own connection and thread (start() first: it makes the file)."""
        return SpoolReader(self._db_file)

    def load(self) -> list[QueuedMessage]:
        """Every message still queued, bodies included (tests and tools: the engine pages through
        the spool with a SpoolReader instead)."""
        db = self._connect()
        try:
            messages: dict[str, QueuedMessage] = {}
            for mid, mail_from, received_at, client, data in db.execute(
                "SELECT id, mail_from, received_at, client, data FROM messages ORDER BY id"
            ):
                messages[mid] = QueuedMessage(mid, mail_from, received_at, bytes(data), [], client)
            for mid, rcpt, attempts, next_attempt, last_reply in db.execute(
                "SELECT message_id, recipient, attempts, next_attempt, last_reply FROM recipients"
            ):
                if mid in messages:
                    messages[mid].recipients.append(
                        QueuedRecipient(rcpt, attempts, next_attempt, last_reply)
                    )
            orphans = [m for m in messages.values() if not m.recipients]
            for m in orphans:
                db.execute("DELETE FROM messages WHERE id = ?", (m.id,))
                del messages[m.id]
            return list(messages.values())
        finally:
            db.close()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        db = self._connect()
        self._thread = threading.Thread(
            target=self._writer, args=(db,), name="spool-writer", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        if self._thread is None:
            return
        self._ops.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    # -- operations --------------------------------------------------------------------------

    async def _submit(self, op: _Op, durable: bool = True) -> Any:
        if self._thread is None or self._loop is None:
            raise SpoolError("the spool is not running")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._ops.put((op, fut, durable))
        return await fut

    async def accept(
        self,
        mail_from: str,
        recipients: list[str],
        data: bytes,
        client: str = "",
        message_id: str | None = None,
    ) -> QueuedMessage:
        """Store a message; returns once it is on disk and fsynced."""
        msg, op = self.accept_op(mail_from, recipients, data, client, message_id)
        await self._submit(op)
        return msg

    def accept_op(
        self,
        mail_from: str,
        recipients: list[str],
        data: bytes,
        client: str = "",
        message_id: str | None = None,
    ) -> tuple[QueuedMessage, _Op]:
        """The message to store and the operation that stores it, for `enqueue` (any thread)."""
        now = time.time()
        msg = QueuedMessage(
            id=message_id or new_message_id(),
            mail_from=mail_from,
            received_at=now,
            data=data,
            # Due at arrival: the due index then orders new mail and retries by age together.
            recipients=[QueuedRecipient(r, 0, now) for r in dict.fromkeys(recipients)],
            client=client,
        )

        def op(db: sqlite3.Connection) -> QueuedMessage:
            db.execute(
                "INSERT INTO messages (id, mail_from, received_at, client, data)"
                " VALUES (?, ?, ?, ?, ?)",
                (msg.id, msg.mail_from, msg.received_at, msg.client, msg.data),
            )
            db.executemany(
                "INSERT INTO recipients (message_id, recipient, next_attempt, domain)"
                " VALUES (?, ?, ?, ?)",
                [(msg.id, r.recipient, now, domain_of(r.recipient)) for r in msg.recipients],
            )
            return msg

        return msg, op

    def enqueue(self, op: _Op, fut: asyncio.Future[Any]) -> None:
        """Hand a durable operation to the writer from any thread (a signing thread hands it
        its message straight away, without a hop back to the event loop): `fut`, a future of
        the spool's loop, gets its result once it is committed and fsynced."""
        if self._thread is None:
            raise SpoolError("the spool is not running")
        self._ops.put((op, fut, True))

    async def update(
        self, message_id: str, updates: list[RecipientUpdate], last: bool = False
    ) -> bool:
        """Record attempt results; removes the message once no recipient is left. True if gone.
        `last`: the caller knows these were all the recipients left, and every one is done."""

        def op(db: sqlite3.Connection) -> bool:
            # Gone only if this call removed it: a message two jobs finished (one loaded from
            # the spool while the other was being added) is counted out once.
            if last and all(u.done for u in updates):
                cur = db.execute("DELETE FROM messages WHERE id = ?", (message_id,))  # cascades
                return cur.rowcount > 0
            for u in updates:
                if u.done:
                    db.execute(
                        "DELETE FROM recipients WHERE message_id = ? AND recipient = ?",
                        (message_id, u.recipient),
                    )
                else:
                    db.execute(
                        "UPDATE recipients SET attempts = ?, next_attempt = ?, last_reply = ?"
                        " WHERE message_id = ? AND recipient = ?",
                        (u.attempts, u.next_attempt, u.last_reply, message_id, u.recipient),
                    )
            left = db.execute(
                "SELECT 1 FROM recipients WHERE message_id = ? LIMIT 1", (message_id,)
            ).fetchone()
            if left is None:
                cur = db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                return cur.rowcount > 0
            return False

        # Not fsynced on its own: the next accept's commit syncs the WAL, this included. A crash
        # before that can only make a delivered message look queued (delivered again), never
        # lose one.
        result: bool = await self._submit(op, durable=False)
        return result

    async def adopt(self, messages: list[QueuedMessage]) -> list[QueuedMessage]:
        """Store messages handed over by another pod, with their arrival time and each
        recipient's attempts and retry time; fsynced before it returns. A message already here
        (the same handoff repeated after a crash) is not stored twice. Returns the new ones."""

        def op(db: sqlite3.Connection) -> list[QueuedMessage]:
            fresh = []
            for m in messages:
                cur = db.execute(
                    "INSERT OR IGNORE INTO messages (id, mail_from, received_at, client, data)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (m.id, m.mail_from, m.received_at, m.client, m.data),
                )
                if cur.rowcount == 0:
                    continue
                db.executemany(
                    "INSERT INTO recipients (message_id, recipient, attempts, next_attempt,"
                    " last_reply, domain) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (
                            m.id,
                            r.recipient,
                            r.attempts,
                            r.next_attempt,
                            r.last_reply,
                            domain_of(r.recipient),
                        )
                        for r in m.recipients
                    ],
                )
                fresh.append(m)
            return fresh

        result: list[QueuedMessage] = await self._submit(op)
        return result

    async def remove(self, message_ids: list[str]) -> None:
        """Messages another pod has taken (fsynced: they are on its disk, not on ours)."""

        def op(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM messages WHERE id = ?", [(m,) for m in message_ids])

        await self._submit(op)

    async def retry_now(self, domain: str, now: float) -> int:
        """Make every recipient at `domain` waiting for a retry due now; how many were."""

        def op(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "UPDATE recipients SET next_attempt = ? WHERE domain = ? AND next_attempt > ?",
                (now, domain, now),
            )
            return cur.rowcount

        result: int = await self._submit(op, durable=False)
        return result

    async def maintain(self, pages: int = VACUUM_PAGES) -> int:
        """Housekeeping: hand up to `pages` freed pages back to the filesystem, a slice at a
        time on the writer thread between its commits, then checkpoint the WAL into the database
        (on a connection of its own, PASSIVE: it never blocks the writer, which truncates the WAL
        to its size limit when it starts it over). Returns the free pages left."""
        left = 0
        for _ in range(max(pages // VACUUM_SLICE, 1)):
            left = await self._submit(_MAINTAIN, durable=False)
            if left == 0:
                break
            await asyncio.sleep(0.005)
        # The file shrinks when the checkpoint copies the vacuum's last frames into it.
        await asyncio.to_thread(self._checkpoint)
        return left

    def _checkpoint(self) -> None:
        db = sqlite3.connect(self._db_file, isolation_level=None, timeout=0)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:
            log.warning("spool checkpoint failed", extra={"error": str(e)})
        finally:
            db.close()

    # -- shaping state: adaptive rates, suspensions and warmup counters survive restarts -------

    def load_shaping(self) -> tuple[list[dict[str, Any]], dict[tuple[str, str, int], int]]:
        db = self._connect()
        try:
            rows = [json.loads(s) for (s,) in db.execute("SELECT state FROM shaping_state")]
            sent = {
                (ip, provider, day): n
                for ip, provider, day, n in db.execute(
                    "SELECT ip, provider, day, sent FROM warmup_sent"
                )
            }
            return rows, sent
        finally:
            db.close()

    async def save_shaping(self, rows: list[dict[str, Any]]) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO shaping_state (ip, provider, state) VALUES (?, ?, ?)",
                [(r["ip"], r["provider"], json.dumps(r)) for r in rows],
            )

        await self._submit(op, durable=False)

    async def warmup_add(self, ip: str, provider: str, day: int, n: int = 1) -> None:
        """Count a warmup send durably before it happens, so a crash can only undercount what
        is left of the cap, never overrun it."""

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO warmup_sent (ip, provider, day, sent) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (ip, provider, day) DO UPDATE SET sent = sent + excluded.sent",
                (ip, provider, day, n),
            )
            db.execute("DELETE FROM warmup_sent WHERE day < ?", (day - 7,))

        await self._submit(op)

    # -- the writer thread -------------------------------------------------------------------

    def _writer(self, db: sqlite3.Connection) -> None:
        assert self._loop is not None
        loop = self._loop
        stop = False
        synchronous = "FULL"
        while not stop:
            first = self._ops.get()
            if first is None:
                break
            batch = [first]
            if self.window:
                time.sleep(self.window)
            while True:
                try:
                    item = self._ops.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            started = time.perf_counter()
            # FULL fsyncs the WAL at commit; NORMAL leaves it to the next FULL commit (the WAL
            # is appended in order, so that fsync covers every earlier frame).
            want = "FULL" if any(durable for _, _, durable in batch) else "NORMAL"
            if want != synchronous:
                db.execute(f"PRAGMA synchronous={want}")
                synchronous = want
            maint = [item for item in batch if item[0] is _MAINTAIN]
            batch = [item for item in batch if item[0] is not _MAINTAIN]
            results = _commit(db, batch) if batch else []
            if results is None:
                # One bad operation must not fail its batch-mates: the batch is rolled back and
                # each operation committed on its own (rare, so the common path stays lean).
                results = [r for item in batch for r in (_commit(db, [item]) or [])]
            for _, fut, _ in maint:
                results.append((fut, *_maintain(db)))
            elapsed = time.perf_counter() - started
            if self._observe is not None:
                self._observe(elapsed, len(batch))
            loop.call_soon_threadsafe(_resolve_all, results)
        db.close()


_Result = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _MAINTAIN(db: sqlite3.Connection) -> None:  # a marker: never run inside a batch
    raise AssertionError("housekeeping runs outside transactions")


def _maintain(db: sqlite3.Connection) -> tuple[int, BaseException | None]:
    """One slice of incremental vacuum, in a transaction of its own; the free pages left."""
    try:
        # executescript steps the statement to its end (execute() would free one page only).
        db.executescript(f"PRAGMA incremental_vacuum({VACUUM_SLICE});")
        (left,) = db.execute("PRAGMA freelist_count").fetchone()
    except sqlite3.Error as e:
        return 0, e
    return int(left), None


def _commit(db: sqlite3.Connection, batch: list[_Item]) -> list[_Result] | None:
    """Run the operations in one transaction; None when one failed and a batch was rolled
    back, the failure itself when the batch is a single operation."""
    results: list[_Result] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for op, fut, _ in batch:
            results.append((fut, op(db), None))
        db.execute("COMMIT")
    except Exception as e:
        # SQLite may have rolled back already (SQLITE_FULL does): a second ROLLBACK would raise
        # and kill this thread, and every later accept would wait forever.
        if db.in_transaction:
            db.execute("ROLLBACK")
        if len(batch) > 1:
            return None
        return [(batch[0][1], None, e)]
    return results


class SpoolReader:
    """Reads on a connection and a thread of their own: bodies when an attempt starts, pages of
    what is due, counts. WAL readers see the last commit and never block the writer."""

    def __init__(self, db_file: Path) -> None:
        self._db_file = db_file
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spool-reader")
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(
                f"file:{self._db_file}?mode=ro", uri=True, check_same_thread=False
            )
        return self._db

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._conn()))

    async def close(self) -> None:
        def shut(db: sqlite3.Connection) -> None:
            db.close()
            self._db = None

        if self._db is not None:
            await self._run(shut)
        self._pool.shutdown(wait=False)

    async def message(self, message_id: str) -> tuple[str, bytes] | None:
        """(mail_from, data) of a queued message, None once it has left the spool."""

        def op(db: sqlite3.Connection) -> tuple[str, bytes] | None:
            row = db.execute(
                "SELECT mail_from, data FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            return (row[0], bytes(row[1])) if row is not None else None

        result: tuple[str, bytes] | None = await self._run(op)
        return result

    async def messages_after(self, after: str, limit: int) -> list[QueuedMessage]:
        """Whole messages (body and each recipient's state) in id (arrival) order after `after`,
        for handing them to another pod."""

        def op(db: sqlite3.Connection) -> list[QueuedMessage]:
            rows = db.execute(
                "SELECT id, mail_from, received_at, client, data FROM messages WHERE id > ?"
                " ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
            out = {
                mid: QueuedMessage(mid, mf, ra, bytes(data), [], client or "")
                for mid, mf, ra, client, data in rows
            }
            if out:
                marks = ",".join("?" * len(out))
                for mid, rcpt, attempts, nxt, last in db.execute(
                    "SELECT message_id, recipient, attempts, next_attempt, last_reply"
                    f" FROM recipients WHERE message_id IN ({marks})",
                    list(out),
                ):
                    out[mid].recipients.append(QueuedRecipient(rcpt, attempts, nxt, last or ""))
            return [m for m in out.values() if m.recipients]

        result: list[QueuedMessage] = await self._run(op)
        return result

    async def due(
        self,
        now: float,
        after: tuple[float, str] | None,
        limit: int,
        domain: str | None = None,
    ) -> list[DueRow]:
        """Recipients due by `now` in (next_attempt, message_id) order, from after `after`:
        work proportional to the page, whatever the size of the queue."""
        where = ["r.next_attempt <= ?"]
        args: list[Any] = [now]
        if domain is not None:
            where.append("r.domain = ?")
            args.append(domain)
        if after is not None:
            where.append("(r.next_attempt, r.message_id) > (?, ?)")
            args.extend(after)
        index = "recipients_domain" if domain is not None else "recipients_due"
        sql = (
            "SELECT r.message_id, r.recipient, r.domain, r.attempts, r.next_attempt,"
            f" m.received_at, length(m.data) FROM recipients r INDEXED BY {index}"
            " JOIN messages m ON m.id = r.message_id"
            f" WHERE {' AND '.join(where)} ORDER BY r.next_attempt, r.message_id LIMIT ?"
        )
        args.append(limit)

        def op(db: sqlite3.Connection) -> list[DueRow]:
            return [DueRow(*row) for row in db.execute(sql, args)]

        result: list[DueRow] = await self._run(op)
        return result

    async def next_due(self, now: float) -> float | None:
        """The earliest retry time after `now` (one index probe)."""

        def op(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                "SELECT min(next_attempt) FROM recipients WHERE next_attempt > ?", (now,)
            ).fetchone()
            return float(row[0]) if row and row[0] is not None else None

        result: float | None = await self._run(op)
        return result

    async def oldest(self) -> float | None:
        """When the oldest queued message arrived (one index probe)."""

        def op(db: sqlite3.Connection) -> float | None:
            row = db.execute("SELECT min(received_at) FROM messages").fetchone()
            return float(row[0]) if row and row[0] is not None else None

        result: float | None = await self._run(op)
        return result

    async def counts(self) -> SpoolCounts:
        """Messages, and recipients by domain (index-only scans; once, at start)."""

        def op(db: sqlite3.Connection) -> SpoolCounts:
            (messages,) = db.execute("SELECT count(*) FROM messages").fetchone()
            by_domain = {
                d: n
                for d, n in db.execute("SELECT domain, count(*) FROM recipients GROUP BY domain")
            }
            return SpoolCounts(int(messages), by_domain)

        result: SpoolCounts = await self._run(op)
        return result

    async def disk(self) -> DiskUsage:
        def op(db: sqlite3.Connection) -> DiskUsage:
            (page_size,) = db.execute("PRAGMA page_size").fetchone()
            (free_pages,) = db.execute("PRAGMA freelist_count").fetchone()
            return disk_usage(self._db_file, int(page_size) * int(free_pages))

        result: DiskUsage = await self._run(op)
        return result


def disk_usage(db_file: Path, free_pages_bytes: int = 0) -> DiskUsage:
    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return 0

    st = os.statvfs(db_file.parent)
    return DiskUsage(
        db_bytes=size(db_file),
        wal_bytes=size(db_file.with_name(db_file.name + "-wal")),
        free_pages_bytes=free_pages_bytes,
        disk_free_bytes=st.f_bavail * st.f_frsize,
    )


def _resolve_all(results: list[_Result]) -> None:
    for fut, value, err in results:
        if fut.done():
            continue
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(value)
