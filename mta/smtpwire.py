"""The delivery client's mail transactions on the wire: replies read off the socket as they come,
commands written in groups (RFC 2920 PIPELINING) and the message body framed for DATA.

aiosmtplib opens the session (connect, EHLO, STARTTLS); after that `Wire` takes the transport
over. aiosmtplib reads one reply per command written, so it cannot pipeline, and it runs two
regular expressions over every body (line ends, then dot-stuffing): at 100 KB those were the
largest item of a delivery. A body the engine accepted has CRLF line ends already (submission
checked them), so framing it is a dot-stuffing `replace` at most.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque

from mailfleet.mta.lineends import crlf_only, has_dot_line

# Bounds the memory a server can make us hold with a reply that never ends (as aiosmtplib does).
MAX_REPLY = 32 * 1024
# Replies read ahead of the commands that asked for them; a transaction's group is MAIL, its
# recipients and DATA, so more than this is a server talking by itself.
MAX_PENDING_REPLIES = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class WireLost(Exception):
    """The connection ended, timed out or spoke something that is not SMTP."""


# --------------------------------------------------------------------------- pure parts
def frame_body(data: bytes, *, crlf: bool = False) -> list[bytes]:
    """The chunks to write after `354`: CRLF line ends, leading dots doubled (RFC 5321 §4.5.2),
    then the terminating `.CRLF`.

    `crlf`: the caller knows every line end is CRLF (a body the engine accepted this run). Any
    other body is checked, and rewritten only when it has a bare CR or LF.
    """
    if not crlf:
        data = crlf_only(data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if has_dot_line(data):
        data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        return [b".", data, b".\r\n"]
    return [data, b".\r\n"]


def command(verb: str, address: str, options: list[str], encoding: str) -> bytes:
    """`MAIL FROM:<a> opts` or `RCPT TO:<a>` as bytes; an address or option with a control
    character (a CR or LF would start another command) is refused with ValueError."""
    for text in (address, *options):
        if _CONTROL.search(text):
            raise ValueError(f"{verb} argument {text!r} contains a control character")
    line = f"{verb}:<{address}>"
    if options:
        line += " " + " ".join(options)
    return line.encode(encoding) + b"\r\n"


def take_replies(buffer: bytearray) -> list[tuple[int, str]]:
    """Every complete reply at the start of `buffer`, removed from it; multi-line replies
    ("250-..." lines then "250 ...") become one text with newlines. A line that does not start
    with a three-digit code raises WireLost."""
    replies: list[tuple[int, str]] = []
    start = 0
    lines: list[str] = []
    while True:
        end = buffer.find(b"\n", start)
        if end == -1:
            break
        line = bytes(buffer[start : end + 1])
        code_text = line[:3]
        if (
            len(code_text) < 3
            or not code_text.isdigit()
            or line[3:4] not in (b" ", b"-", b"\r", b"\n")
        ):
            raise WireLost(f"malformed reply line: {line[:80]!r}")
        lines.append(line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape"))
        start = end + 1
        if line[3:4] != b"-":
            replies.append((int(code_text), "\n".join(lines)))
            lines = []
            del buffer[:start]
            start = 0
    return replies


# --------------------------------------------------------------------------- the protocol
class Wire(asyncio.Protocol):
    """One SMTP connection after its session setup: write commands, read replies in order.

    Replies that arrive before anyone asks for them are kept (a pipelined group's replies often
    come in one segment), which is what aiosmtplib's protocol does not do.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._buffer = bytearray()
        self._replies: deque[tuple[int, str]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: str | None = None
        transport.set_protocol(self)

    @property
    def alive(self) -> bool:
        return self._lost is None and not self._transport.is_closing()

    @property
    def quiet(self) -> bool:
        """Nothing received that no command asked for: a pooled connection that is not quiet
        would hand its next transaction someone else's replies."""
        return not self._replies and not self._buffer

    def send(self, chunks: list[bytes]) -> None:
        if not self.alive:
            raise WireLost(self._lost or "connection closed")
        self._transport.writelines(chunks)

    async def reply(self, timeout: float) -> tuple[int, str]:  # noqa: ASYNC109
        """The next reply; WireLost if the connection ends or nothing comes within `timeout`."""
        if not self._replies:
            if self._lost is not None:
                raise WireLost(self._lost)
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, self._time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._replies:
                raise WireLost(self._lost or "connection closed")
        return self._replies.popleft()

    def close(self) -> None:
        self._transport.close()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._replies.extend(take_replies(self._buffer))
        except WireLost as e:
            self._fail(str(e))
            return
        if len(self._buffer) > MAX_REPLY:
            self._fail("reply too long")
            return
        if len(self._replies) > MAX_PENDING_REPLIES:
            self._fail("more replies than commands")
            return
        if self._replies:
            self._wake()

    def eof_received(self) -> bool:
        self._fail("connection closed by the server")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc}" if exc else "connection closed")

    def _fail(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
        self._transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._fail("timed out waiting for a reply")


__all__ = [
    "MAX_PENDING_REPLIES",
    "MAX_REPLY",
    "Wire",
    "WireLost",
    "command",
    "frame_body",
    "take_replies",
]
