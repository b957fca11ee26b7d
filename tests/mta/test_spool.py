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
