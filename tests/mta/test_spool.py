"""The spool on its own: durable accept, recovery, group commit, and a failing operation that
does not take its batch-mates down with it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from mailfleet.mta.spool import RecipientUpdate, Spool


async def test_accept_recover_update(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    await s.start()
    a = await s.accept("a@example.test", ["x@example.org", "y@example.org"], b"one\r\n")
    b = await s.accept("", ["z@example.org"], b"two\r\n")
    assert await s.update(a.id, [RecipientUpdate("x@example.org", done=True)]) is False
    await s.update(a.id, [RecipientUpdate("y@example.org", False, 2, 1234.5, "451 later")])
    await s.close()

    back = {m.id: m for m in Spool(tmp_path).load()}
    assert set(back) == {a.id, b.id}
    (rcpt,) = back[a.id].recipients
    assert (rcpt.recipient, rcpt.attempts, rcpt.next_attempt, rcpt.last_reply) == (
        "y@example.org",
        2,
        1234.5,
        "451 later",
    )
    assert back[b.id].data == b"two\r\n" and back[b.id].mail_from == ""

    s = Spool(tmp_path)
    await s.start()
    assert await s.update(b.id, [RecipientUpdate("z@example.org", done=True)], last=True)
    assert await s.update(a.id, [RecipientUpdate("y@example.org", done=True)]) is True
    await s.close()
    assert Spool(tmp_path).load() == []


async def test_concurrent_accepts_share_commits(tmp_path: Path) -> None:
    batches: list[int] = []
    s = Spool(tmp_path, observe_commit=lambda _s, n: batches.append(n))
    await s.start()
    await asyncio.gather(*(s.accept("a@t", [f"r{i}@t"], b"m\r\n") for i in range(200)))
    await s.close()
    assert sum(batches) == 200
    assert len(batches) < 200  # group commit: fewer fsyncs than messages
    assert len(Spool(tmp_path).load()) == 200


async def test_a_failing_operation_does_not_fail_its_batch(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    await s.start()

    def bad(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO no_such_table VALUES (1)")

    results = await asyncio.gather(
        s.accept("a@t", ["r1@t"], b"1\r\n"),
        s._submit(bad),
        s.accept("a@t", ["r2@t"], b"2\r\n"),
        return_exceptions=True,
    )
    await s.close()
    assert isinstance(results[1], sqlite3.OperationalError)
    assert sorted(m.recipients[0].recipient for m in Spool(tmp_path).load()) == ["r1@t", "r2@t"]


async def test_closed_spool_refuses(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    with pytest.raises(Exception, match="not running"):
        await s.accept("a@t", ["r@t"], b"x")


OLD_SCHEMA = """
CREATE TABLE messages (id TEXT PRIMARY KEY, mail_from TEXT NOT NULL, received_at REAL NOT NULL,
    client TEXT NOT NULL DEFAULT '', data BLOB NOT NULL);
CREATE TABLE recipients (message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    recipient TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0, last_reply TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (message_id, recipient));
"""


async def test_a_spool_from_before_lazy_bodies_is_upgraded(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "spool.db")
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO messages VALUES ('m1', 'a@t', 1.0, '', x'6869')")
    db.execute("INSERT INTO recipients (message_id, recipient) VALUES ('m1', 'U@Example.ORG.')")
    db.commit()
    db.close()
    s = Spool(tmp_path)
    await s.start()
    reader = s.reader()
    (row,) = await reader.due(10.0, None, 10)
    assert (row.message_id, row.domain, row.size) == ("m1", "example.org", 2)
    assert await reader.message("m1") == ("a@t", b"hi")
    counts = await reader.counts()
    assert (counts.messages, counts.recipients_by_domain) == (1, {"example.org": 1})
    await reader.close()
    await s.close()


async def test_due_pages_oldest_first_from_a_cursor(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    await s.start()
    ids = [(await s.accept("a@t", [f"r{i}@d{i % 2}.test"], b"x\r\n")).id for i in range(5)]
    # The first one waits for a retry in an hour: not due, and after the others.
    await s.update(ids[0], [RecipientUpdate("r0@d0.test", False, 1, 4e9, "451")])
    reader = s.reader()
    now = 3e9
    first = await reader.due(now, None, 2)
    assert [r.message_id for r in first] == ids[1:3]
    rest = await reader.due(now, (first[-1].next_attempt, first[-1].message_id), 10)
    assert [r.message_id for r in rest] == ids[3:]
    assert [r.message_id for r in await reader.due(now, None, 10, domain="d0.test")] == [
        ids[2],
        ids[4],
    ]
    assert await reader.next_due(now) == 4e9
    assert await s.retry_now("d0.test", now) == 1
    # Due now, behind those that were due before it.
    assert [r.message_id for r in await reader.due(now, None, 10)] == [*ids[1:], ids[0]]
    await reader.close()
    await s.close()


async def test_housekeeping_gives_deleted_messages_space_back(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    await s.start()
    big = b"x" * 50_000
    msgs = [await s.accept("a@t", ["r@t"], big) for _ in range(100)]
    await s.maintain()
    full = (tmp_path / "spool.db").stat().st_size
    assert full > 100 * 50_000
    for m in msgs:
        await s.update(m.id, [RecipientUpdate("r@t", done=True)], last=True)
    assert await s.maintain() == 0  # every freed page handed back
    usage = await s.reader().disk()
    assert usage.db_bytes < full // 10
    assert usage.free_pages_bytes == 0
    await s.close()


async def test_a_message_finished_twice_is_gone_once(tmp_path: Path) -> None:
    """Two jobs can finish one message (one loaded from the spool while the other was being
    added): only the update that removed it says it is gone, so the queue's count is decreased
    once (the soak saw it end at -1)."""
    s = Spool(tmp_path)
    await s.start()
    m = await s.accept("a@example.test", ["x@example.org"], b"one\r\n")
    n = await s.accept("a@example.test", ["y@example.org", "z@example.org"], b"two\r\n")
    done = [RecipientUpdate("x@example.org", done=True)]
    assert await s.update(m.id, done, last=True) is True
    assert await s.update(m.id, done, last=True) is False
    assert await s.update(m.id, done) is False
    both = [RecipientUpdate("y@example.org", done=True), RecipientUpdate("z@example.org", True)]
    assert await s.update(n.id, both) is True
    assert await s.update(n.id, both) is False
    await s.close()
