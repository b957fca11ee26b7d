"""Backlogs: bodies stay on disk until an attempt reads them, the active set stays within
spool.activeLimit, a restart on a full spool delivers what is due first, SREs see the queue by
domain and can retry or bounce a domain, and new mail is refused before the disk fills."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.dkimverify import dkim_verify
from fixtures.dnsserver import DnsServer
from fixtures.engine import EngineProc
from fixtures.keys import ED_KEY, RSA_KEY
from fixtures.procs import free_port
from fixtures.smtppeers import RecordingMX

from mailfleet.mta.dkimkeys import dns_txt_record
from mailfleet.mta.spool import RecipientUpdate, Spool

TOKEN = "backlog-admin-token-0123456789"


@pytest.fixture
def sender_mx() -> Iterator[RecordingMX]:
    """The MX of the senders' domain (example.test), where DSNs arrive."""
    with RecordingMX("127.0.0.1", hostname="mx.example.test") as m:
        yield m


def body(i: int, size: int = 6000) -> bytes:
    """A message with a From at example.test (signed), distinct and big enough to matter."""
    line = f"line of message {i:04d} ".ljust(76, "x") + "\r\n"
    text = line * (size // len(line))
    return (
        f"From: App <app@example.test>\r\nTo: <user{i}@example.org>\r\n"
        f"Subject: backlog {i:04d}\r\nMessage-ID: <backlog.{i}.{time.time_ns()}@example.test>\r\n"
        f"\r\n{text}"
    ).encode()


class Bound:
    """Samples the active set through /v1/status and metrics; remembers the largest seen."""

    def __init__(self, eng: EngineProc) -> None:
        self.eng = eng
        self.max_status = 0
        self.max_metric = 0.0

    def sample(self) -> dict[str, Any]:
        q: dict[str, Any] = self.eng.status()["queue"]
        self.max_status = max(self.max_status, q["activeMessages"])
        self.max_metric = max(
            self.max_metric, self.eng.metric("mailfleet_queue_messages", state="active")
        )
        return q


def test_bodies_read_from_disk_are_sent_intact_and_dkim_valid(
    mta_engine: Callable[..., EngineProc], dns_server: DnsServer
) -> None:
    """Deferred mail is evicted to disk; after a restart each body is read back from the spool
    for its attempt and arrives byte-for-byte as accepted, both DKIM signatures passing in an
    independent verifier (Perl Mail::DKIM)."""
    for key in (RSA_KEY, ED_KEY):
        dns_server.add_txt(f"{key.selector}._domainkey.{key.domain}", dns_txt_record(key))
    dns_server.start()
    port = free_port()
    eng = mta_engine(
        {
            "routing": {"routes": {"*": f"127.0.0.1:{port}"}},
            "retry": {"initial": "1h", "max": "1h", "jitter": 0},
            "spool": {"activeLimit": 3},
            "dkim": {"keys": [k.model_dump(mode="json", by_alias=True) for k in (RSA_KEY, ED_KEY)]},
        }
    )
    sent = {f"user{i}@example.org": body(i) for i in range(8)}
    for rcpt, data in sent.items():
        eng.send("app@example.test", [rcpt], data)
    # Each tried once against a closed port, then back to disk until its retry an hour later.
    eng.wait_until(
        lambda: eng.metric("mailfleet_delivery_attempts_total", result="deferred") == 8,
        what="eight deferred attempts",
    )
    eng.wait_until(lambda: eng.status()["queue"]["activeMessages"] == 0, what="active set empty")
    q = eng.status()["queue"]
    assert q["messages"] == 8 and q["recipients"] == 8
    assert q["byDomain"]["example.org"] == {"queued": 8, "active": 0, "provider": "default"}
    eng.stop()

    with RecordingMX("127.0.0.1", port, hostname="mx.example.org") as mx:
        eng.start()
        assert eng.status()["queue"]["messages"] == 8
        assert mx.messages() == []  # not due yet: nothing was loaded for an attempt
        done = eng.post("/v1/queue/retry", {"domain": "example.org"})
        assert done == {"action": "retry", "domain": "example.org", "recipients": 8}
        got = mx.wait_for(8)
        eng.wait_queue_empty()
    assert len(got) == 8
    for m in got:
        (rcpt,) = m.rcpt_tos
        original = sent[rcpt]
        # What was accepted, after the signatures and the Received line added at acceptance.
        assert m.content.replace(b"\r\n", b"\n").endswith(original.replace(b"\r\n", b"\n"))
        results = dkim_verify(m.content, dns_server)
        assert sorted(r["algorithm"] for r in results) == ["ed25519-sha256", "rsa-sha256"]
        assert {r["result"] for r in results} == {"pass"}, results


def test_active_set_stays_within_its_limit_through_a_backlog(
    mta_engine: Callable[..., EngineProc],
) -> None:
    with RecordingMX("127.0.0.1", hostname="mx.example.org") as mx:
        mx.on_rcpt = lambda call: "451 4.3.0 come back later"
        eng = mta_engine(
            {
                "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
                "retry": {"initial": "1s", "max": "1s", "jitter": 0},
                "spool": {"activeLimit": 4},
            }
        )
        bound = Bound(eng)
        for i in range(30):
            eng.send("app@example.test", [f"user{i}@example.org"], body(i, 500))
            bound.sample()
        assert eng.metric("mailfleet_queue_active_limit") == 4

        def all_deferred() -> bool:
            bound.sample()
            return eng.metric("mailfleet_delivery_attempts_total", result="deferred") >= 30

        eng.wait_until(all_deferred, what="every message tried once")
        q = bound.sample()
        assert q["messages"] == 30 and q["activeLimit"] == 4
        assert q["byProvider"]["default"]["queued"] == 30
        mx.on_rcpt = None  # the destination is back: the backlog drains

        def drained() -> bool:
            return bound.sample()["messages"] == 0

        eng.wait_until(drained, timeout=60, what="backlog drained")
    assert len({m.rcpt_tos[0] for m in mx.messages()}) == 30
    assert 1 <= bound.max_status <= 4
    assert bound.max_metric <= 4


def _fill_spool(path: Path, later: int, due: int) -> list[str]:
    """A spool as a crashed engine leaves it: `later` messages whose retry is an hour away,
    then `due` newer ones never tried. Returns the due ones' recipients in arrival order."""

    async def fill() -> list[str]:
        s = Spool(path)
        await s.start()
        in_an_hour = time.time() + 3600
        for i in range(later):
            m = await s.accept("app@example.test", [f"l{i}@later.example"], body(i, 2000))
            await s.update(
                m.id, [RecipientUpdate(f"l{i}@later.example", False, 1, in_an_hour, "451 busy")]
            )
        due_rcpts = [f"d{i}@due.example" for i in range(due)]
        for i, r in enumerate(due_rcpts):
            await s.accept("app@example.test", [r], body(1000 + i, 2000))
        await s.close()
        return due_rcpts

    return asyncio.run(fill())


def test_restart_on_a_big_spool_delivers_what_is_due_first_then_bounce_by_domain(
    mta_engine: Callable[..., EngineProc], sender_mx: RecordingMX, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    with RecordingMX("127.0.0.1", hostname="mx.example.org") as mx:
        eng = mta_engine(
            {
                "routing": {
                    "routes": {
                        "example.test": f"{sender_mx.host}:{sender_mx.port}",
                        "*": f"{mx.host}:{mx.port}",
                    }
                },
                "spool": {"activeLimit": 2},
                "delivery": {"maxConcurrentDeliveries": 1},
                "admin": {"tokenFile": str(token_file)},
            },
            start=False,
        )
        eng.admin_token = TOKEN
        due = _fill_spool(Path(eng.config["spool"]["path"]), later=400, due=10)
        eng.start()
        got = mx.wait_for(10)
        # The due ones, oldest first, although 400 older messages sit in front of them.
        assert [m.rcpt_tos[0] for m in got] == due
        eng.wait_until(lambda: eng.status()["queue"]["messages"] == 400, what="due ones done")
        q = eng.status()["queue"]
        assert q["byDomain"]["later.example"]["queued"] == 400
        assert q["byDomain"]["later.example"]["active"] == 0
        assert q["oldestAgeSeconds"] is not None and q["oldestAgeSeconds"] >= 0
        assert q["nextRetry"] is not None and q["nextRetry"] > time.time() + 3000
        assert len(mx.messages()) == 10

        # Bouncing a domain takes the admin token, like every other state change.
        assert "error" in eng.post("/v1/queue/bounce", {"domain": "later.example"}, token="bad")
        assert eng.status()["queue"]["messages"] == 400
        done = eng.post("/v1/queue/bounce", {"domain": "later.example"})
        assert done["recipients"] == 400
        dsns = sender_mx.wait_for(400, timeout=120)
        eng.wait_queue_empty(timeout=60)
    assert {d.rcpt_tos[0] for d in dsns} == {"app@example.test"}
    assert all(b"Status: 5.0.0" in d.content and b"@later.example" in d.content for d in dsns)
    assert len(mx.messages()) == 10  # none of the bounced ones was delivered


def test_new_mail_is_refused_with_452_below_the_disk_reserve(
    mta_engine: Callable[..., EngineProc],
) -> None:
    eng = mta_engine({"spool": {"diskReserve": "1000000Gi"}})  # more than any disk has
    eng.wait_until(
        lambda: (eng.status()["queue"]["spool"] or {}).get("refusingNewMail") is True,
        what="disk check",
    )
    with eng.smtp() as s:
        s.ehlo()
        code, reply = s.mail("app@example.test")
    assert (code, reply[:5]) == (452, b"4.3.1")
    with pytest.raises(smtplib.SMTPSenderRefused), eng.smtp() as s:
        s.sendmail("app@example.test", ["x@example.org"], body(1, 100))
    assert eng.metric("mailfleet_submission_rejections_total", reason="disk-full") == 2
    assert eng.status()["queue"]["messages"] == 0
    assert eng.metric("mailfleet_spool_disk_free_bytes") > 0
    assert eng.metric("mailfleet_spool_bytes", file="db") > 0


def test_a_backlogged_domain_leaves_room_for_the_others(
    mta_engine: Callable[..., EngineProc],
) -> None:
    """30 messages for a domain its provider's rate holds back (1 a minute) take at most
    activeLimitPerDomain of the active set; mail for another domain sent afterwards is
    delivered at once instead of waiting behind them."""
    with RecordingMX("127.0.0.1", hostname="mx.example.org") as mx:
        eng = mta_engine(
            {
                "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
                "spool": {"activeLimit": 6, "activeLimitPerDomain": 2},
                "shaping": {
                    "providers": [
                        {
                            "name": "slowpoke",
                            "match": {"recipientDomains": ["slow.example"]},
                            "perIP": {"maxMessageRate": "1/min"},
                        }
                    ]
                },
            }
        )
        bound = Bound(eng)
        for i in range(30):
            eng.send("app@example.test", [f"s{i}@slow.example"], body(i, 500))
        fast = [f"f{i}@fast.example" for i in range(10)]
        for i, r in enumerate(fast):
            eng.send("app@example.test", [r], body(100 + i, 500))
        got = mx.wait_for(10)

        def fast_done() -> bool:
            q = bound.sample()
            assert q["byDomain"]["slow.example"]["active"] <= 2
            return {m.rcpt_tos[0] for m in mx.messages()} >= set(fast)

        eng.wait_until(fast_done, what="the other domain's mail delivered")
        q = eng.status()["queue"]
        assert q["byDomain"]["slow.example"]["queued"] >= 27  # still held by its rate
        assert q["byProvider"]["slowpoke"]["queued"] == q["byDomain"]["slow.example"]["queued"]
    assert len([m for m in got if m.rcpt_tos[0].endswith("@slow.example")]) <= 2
    assert bound.max_status <= 6


def test_a_many_recipient_message_loaded_from_disk_reaches_every_recipient(
    mta_engine: Callable[..., EngineProc], tmp_path: Path
) -> None:
    rcpts = [f"u{i}@example.org" for i in range(40)] + [f"v{i}@example.net" for i in range(30)]

    async def fill(path: Path) -> None:
        s = Spool(path)
        await s.start()
        for _ in range(3):
            await s.accept("app@example.test", rcpts, body(7, 1000))
        await s.close()

    with RecordingMX("127.0.0.1", hostname="mx.example.org") as mx:
        eng = mta_engine(
            {"routing": {"routes": {"*": f"{mx.host}:{mx.port}"}}, "spool": {"activeLimit": 1}},
            start=False,
        )
        asyncio.run(fill(Path(eng.config["spool"]["path"])))
        eng.start()
        eng.wait_queue_empty()
    got = sorted(r for m in mx.messages() for r in m.rcpt_tos)
    assert got == sorted(rcpts * 3)
