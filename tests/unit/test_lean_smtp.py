"""The submission listener's lean SMTP session: the same state as aiosmtpd's own SMTP without
its per-connection reflection, and DATA read in chunks with aiosmtpd's answers."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from mailfleet.mta.config import SubmissionConfig
from mailfleet.mta.metrics import EngineMetrics
from mailfleet.mta.submission import (
    SubmissionHandler,
    SubmissionPolicy,
    SubmissionServer,
    SubmissionSMTP,
    handler_hooks,
)
from tests.fixtures.procs import free_port

Received = list[tuple[str, list[str], bytes]]


def _handler(received: Received) -> SubmissionHandler:
    async def ingest(
        qid: str, mail_from: str, rcpts: list[str], data: bytes, client: str, crlf: bool
    ) -> None:
        received.append((mail_from, rcpts, data))

    policy = SubmissionPolicy(
        hostname="mx.test",
        trusted=[ipaddress.ip_network("127.0.0.0/8")],
        users=None,
        max_recipients=10,
    )
    return SubmissionHandler(policy, ingest, EngineMetrics())


def _simple(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | bytes)


async def test_lean_session_has_the_state_aiosmtpd_gives_its_own() -> None:
    handler = _handler([])
    server = SubmissionServer(handler, EngineMetrics())
    lean = SubmissionSMTP(
        handler,
        server,
        hostname="mx.test",
        ident="mailfleet ESMTP",
        data_size_limit=1000,
        tls_context=None,
        timeout=30.0,
        hooks=handler_hooks(handler),
    )
    stock = SMTP(
        handler,
        hostname="mx.test",
        ident="mailfleet ESMTP",
        data_size_limit=1000,
        enable_SMTPUTF8=True,
        decode_data=False,
        tls_context=None,
        require_starttls=False,
        auth_require_tls=True,
        authenticator=handler.authenticate,
        timeout=30.0,
        loop=asyncio.get_running_loop(),
    )
    ours = {k: v for k, v in vars(lean).items() if not k.startswith("_SubmissionSMTP")}
    theirs = vars(stock)
    assert set(theirs) <= set(ours)
    for name, value in theirs.items():
        if _simple(value):
            assert ours[name] == value, name
    assert set(lean._smtp_methods) == set(stock._smtp_methods)
    # aiosmtpd takes every auth_* attribute of the handler for a mechanism, so it offered the
    # handler's `auth_limiter` as "AUTH limiter"; the lean session offers the real ones only.
    assert set(lean._auth_methods) == set(stock._auth_methods) - {"limiter"} == {"LOGIN", "PLAIN"}
    assert lean._handle_hooks.keys() == stock._handle_hooks.keys()
    # What the lean session overrides is what answers.
    assert lean._smtp_methods["DATA"] == lean.smtp_DATA
    assert lean._auth_methods["PLAIN"].method == lean.auth_PLAIN


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, Received]]:
    received: Received = []
    handler = _handler(received)
    server = SubmissionServer(handler, EngineMetrics())
    await server.start(
        SubmissionConfig.model_validate(
            {
                "listen": f"127.0.0.1:{free_port()}",
                "maxMessageSize": 20000,
                "trustedNetworks": ["127.0.0.0/8"],
            }
        )
    )
    try:
        yield server.port, received
    finally:
        server.stop_listening()


async def _session(port: int, chunks: list[bytes]) -> list[str]:
    """EHLO, MAIL, RCPT, DATA, then `chunks` written one by one (each flushed on its own), then
    RSET and one more message to show the session carries on; the replies to DATA's data and to
    the second message."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def reply() -> str:
        while True:
            line = (await reader.readline()).decode()
            if line[3:4] != "-":
                return line.strip()

    async def cmd(text: str) -> str:
        writer.write(text.encode() + b"\r\n")
        await writer.drain()
        return await reply()

    await reply()
    assert (await cmd("EHLO client.test")).startswith("250")
    out = []
    for n in range(2):
        assert (await cmd("MAIL FROM:<a@example.test>")).startswith("250")
        assert (await cmd("RCPT TO:<b@example.org>")).startswith("250")
        assert (await cmd("DATA")).startswith("354")
        for chunk in chunks if n == 0 else [b"Subject: two\r\n\r\nsecond\r\n.\r\n"]:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.01)
        out.append(await reply())
        await cmd("RSET")
    await cmd("QUIT")
    writer.close()
    return out


HEAD = b"Subject: x\r\n\r\n"


@pytest.mark.parametrize(
    ("chunks", "tail"),
    [
        # dot-stuffing undone, wherever the chunks split the lines and the terminator
        (
            [HEAD + b"..one\r\n", b".", b".two\r\nend.", b"\r\n.", b"\r\n"],
            HEAD + b".one\r\n.two\r\nend.\r\n",
        ),
        ([b".", b".x\r\n", b".\r\n"], b"\r\n.x\r\n"),
        ([HEAD + b"a line.\r\n..\r\n.\r\n"], HEAD + b"a line.\r\n.\r\n"),
        ([HEAD + b"x" * 998 + b"\r\n.\r\n"], HEAD + b"x" * 998 + b"\r\n"),
        ([b".\r\n"], b""),  # an empty message
    ],
)
async def test_data_is_read_whole_and_unstuffed(
    listener: tuple[int, Received], chunks: list[bytes], tail: bytes
) -> None:
    port, received = listener
    replies = await _session(port, chunks)
    assert replies[0].startswith("250 2.0.0 Ok: queued as"), replies
    assert replies[1].startswith("250"), replies
    assert received[0][2].endswith(tail)
    assert received[1][2].endswith(b"Subject: two\r\n\r\nsecond\r\n")


async def test_a_line_too_long_is_500_and_too_much_data_552(
    listener: tuple[int, Received],
) -> None:
    port, received = listener
    replies = await _session(port, [HEAD + b"x" * 1000 + b"\r\nmore\r\n.\r\n"])
    assert replies[0].startswith("500"), replies
    assert replies[1].startswith("250"), replies
    replies = await _session(port, [HEAD, *[b"y" * 500 + b"\r\n"] * 60, b".\r\n"])
    assert replies[0].startswith("552"), replies
    assert replies[1].startswith("250"), replies
    # only the two second messages got through
    assert [d.endswith(b"second\r\n") for _, _, d in received] == [True, True]
