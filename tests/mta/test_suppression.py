"""The suppression list on both backends: SQLite (per engine, persistent) and Redis (fleet-wide,
against a real redis-server from fixtures.peers)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from fixtures.peers import RedisServer

from mailfleet.mta.config import SuppressionConfig
from mailfleet.mta.suppression import (
    RedisSuppressions,
    SQLiteSuppressions,
    Suppression,
    SuppressionStore,
    SuppressionStoreError,
    normalize_recipient,
    open_store,
    redis_key,
)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("Jane.Doe@Example.COM", "jane.doe@example.com"),
        ("<jane@example.com>", "jane@example.com"),
        ("  jane@example.com. ", "jane@example.com"),
        ("rfc822; Jane@Example.com", "jane@example.com"),
        ("jane+tag@gmail.com", "jane+tag@gmail.com"),  # provider aliasing is not folded
        ("j.a.n.e@gmail.com", "j.a.n.e@gmail.com"),
    ],
)
def test_normalize_recipient(raw: str, key: str) -> None:
    assert normalize_recipient(raw) == key


# --- behaviour shared by both backends ----------------------------------------------------------


StoreFactory = Callable[[], SuppressionStore]


@pytest.fixture(params=["sqlite", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A factory of stores sharing one list (same file / same Redis namespace)."""
    stores: list[SuppressionStore] = []
    if request.param == "sqlite":
        path = tmp_path / "suppressions.db"

        def make() -> SuppressionStore:
            stores.append(SQLiteSuppressions(path))
            return stores[-1]
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        namespace = f"test-{uuid.uuid4().hex}"

        def make() -> SuppressionStore:
            stores.append(RedisSuppressions(server.url, namespace))
            return stores[-1]

    yield make
    for s in stores:
        await s.close()


async def test_add_get_remove(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.get("jane@example.org") is None
    before = time.time()
    s = await store.add("Jane@Example.org", "invalid-recipient", "550 5.1.1 no such user")
    assert s.recipient == "jane@example.org"
    assert (s.reason, s.source) == ("invalid-recipient", "550 5.1.1 no such user")
    assert before - 1 <= s.created_at <= time.time() + 1
    assert await store.get("JANE@example.org") == s
    assert await store.count() == 1
    assert await store.remove("jane@EXAMPLE.org") is True
    assert await store.get("jane@example.org") is None
    assert await store.remove("jane@example.org") is False
    assert await store.count() == 0


async def test_add_keeps_the_first_entry(make_store: StoreFactory) -> None:
    store = make_store()
    first = await store.add("bob@example.org", "complaint", "arf:feedback.yahoo.com")
    again = await store.add("Bob@example.org", "invalid-recipient", "550 5.1.1")
    assert again == first
    assert await store.get("bob@example.org") == first
    assert await store.count() == 1


async def test_list_pages_in_recipient_order(make_store: StoreFactory) -> None:
    store = make_store()
    names = [f"user{i:03d}@example.org" for i in range(25)]
    for n in reversed(names):
        await store.add(n, "manual", "admin")
    await store.remove("user010@example.org")
    expected = [n for n in names if n != "user010@example.org"]

    seen: list[str] = []
    after: str | None = None
    for _ in range(10):
        page = await store.list(limit=7, after=after)
        if not page:
            break
        assert len(page) <= 7
        seen.extend(s.recipient for s in page)
        after = page[-1].recipient
    assert seen == expected
    assert [s.recipient for s in await store.list()] == expected
    assert all(s.reason == "manual" for s in await store.list(limit=3))
    with pytest.raises(ValueError, match="limit"):
        await store.list(limit=0)


async def test_concurrent_adds_of_one_address_store_one_entry(make_store: StoreFactory) -> None:
    store = make_store()
    results = await asyncio.gather(
        *(store.add("dup@example.org", "invalid-recipient", f"bounce {i}") for i in range(20))
    )
    assert len({r.source for r in results}) == 1
    assert await store.count() == 1


async def test_two_stores_on_one_list_see_each_others_writes_after_reopen(
    make_store: StoreFactory,
) -> None:
    a = make_store()
    await a.add("carol@example.org", "complaint", "arf:aol.net")
    await a.close()
    b = make_store()
    got = await b.get("carol@example.org")
    assert got is not None and got.reason == "complaint"


# --- SQLite -------------------------------------------------------------------------------------


async def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool" / "suppressions.db"
    store = SQLiteSuppressions(path, clock=lambda: 1_700_000_000.0)
    await store.add("a@example.org", "invalid-recipient", "550 5.1.1 <a@example.org> unknown")
    await store.add("b@example.org", "complaint", "arf:arf.mail.yahoo.com")
    await store.add("c@example.org", "manual", "admin")
    await store.remove("c@example.org")
    await store.close()

    reopened = SQLiteSuppressions(path)
    try:
        assert await reopened.count() == 2
        assert await reopened.get("A@example.org") == Suppression(
            "a@example.org", "invalid-recipient", "550 5.1.1 <a@example.org> unknown", 1.7e9
        )
        assert reopened.contains("b@example.org")
        assert not reopened.contains("c@example.org")
        assert await reopened.get("c@example.org") is None
    finally:
        await reopened.close()


async def test_sqlite_uses_wal(tmp_path: Path) -> None:
    import sqlite3

    store = SQLiteSuppressions(tmp_path / "s.db")
    await store.add("a@example.org", "manual", "admin")
    try:
        with sqlite3.connect(tmp_path / "s.db") as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await store.close()


async def test_sqlite_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = SQLiteSuppressions(tmp_path / "s.db")
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(SuppressionStoreError, match="closed"):
        await store.add("a@example.org", "manual", "admin")


def test_sqlite_unopenable_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "not-a-db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(SuppressionStoreError, match="not-a-db"):
        SQLiteSuppressions(tmp_path / "not-a-db")


async def test_open_store_sqlite_defaults_beside_the_spool(tmp_path: Path) -> None:
    store = open_store(SuppressionConfig(), tmp_path)
    try:
        assert isinstance(store, SQLiteSuppressions)
        assert store.path == tmp_path / "suppressions.db"
        await store.add("a@example.org", "manual", "admin")
    finally:
        await store.close()
    assert (tmp_path / "suppressions.db").exists()

    custom = tmp_path / "elsewhere" / "list.db"
    store = open_store(SuppressionConfig(path=custom), tmp_path)
    try:
        assert isinstance(store, SQLiteSuppressions) and store.path == custom
    finally:
        await store.close()


# --- Redis --------------------------------------------------------------------------------------


async def test_redis_two_engines_share_one_list(redis_server: RedisServer) -> None:
    ns = f"pool-{uuid.uuid4().hex}"
    engine1 = RedisSuppressions(redis_server.url, ns)
    engine2 = RedisSuppressions(redis_server.url, ns)
    try:
        added = await engine1.add("dave@example.org", "complaint", "arf:hotmail.com")
        assert await engine2.get("Dave@Example.org") == added
        assert await engine2.count() == 1
        assert await engine2.remove("dave@example.org") is True
        assert await engine1.get("dave@example.org") is None
        await engine2.add("erin@example.org", "invalid-recipient", "550 5.1.1")
        assert [s.recipient for s in await engine1.list()] == ["erin@example.org"]
    finally:
        await engine1.close()
        await engine2.close()


async def test_redis_namespaces_isolate(redis_server: RedisServer) -> None:
    tag = uuid.uuid4().hex
    a = RedisSuppressions(redis_server.url, f"a-{tag}")
    b = RedisSuppressions(redis_server.url, f"b-{tag}")
    try:
        await a.add("frank@example.org", "manual", "admin")
        assert await b.get("frank@example.org") is None
        assert await b.count() == 0
        assert await b.list() == []
        assert await b.remove("frank@example.org") is False
        assert await a.get("frank@example.org") is not None
    finally:
        await a.close()
        await b.close()


async def test_redis_layout_is_a_hash_per_namespace(redis_server: RedisServer) -> None:
    ns = f"layout-{uuid.uuid4().hex}"
    store = RedisSuppressions(redis_server.url, ns)
    try:
        await store.add("grace@example.org", "complaint", "arf:aol.net")
    finally:
        await store.close()
    assert redis_key(ns) == f"mailfleet:suppressions:{ns}"
    reply = redis_server.command("HGET", redis_key(ns), "grace@example.org")
    assert b'"reason":"complaint"' in reply and b'"source":"arf:aol.net"' in reply
    assert redis_server.command("TYPE", redis_key(ns)) == b"+hash\r\n"


async def test_redis_entry_written_by_another_tool_still_suppresses(
    redis_server: RedisServer,
) -> None:
    ns = f"foreign-{uuid.uuid4().hex}"
    redis_server.command("HSET", redis_key(ns), "henry@example.org", "imported 2025")
    store = RedisSuppressions(redis_server.url, ns)
    try:
        got = await store.get("henry@example.org")
        assert got is not None and got.reason == "unknown" and got.source == "imported 2025"
    finally:
        await store.close()


async def test_redis_down_raises_store_error() -> None:
    from fixtures.peers import free_port

    store = RedisSuppressions(f"redis://127.0.0.1:{free_port('127.0.0.1')}/0", "x")
    try:
        with pytest.raises(SuppressionStoreError, match="redis"):
            await store.get("a@example.org")
    finally:
        await store.close()


async def test_open_store_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    ns = f"cfg-{uuid.uuid4().hex}"
    cfg = SuppressionConfig.model_validate(
        {"backend": "redis", "redisURL": redis_server.url, "namespace": ns}
    )
    store = open_store(cfg, tmp_path)
    try:
        assert isinstance(store, RedisSuppressions) and store.namespace == ns
        await store.add("ivy@example.org", "manual", "admin")
        assert await store.count() == 1
    finally:
        await store.close()
    assert not (tmp_path / "suppressions.db").exists()
