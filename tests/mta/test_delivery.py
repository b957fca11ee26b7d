"""The delivery client against real SMTP peers on loopback: aiosmtpd RecordingMX, Postfix smtp-sink,
and dnsmasq for the MX records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fixtures.peers import DnsServer, RecordingMX, SmtpSink, free_port

from mailfleet.mta.config import DeliveryConfig, DNSConfig, RoutingConfig
from mailfleet.mta.delivery import (
    AttemptResult,
    DeliveryClient,
    RecipientReply,
    needs_8bitmime,
    needs_smtputf8,
    parse_reply,
    same_family,
    tls_policy,
)
from mailfleet.mta.routing import Destination, Router

MESSAGE = (
    b"From: app@example.test\r\n"
    b"To: bob@remote.test\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".a line that starts with a dot\r\n"
)


def cfg(**overrides: Any) -> DeliveryConfig:
    base: dict[str, Any] = {"connectTimeout": "5s", "commandTimeout": "10s"}
    base.update(overrides)
    return DeliveryConfig.model_validate(base)


def dest(peer: RecordingMX | SmtpSink, name: str = "mx.remote.test", pref: int = 10) -> Destination:
    return Destination(name, peer.host, peer.port, pref)


def refusing(name: str = "dead.remote.test", pref: int = 5) -> Destination:
    """A destination where nothing listens: the connection is refused."""
    return Destination(name, "127.0.0.1", free_port("127.0.0.1"), pref)


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def mx(recording_mx: Callable[..., RecordingMX], request: pytest.FixtureRequest) -> RecordingMX:
    """Every test against this MX runs twice: with and without PIPELINING offered."""
    return recording_mx(hostname="mx.remote.test", pipelining=request.param)


@pytest.fixture
def tls_mx(recording_mx: Callable[..., RecordingMX]) -> RecordingMX:
    return recording_mx(hostname="tls.remote.test", tls=True)


@pytest.fixture
async def client() -> AsyncIterator[DeliveryClient]:
    c = DeliveryClient(cfg(), "mta.example.test")
    yield c
    await c.close()


async def send(
    client: DeliveryClient,
    destinations: list[Destination],
    recipients: list[str] | None = None,
    data: bytes = MESSAGE,
    **kw: Any,
) -> AttemptResult:
    kw.setdefault("source_ip", None)
    kw.setdefault("helo", None)
    return await client.deliver(
        destinations=destinations,
        mail_from="app@example.test",
        recipients=recipients or ["bob@remote.test"],
        data=data,
        **kw,
    )


def codes(result: AttemptResult) -> dict[str, int]:
    return {r.recipient: r.code for r in result.replies}


# --------------------------------------------------------------------------- basics
async def test_delivers_a_message_and_reports_250(client: DeliveryClient, mx: RecordingMX) -> None:
    result = await send(client, [dest(mx)])
    assert result.error is None
    assert result.destination == dest(mx)
    assert codes(result) == {"bob@remote.test": 250}
    assert result.replies[0].enhanced == "2.0.0"
    (msg,) = mx.messages()
    assert msg.mail_from == "app@example.test"
    assert msg.rcpt_tos == ["bob@remote.test"]
    assert msg.helo == "mta.example.test"
    # Dot-stuffing is undone by the server: the body arrives as written.
    assert b".a line that starts with a dot" in msg.content
    assert b"..a line" not in msg.content


async def test_next_mx_is_tried_when_the_first_refuses_connections(
    client: DeliveryClient, mx: RecordingMX
) -> None:
    result = await send(client, [refusing(), dest(mx)])
    assert result.error is None
    assert result.destination == dest(mx)
    assert len(mx.messages()) == 1


async def test_no_reachable_destination_gives_every_recipient_a_451(
    client: DeliveryClient,
) -> None:
    dead1, dead2 = refusing("mx1.remote.test"), refusing("mx2.remote.test", 20)
    result = await send(client, [dead1, dead2], ["a@remote.test", "b@remote.test"])
    assert result.destination is None
    assert result.error is not None
    assert "mx1.remote.test" in result.error and "mx2.remote.test" in result.error
    assert "connection refused" in result.error
    assert [(r.code, r.enhanced) for r in result.replies] == [(451, "4.4.1"), (451, "4.4.1")]
    assert all("connection refused" in r.text for r in result.replies)


async def test_421_greeting_moves_on_to_the_next_mx(
    client: DeliveryClient, mx: RecordingMX, smtp_sink: Callable[..., SmtpSink]
) -> None:
    busy = smtp_sink(dump=False, extra_args=["-Q", "CONNECT"])
    result = await send(client, [dest(busy, "busy.remote.test", 5), dest(mx)])
    assert result.destination == dest(mx)
    assert len(mx.messages()) == 1
    alone = await send(client, [dest(busy, "busy.remote.test", 5)])
    assert alone.error is not None and "421" in alone.error
    assert alone.replies[0].code == 421


async def test_source_address_binding_is_seen_by_the_mx(
    client: DeliveryClient, mx: RecordingMX
) -> None:
    for ip in ("127.0.0.2", "127.0.0.3"):
        result = await send(client, [dest(mx)], source_ip=ip, helo=f"out-{ip[-1]}.example.test")
        assert result.source_ip == ip
        assert codes(result) == {"bob@remote.test": 250}
    seen = [(m.peer_ip, m.helo) for m in mx.messages()]
    assert seen == [("127.0.0.2", "out-2.example.test"), ("127.0.0.3", "out-3.example.test")]


async def test_an_ipv4_source_skips_ipv6_destinations(
    client: DeliveryClient, mx: RecordingMX
) -> None:
    v6 = Destination("mx6.remote.test", "::1", mx.port, 5)
    result = await send(client, [v6, dest(mx)], source_ip="127.0.0.2")
    assert result.destination == dest(mx)


# --------------------------------------------------------------------------- replies
async def test_per_recipient_results_from_rcpt_replies(
    client: DeliveryClient, mx: RecordingMX
) -> None:
    mx.script_rcpt("550 5.1.1 <gone@remote.test>: no such user", rcpt="gone@remote.test")
    mx.script_rcpt("450 4.2.1 mailbox busy, try later", rcpt="busy@remote.test")
    rcpts = ["ok@remote.test", "gone@remote.test", "busy@remote.test"]
    result = await send(client, [dest(mx)], rcpts)
    assert result.replies == [
        RecipientReply("ok@remote.test", 250, "2.0.0", "OK"),
        RecipientReply("gone@remote.test", 550, "5.1.1", "<gone@remote.test>: no such user"),
        RecipientReply("busy@remote.test", 450, "4.2.1", "mailbox busy, try later"),
    ]
    assert result.replies[1].reply == "550 5.1.1 <gone@remote.test>: no such user"
    (msg,) = mx.messages()
    assert msg.rcpt_tos == ["ok@remote.test"]


async def test_the_data_reply_applies_to_every_accepted_recipient(
    client: DeliveryClient, mx: RecordingMX
) -> None:
    mx.script_rcpt("550 5.1.1 no such user", rcpt="gone@remote.test")
    mx.script_data("554 5.7.1 message rejected as spam")
    rcpts = ["a@remote.test", "gone@remote.test", "b@remote.test"]
    result = await send(client, [dest(mx)], rcpts)
    assert [(r.code, r.enhanced) for r in result.replies] == [
        (554, "5.7.1"),
        (550, "5.1.1"),
        (554, "5.7.1"),
    ]
    assert result.replies[0].text == "message rejected as spam"
    assert mx.messages() == []


async def test_a_rejected_sender_rejects_every_recipient(
    client: DeliveryClient, mx: RecordingMX
) -> None:
    mx.script_mail("553 5.7.1 sender not allowed")
    result = await send(client, [dest(mx)], ["a@remote.test", "b@remote.test"])
    assert [(r.code, r.enhanced) for r in result.replies] == [(553, "5.7.1"), (553, "5.7.1")]
    # The connection stays usable for the next message.
    again = await send(client, [dest(mx)])
    assert codes(again) == {"bob@remote.test": 250}


async def test_no_recipient_accepted_sends_no_data(client: DeliveryClient, mx: RecordingMX) -> None:
    mx.script_rcpt("550 5.1.1 no", "451 4.3.0 later")
    result = await send(client, [dest(mx)], ["a@remote.test", "b@remote.test"])
    assert codes(result) == {"a@remote.test": 550, "b@remote.test": 451}
    assert [r.stage for r in mx.replies()] == ["MAIL", "RCPT", "RCPT"]
    assert await send(client, [dest(mx)]) is not None
    assert len(mx.messages()) == 1  # the pooled connection was reset cleanly


async def test_commands_go_in_one_write_only_where_pipelining_is_offered(
    client: DeliveryClient, mx: RecordingMX
) -> None:
    for _ in range(3):
        result = await send(client, [dest(mx)], ["a@remote.test", "b@remote.test"])
        assert codes(result) == {"a@remote.test": 250, "b@remote.test": 250}
    # With PIPELINING, RCPT and DATA reach the MX together with MAIL; without it they wait.
    assert mx.pipelined_mail == (3 if mx.pipelining else 0)
    assert [m.rcpt_tos for m in mx.messages()] == [["a@remote.test", "b@remote.test"]] * 3


async def test_a_refused_sender_then_reset_keeps_the_pipeline_in_step(
    client: DeliveryClient, mx: RecordingMX
) -> None:
    """Replies owed for pipelined commands are read before the next transaction, so each
    message gets its own replies, never the previous one's."""
    mx.script_mail("550 5.7.1 not you")
    mx.script_rcpt("550 5.1.1 no such user", rcpt="gone@remote.test")
    first = await send(client, [dest(mx)], ["a@remote.test"])
    second = await send(client, [dest(mx)], ["gone@remote.test"])
    third = await send(client, [dest(mx)], ["c@remote.test"])
    assert [r.reply for r in first.replies] == ["550 5.7.1 not you"]
    assert [r.reply for r in second.replies] == ["550 5.1.1 no such user"]
    assert codes(third) == {"c@remote.test": 250}
    (msg,) = mx.messages()
    assert msg.rcpt_tos == ["c@remote.test"]
    assert len({m.peer_port for m in mx.messages()}) == 1  # all on one connection


async def test_a_server_answering_out_of_turn_is_not_believed_for_the_next_message(
    client: DeliveryClient, mx: RecordingMX
) -> None:
    # Two replies to one end of data: the second must not pass for the next MAIL's answer
    # (believed, every later reply would answer the command before its own).
    mx.script_data("250 2.0.0 queued\r\n250 2.0.0 nobody asked", "250 2.0.0 second queued")
    mx.script_rcpt("550 5.1.1 gone", rcpt="gone@remote.test")
    first = await send(client, [dest(mx)])
    second = await send(client, [dest(mx)], ["a@remote.test", "gone@remote.test"])
    assert [r.reply for r in first.replies] == ["250 2.0.0 queued"]
    assert [r.reply for r in second.replies] == ["250 2.0.0 second queued", "550 5.1.1 gone"]
    assert [m.rcpt_tos for m in mx.messages()] == [["bob@remote.test"], ["a@remote.test"]]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_pooled_pipelined_deliveries_on_the_engines_uvloop(
    recording_mx: Callable[..., RecordingMX], tls: bool
) -> None:
    """The engine runs on uvloop, whose transports (plain and TLS) the wire takes over."""
    import uvloop

    peer = recording_mx(hostname="tls.remote.test", tls=tls, pipelining=True)

    async def deliver_three() -> list[AttemptResult]:
        client = DeliveryClient(cfg(), "mta.example.test")
        try:
            return [
                await send(client, [dest(peer)], [f"u{i}@remote.test"], MESSAGE * (i * 500 + 1))
                for i in range(3)
            ]
        finally:
            await client.close()

    results = uvloop.run(deliver_three())
    assert [codes(r) for r in results] == [{f"u{i}@remote.test": 250} for i in range(3)]
    assert all(r.tls is tls for r in results)
    got = peer.messages()
    # What arrives is exactly what was sent: dot-stuffing undone, nothing added or lost.
    assert [m.content for m in got] == [MESSAGE * (i * 500 + 1) for i in range(3)]
    assert len({m.peer_port for m in got}) == 1  # one pooled connection
    assert peer.pipelined_mail == 3


# --------------------------------------------------------------------------- pooling
async def test_connections_are_reused_up_to_the_message_limit(mx: RecordingMX) -> None:
    client = DeliveryClient(cfg(maxMessagesPerConnection=3), "mta.example.test")
    try:
        for _ in range(7):
            result = await send(client, [dest(mx)], source_ip="127.0.0.2")
            assert codes(result) == {"bob@remote.test": 250}
    finally:
        await client.close()
    ports = [m.peer_port for m in mx.messages()]
    assert len(ports) == 7
    # 3 + 3 + 1 messages over three connections, in order.
    assert [len({*ports[0:3]}), len({*ports[3:6]}), len({*ports[6:]})] == [1, 1, 1]
    assert len(set(ports)) == 3


async def test_reuse_counted_at_a_postfix_sink(smtp_sink: Callable[..., SmtpSink]) -> None:
    sink = smtp_sink(dump=False)
    # The fixture's readiness probe is a session too; let it be counted first.
    for _ in range(40):
        if sink.sessions:
            break
        await asyncio.sleep(0.05)
    before = sink.sessions
    client = DeliveryClient(cfg(maxMessagesPerConnection=10), "mta.example.test")
    try:
        for _ in range(25):
            result = await send(client, [dest(sink, "sink.test")])
            assert codes(result) == {"bob@remote.test": 250}
    finally:
        await client.close()
    sink.wait_for(25)
    for _ in range(100):  # the last session ends when its QUIT is processed
        if sink.sessions - before >= 3:
            break
        await asyncio.sleep(0.05)
    assert sink.sessions - before == 3  # 10 + 10 + 5 messages


async def test_each_source_ip_gets_its_own_connection(mx: RecordingMX) -> None:
    client = DeliveryClient(cfg(), "mta.example.test")
    try:
        for ip in ["127.0.0.2", "127.0.0.3"] * 3:
            await send(client, [dest(mx)], source_ip=ip)
        assert client.stats() == {f"127.0.0.1:{mx.port}": {"open": 2, "idle": 2}}
    finally:
        await client.close()
    by_ip: dict[str, set[int]] = {}
    for m in mx.messages():
        by_ip.setdefault(m.peer_ip, set()).add(m.peer_port)
    assert {ip: len(p) for ip, p in by_ip.items()} == {"127.0.0.2": 1, "127.0.0.3": 1}


async def test_concurrent_deliveries_respect_the_per_host_connection_limit(
    mx: RecordingMX,
) -> None:
    client = DeliveryClient(cfg(maxConnectionsPerHost=2), "mta.example.test")
    try:
        results = await asyncio.gather(
            *(send(client, [dest(mx)], [f"r{i}@remote.test"]) for i in range(12))
        )
        assert all(codes(r) == {f"r{i}@remote.test": 250} for i, r in enumerate(results))
        assert client.stats()[f"127.0.0.1:{mx.port}"]["open"] <= 2
    finally:
        await client.close()
    assert len(mx.messages()) == 12
    assert len({m.peer_port for m in mx.messages()}) <= 2


async def test_an_idle_connection_of_another_source_ip_gives_up_its_slot(
    mx: RecordingMX,
) -> None:
    client = DeliveryClient(cfg(maxConnectionsPerHost=1), "mta.example.test")
    try:
        for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.2"):
            result = await send(client, [dest(mx)], source_ip=ip)
            assert codes(result) == {"bob@remote.test": 250}
            assert client.stats() == {f"127.0.0.1:{mx.port}": {"open": 1, "idle": 1}}
    finally:
        await client.close()
    assert [m.peer_ip for m in mx.messages()] == ["127.0.0.2", "127.0.0.3", "127.0.0.2"]
    assert len({m.peer_port for m in mx.messages()}) == 3


async def test_a_stale_pooled_connection_is_replaced_without_double_sending(
    mx: RecordingMX,
) -> None:
    client = DeliveryClient(cfg(), "mta.example.test")
    try:
        assert codes(await send(client, [dest(mx)])) == {"bob@remote.test": 250}
        # The MX restarts: the pooled connection is dead but the client has not noticed yet.
        mx.stop()
        mx.start()
        result = await send(client, [dest(mx)])
        assert result.error is None
        assert codes(result) == {"bob@remote.test": 250}
    finally:
        await client.close()
    assert len(mx.messages()) == 2
    assert mx.messages()[0].peer_port != mx.messages()[1].peer_port


async def test_a_421_on_a_pooled_connection_retries_on_a_fresh_one(mx: RecordingMX) -> None:
    mx.script_mail("250 2.1.0 OK", "421 4.7.0 too many messages on this connection")
    client = DeliveryClient(cfg(), "mta.example.test")
    try:
        assert codes(await send(client, [dest(mx)])) == {"bob@remote.test": 250}
        assert codes(await send(client, [dest(mx)])) == {"bob@remote.test": 250}
    finally:
        await client.close()
    assert len(mx.messages()) == 2
    assert len({m.peer_port for m in mx.messages()}) == 2


async def test_idle_connections_are_closed_after_the_idle_timeout(mx: RecordingMX) -> None:
    client = DeliveryClient(cfg(idleTimeout="200ms"), "mta.example.test")
    try:
        await send(client, [dest(mx)])
        assert client.stats() == {f"127.0.0.1:{mx.port}": {"open": 1, "idle": 1}}
        for _ in range(100):
            if not client.stats():
                break
            await asyncio.sleep(0.05)
        assert client.stats() == {}
        await send(client, [dest(mx)])
    finally:
        await client.close()
    assert len({m.peer_port for m in mx.messages()}) == 2


# --------------------------------------------------------------------------- TLS
async def test_opportunistic_starttls_is_used_when_offered(
    client: DeliveryClient, tls_mx: RecordingMX
) -> None:
    result = await send(client, [dest(tls_mx, "tls.remote.test")])
    assert result.tls is True
    assert codes(result) == {"bob@remote.test": 250}
    assert tls_mx.messages()[0].tls is True


async def test_opportunistic_tls_goes_plain_without_starttls(
    client: DeliveryClient, mx: RecordingMX
) -> None:
    result = await send(client, [dest(mx)])
    assert result.tls is False and codes(result) == {"bob@remote.test": 250}


async def test_required_tls_refuses_a_server_without_starttls(mx: RecordingMX) -> None:
    client = DeliveryClient(cfg(tls="required"), "mta.example.test")
    try:
        result = await send(client, [dest(mx)])
    finally:
        await client.close()
    assert result.error is not None and "TLS is required" in result.error
    assert [(r.code, r.enhanced) for r in result.replies] == [(451, "4.7.4")]
    assert mx.messages() == []


async def test_required_tls_per_message_and_per_domain(
    client: DeliveryClient, mx: RecordingMX, tls_mx: RecordingMX
) -> None:
    plain = await send(client, [dest(mx)], require_tls=True)
    assert plain.replies[0].code == 451 and mx.messages() == []
    secure = await send(client, [dest(tls_mx, "tls.remote.test")], require_tls=True)
    assert secure.tls is True and codes(secure) == {"bob@remote.test": 250}

    per_domain = DeliveryClient(cfg(requireTLSDomains=["remote.test"]), "mta.example.test")
    try:
        refused = await send(per_domain, [dest(mx)])
        other = await send(per_domain, [dest(mx)], ["carol@elsewhere.test"])
    finally:
        await per_domain.close()
    assert refused.replies[0].code == 451 and "TLS" in refused.replies[0].text
    assert codes(other) == {"carol@elsewhere.test": 250}


async def test_required_tls_falls_through_to_an_mx_that_offers_it(
    tls_mx: RecordingMX, mx: RecordingMX
) -> None:
    client = DeliveryClient(cfg(tls="required"), "mta.example.test")
    try:
        result = await send(client, [dest(mx, pref=5), dest(tls_mx, "tls.remote.test")])
    finally:
        await client.close()
    assert result.destination == dest(tls_mx, "tls.remote.test")
    assert result.tls and len(tls_mx.messages()) == 1 and mx.messages() == []


# --------------------------------------------------------------------------- 8bit / UTF-8
async def test_smtputf8_and_8bitmime_are_used_when_needed(
    client: DeliveryClient, mx: RecordingMX
) -> None:
    data = "From: jürgen@example.test\r\nSubject: Grüße\r\n\r\nKöln\r\n".encode()
    result = await send(client, [dest(mx)], ["δοκιμή@remote.test"], data=data)
    assert codes(result) == {"δοκιμή@remote.test": 250}
    (msg,) = mx.messages()
    assert msg.rcpt_tos == ["δοκιμή@remote.test"]
    assert "SMTPUTF8" in msg.mail_options and "BODY=8BITMIME" in msg.mail_options
    assert "Grüße".encode() in msg.content

    plain = await send(client, [dest(mx)])
    assert plain.replies[0].code == 250
    assert mx.messages()[1].mail_options == [f"SIZE={len(MESSAGE)}"]


async def test_utf8_mail_to_a_server_without_smtputf8_is_a_permanent_failure(
    client: DeliveryClient, smtp_sink: Callable[..., SmtpSink]
) -> None:
    sink = smtp_sink(dump=False)  # smtp-sink does not offer SMTPUTF8
    result = await send(client, [dest(sink, "sink.test")], ["δοκιμή@remote.test"])
    assert [(r.code, r.enhanced) for r in result.replies] == [(550, "5.6.7")]
    assert sink.count == 0


# --------------------------------------------------------------------------- with real DNS
async def test_router_and_client_fall_back_through_real_mx_records(
    client: DeliveryClient, mx: RecordingMX, dns_server: DnsServer
) -> None:
    dns_server.add_mx("remote.test", "mx1.remote.test", 10)
    dns_server.add_mx("remote.test", "mx2.remote.test", 20)
    dns_server.add_a("mx1.remote.test", "127.0.0.5")  # nothing listens there
    dns_server.add_a("mx2.remote.test", "127.0.0.1")
    routing = RoutingConfig(
        dns=DNSConfig.model_validate(
            {"nameservers": [dns_server.host], "port": dns_server.port, "timeout": 2}
        ),
        allow_private_mx=True,  # the MX hosts are on loopback
    )
    destinations = await Router(routing, mx_port=mx.port).resolve("remote.test")
    assert [d.hostname for d in destinations] == ["mx1.remote.test", "mx2.remote.test"]
    result = await send(client, destinations, source_ip="127.0.0.3")
    assert result.destination is not None and result.destination.hostname == "mx2.remote.test"
    assert mx.messages()[0].peer_ip == "127.0.0.3"


# --------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (250, "2.0.0 OK", ("2.0.0", "OK")),
        (
            550,
            "5.1.1 <x@y>: Recipient address rejected",
            ("5.1.1", "<x@y>: Recipient address rejected"),
        ),
        (
            550,
            "5.1.1 The email account that you tried to reach does not exist.\n"
            "5.1.1 https://support.google.com/mail/?p=NoSuchUser",
            (
                "5.1.1",
                "The email account that you tried to reach does not exist. "
                "https://support.google.com/mail/?p=NoSuchUser",
            ),
        ),
        (421, "4.7.28 [TSS04] rate limited", ("4.7.28", "[TSS04] rate limited")),
        (451, "try again later", (None, "try again later")),
        (550, "2.0.0 nonsense class", (None, "2.0.0 nonsense class")),
        (550, "5.7.1234 too long", (None, "5.7.1234 too long")),
        (250, "", (None, "")),
        (554, "5.7.1", ("5.7.1", "")),
    ],
)
def test_parse_reply(code: int, message: str, expected: tuple[str | None, str]) -> None:
    assert parse_reply(code, message) == expected


def test_recipient_reply_renders_as_one_line() -> None:
    assert RecipientReply("a@b", 550, "5.1.1", "no such user").reply == "550 5.1.1 no such user"
    assert RecipientReply("a@b", 451, None, "later").reply == "451 later"


def test_needs_smtputf8_and_8bitmime() -> None:
    ascii_msg = b"Subject: hi\r\n\r\nbody\r\n"
    assert not needs_smtputf8("a@b.test", ["c@d.test"], ascii_msg)
    assert needs_smtputf8("jürgen@b.test", ["c@d.test"], ascii_msg)
    assert needs_smtputf8("a@b.test", ["c@dé.test"], ascii_msg)
    assert needs_smtputf8("a@b.test", ["c@d.test"], "Subject: é\r\n\r\nx".encode())
    # An 8-bit body alone needs 8BITMIME, not SMTPUTF8.
    body8 = "Subject: hi\r\n\r\nKöln\r\n".encode()
    assert not needs_smtputf8("a@b.test", ["c@d.test"], body8)
    assert needs_8bitmime(body8) and not needs_8bitmime(ascii_msg)


def test_tls_policy() -> None:
    assert tls_policy(cfg(), "x.test") == "opportunistic"
    assert tls_policy(cfg(), "x.test", require_tls=True) == "required"
    assert tls_policy(cfg(tls="none"), "x.test") == "none"
    assert tls_policy(cfg(tls="none", requireTLSDomains=["x.test"]), "X.Test.") == "required"
    assert tls_policy(cfg(tls="required"), None) == "required"


def test_same_family() -> None:
    assert same_family(None, "::1")
    assert same_family("127.0.0.2", "127.0.0.1")
    assert not same_family("127.0.0.2", "::1")
    assert not same_family("::1", "127.0.0.1")
