"""Fuzzing what the second hostile-input probe (issue 21) found in the envelope: address literals
with zone ids (``[IPv6:::1%<anything>]``), every ESMTP parameter with random values, spellings
of one address for the suppression list, and the Received line built from an EHLO name.

The parser either refuses with one valid SMTP reply line, or returns a path and parameters that
can be written into a command line and read back as the same thing: no control character, no
zone id, nothing that ends the path or adds a parameter."""

from __future__ import annotations

import ipaddress
import re

from hypothesis import example, given
from hypothesis import strategies as st

from mailfleet.mta.addresses import (
    AddressError,
    canonical_address,
    is_address_literal,
    parse_path,
    valid_helo,
)
from mailfleet.mta.submission import trace_headers
from mailfleet.mta.suppression import normalize_recipient

REPLY = re.compile(r"^[45]\d\d [45]\.\d{1,3}\.\d{1,3} [\x20-\x7e]+$")
PARAM = re.compile(r"^(SIZE=[0-9]{1,20}|BODY=(7BIT|8BITMIME)|SMTPUTF8)$")
KEYWORDS = ["SIZE", "BODY", "SMTPUTF8", "AUTH", "RET", "ENVID", "NOTIFY", "ORCPT", "X-Y", "size"]

# What an attacker puts in a zone id or a parameter value: controls, the characters that end a
# path or a parameter, a second command.
HOSTILE = st.sampled_from(
    [*'\r\n\x00\t\x0b\x7f <>[]=:;%+"\\@', "\u00b2", "\u2028", "\u202e", "\udcff", "RCPT TO:"]
)
hostile_text = st.lists(HOSTILE | st.characters(), max_size=12).map("".join)

hex_group = st.text("0123456789abcdefABCDEF", min_size=0, max_size=5)
ipv6ish = st.lists(hex_group, min_size=1, max_size=9).map(":".join) | st.sampled_from(
    ["::1", "::", "fe80::1", "::ffff:192.0.2.1", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::"]
)
zone = st.one_of(st.just(""), hostile_text.map(lambda z: "%" + z))
literal = st.one_of(
    st.builds(
        lambda a, z, tag: f"[{tag}{a}{z}]", ipv6ish, zone, st.sampled_from(["IPv6:", "ipv6:", ""])
    ),
    st.builds(lambda a: f"[{a}]", st.sampled_from(["192.0.2.1", "010.0.0.1", "1.2.3", "x:y"])),
)
param = st.builds(
    lambda k, eq, v: f"{k}{'=' if eq else ''}{v if eq else ''}",
    st.sampled_from(KEYWORDS),
    st.booleans(),
    hostile_text | st.sampled_from(["100", "8BITMIME", "7bit", "FULL", "<>", "a+2Bb", "NEVER"]),
)
params = st.lists(param, max_size=4).map(" ".join)
local = st.sampled_from(["x", '"x"', '"a b"', '"a\\"b"', "a.b", '"a>b"', "\u00e9"])


def _check_parsed(arg: str, kind: str, utf8: bool) -> None:
    try:
        parsed = parse_path(arg, kind, smtputf8=utf8)  # type: ignore[arg-type]
    except AddressError as e:
        assert REPLY.match(e.reply), e.reply
        return
    addr = parsed.address
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in addr), addr
    assert "\u2028" not in addr and "\u2029" not in addr
    for p in parsed.params:
        assert PARAM.match(p), p  # rebuilt, never echoed: only what the listener implements
    if kind == "recipient":
        assert parsed.params == []
    if not addr:
        return
    domain = addr.rpartition("@")[2]
    if is_address_literal(domain):
        inner = domain[1:-1]
        assert "%" not in inner
        ipaddress.ip_address(inner[5:] if inner[:5].lower() == "ipv6:" else inner)
    # Written back into a command line it reads as the same path and the same parameters.
    line = f"<{addr}>" + "".join(f" {p}" for p in parsed.params)
    again = parse_path(line, kind, smtputf8=True)  # type: ignore[arg-type]
    assert (again.address, again.params) == (addr, parsed.params)
    # One suppression key for every spelling.
    assert normalize_recipient(canonical_address(addr)) == normalize_recipient(addr)
    assert canonical_address(canonical_address(addr)) == canonical_address(addr)


@given(local, literal, params, st.sampled_from(["sender", "recipient"]), st.booleans())
@example("x", "[IPv6:::1%", "> SIZE=1 RET=FULL ENVID=abc]", "sender", False)
@example("x", "[IPv6:::1%\r\nRCPT TO:<v@example.org>]", "", "recipient", True)
@example("x", "[IPv6:fe80::1%eth0]", "SIZE=1", "sender", False)
def test_literals_with_zone_ids_and_parameters(
    local: str, literal: str, params: str, kind: str, utf8: bool
) -> None:
    _check_parsed(f"<{local}@{literal}>{' ' + params if params else ''}", kind, utf8)


@given(params, st.sampled_from(["sender", "recipient"]), st.booleans())
@example("SIZE=\u00b2", "sender", False)
@example("AUTH=<> SIZE=1 SIZE=2", "sender", False)
def test_every_esmtp_parameter(params: str, kind: str, utf8: bool) -> None:
    _check_parsed(f"<a@example.org> {params}", kind, utf8)
    _check_parsed(f"<> {params}", kind, utf8)


@given(literal)
@example("[IPv6:::1%\rRCPT TO:<victim@example.org>\r]")
def test_helo_literals(name: str) -> None:
    if valid_helo(name):
        assert "%" not in name and all(0x21 <= ord(c) <= 0x7E for c in name)


@given(hostile_text | literal, hostile_text)
def test_received_line_stays_one_header(helo: str, hostname: str) -> None:
    head = trace_headers(
        b"Date: x\r\nMessage-ID: <x@y>\r\n\r\nbody",
        hostname=hostname,
        helo=helo,
        peer_ip="127.0.0.1",
        queue_id="q1",
        tls=False,
        user="",
    )
    # Three lines: "Received: ...", then two folded continuations; nothing else ends a line.
    lines = head.split(b"\r\n")
    assert lines[-1] == b"" and len(lines) == 4, head
    assert lines[0].startswith(b"Received: from ") and all(x[:1] == b"\t" for x in lines[1:3])
    assert all(0x20 <= b <= 0x7E or b == 0x09 for line in lines for b in line), head


@given(
    st.lists(
        st.sampled_from(["v", "i", "c", "\\t", "\\i", "\\m", ".", "V"]), min_size=1, max_size=8
    ),
    st.sampled_from(["example.org", "EXAMPLE.org", "Example.ORG"]),
)
def test_spellings_of_one_address_share_one_key(parts: list[str], domain: str) -> None:
    plain = "".join(p.replace("\\", "") for p in parts)
    quoted = '"' + "".join(parts) + '"'
    try:
        canonical_address(f"{quoted}@{domain}")
    except AddressError:
        return
    # A local part that is a dot-string unquoted is the same mailbox quoted.
    try:
        canonical_address(f"{plain}@{domain}")
    except AddressError:
        return
    assert normalize_recipient(f"{quoted}@{domain}") == normalize_recipient(f"{plain}@{domain}")
