"""The delivery side's wire format: body framing for DATA, command lines, reply parsing."""

from __future__ import annotations

import re

import pytest

from mailfleet.mta.smtpwire import WireLost, command, frame_body, take_replies


def unstuff(framed: bytes) -> bytes:
    """What a server stores (RFC 5321 §4.5.2): the terminator off, leading dots undone."""
    assert framed.endswith(b"\r\n.\r\n") or framed == b".\r\n"
    body = framed[:-3]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def normalised(data: bytes) -> bytes:
    out = re.sub(rb"\r\n|\n|\r", b"\r\n", data)
    return out if out.endswith(b"\r\n") else out + b"\r\n"


BODIES = [
    b"",
    b"a",
    b".",
    b"..",
    b"a\r\n",
    b".a\r\n",
    b"a\r\n.\r\nb\r\n",
    b"a\r\n..b\r\n.",
    b"line1\nline2\n.dot\n",
    b"cr only\rnext\r.dot",
    b"mixed\r\n\n\r\r\n.\n",
    b"\r\n\r\n.\r\n",
    b"trailing\r",
    b"x" * 5000 + b"\r\n.y\r\n" * 3,
]


@pytest.mark.parametrize("body", BODIES)
def test_framed_body_unstuffs_to_the_normalised_body(body: bytes) -> None:
    framed = b"".join(frame_body(body))
    assert framed.endswith(b".\r\n")
    # No line before the terminator is a lone dot, or it would end DATA early.
    lines = framed[:-3].split(b"\r\n")
    assert all(line != b"." for line in lines)
    assert all(b"\r" not in line and b"\n" not in line for line in lines)
    assert unstuff(framed) == normalised(body)


def test_a_crlf_body_is_written_as_it_is() -> None:
    body = b"Subject: x\r\n\r\nhello\r\n"
    chunks = frame_body(body)
    assert chunks == [body, b".\r\n"]
    assert chunks[0] is body  # no copy of a body that needs no change


def test_command_lines() -> None:
    assert (
        command("MAIL FROM", "a@b.test", ["SIZE=10"], "ascii")
        == b"MAIL FROM:<a@b.test> SIZE=10\r\n"
    )
    assert command("MAIL FROM", "", [], "ascii") == b"MAIL FROM:<>\r\n"
    assert command("RCPT TO", "jö@b.test", [], "utf-8") == "RCPT TO:<jö@b.test>\r\n".encode()
    with pytest.raises(ValueError, match="control character"):
        command("RCPT TO", "a@b.test>\r\nRCPT TO:<c@d.test", [], "ascii")
    with pytest.raises(UnicodeEncodeError):
        command("RCPT TO", "jö@b.test", [], "ascii")


def test_replies_are_taken_whole_and_in_order() -> None:
    buf = bytearray(b"250 2.1.0 ok\r\n250-first\r\n250-second\r\n250 last\r\n354 go")
    assert take_replies(buf) == [(250, "2.1.0 ok"), (250, "first\nsecond\nlast")]
    assert bytes(buf) == b"354 go"  # the incomplete reply waits for the rest
    buf += b" ahead\r\n"
    assert take_replies(buf) == [(354, "go ahead")]
    assert buf == bytearray()
    buf += b"250-partial\r\n"
    assert take_replies(buf) == []
    assert bytes(buf) == b"250-partial\r\n"
    assert take_replies(bytearray(b"221\r\n")) == [(221, "")]


@pytest.mark.parametrize("line", [b"hello\r\n", b"25 x\r\n", b"2500 x\r\n", b"abc ok\r\n"])
def test_a_line_without_a_reply_code_is_an_error(line: bytes) -> None:
    with pytest.raises(WireLost, match="malformed"):
        take_replies(bytearray(line))


@pytest.mark.parametrize("body", [b for b in BODIES if b == normalised(b)])
def test_a_body_known_to_be_crlf_is_framed_as_a_checked_one(body: bytes) -> None:
    """`crlf=True` skips the line-end check only: dots are still doubled, the end still added."""
    assert frame_body(body, crlf=True) == frame_body(body)
