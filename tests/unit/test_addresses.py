"""The strict RFC 5321 envelope address parser: what it accepts and the reply for what it does
not."""

from __future__ import annotations

import pytest

from mailfleet.mta.addresses import AddressError, parse_path, valid_helo


@pytest.mark.parametrize(
    ("arg", "address"),
    [
        ("<user@example.org>", "user@example.org"),
        ("<first.last+tag@sub.example.org>", "first.last+tag@sub.example.org"),
        ('<"john doe"@example.org>', '"john doe"@example.org'),
        ('<"a@b"@example.org>', '"a@b"@example.org'),
        ("<user@[192.0.2.1]>", "user@[192.0.2.1]"),
        ("<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]"),
        # A source route is parsed and ignored (RFC 5321 §4.1.1.3).
        ("<@relay.example:user@example.org>", "user@example.org"),
        ("<@a.example,@b.example:user@example.org>", "user@example.org"),
        (" <user@example.org>", "user@example.org"),
    ],
)
def test_valid_recipients(arg: str, address: str) -> None:
    assert parse_path(arg, "recipient").address == address


def test_null_sender_and_parameters() -> None:
    p = parse_path("<> SIZE=100 BODY=8BITMIME", "sender")
    assert (p.address, p.params) == ("", ["SIZE=100", "BODY=8BITMIME"])


@pytest.mark.parametrize(
    "arg",
    [
        "<a@b.org@evil.org>",
        "<@dest.org>",
        "<u@>",
        "<a@dest..org>",
        "<@dest.org:>",
        "<a..b@dest.org>",
        "<.a@dest.org>",
        "<a@-dest.org>",
        "<a@dest.org.>",
        "<a\x00b@dest.org>",
        "<a\x01@dest.org>",
        "<a\x7f@dest.org>",
        "<a@dest\x00.org>",
        "<a@dest.org\r>",
        "<a@dest.org>junk",
        "a@dest.org",
        "<a@dest.org",
        "<>",
        "<a@[300.1.1.1]>",
        "<a@[tag:stuff]>",
        "<a b@dest.org>",
        '<"a\x00"@dest.org>',
        "<a@dest\udcff.org>",  # an undecodable byte, as aiosmtpd's surrogateescape passes it
        "<" + "a" * 250 + "@dest.org>",
    ],
)
def test_invalid_recipients_get_a_permanent_reply(arg: str) -> None:
    with pytest.raises(AddressError) as e:
        parse_path(arg, "recipient")
    assert e.value.reply.startswith(("501 5.1.3 ", "553 5.6.7 ")), e.value.reply


def test_sender_errors_say_5_1_7() -> None:
    with pytest.raises(AddressError) as e:
        parse_path("<a@b.org@evil.org>", "sender")
    assert e.value.reply.startswith("501 5.1.7 Bad sender address syntax")


def test_utf8_only_with_smtputf8() -> None:
    with pytest.raises(AddressError) as e:
        parse_path("<jöe@exämple.org>", "recipient")
    assert e.value.reply.startswith("553 5.6.7")
    assert parse_path("<jöe@exämple.org>", "recipient", smtputf8=True).address == "jöe@exämple.org"
    assert parse_path("<jöe@example.org> SMTPUTF8", "sender").utf8


def test_bad_parameter() -> None:
    with pytest.raises(AddressError) as e:
        parse_path("<a@b.org> SIZE=", "sender")
    assert e.value.reply.startswith("501 5.5.4")


@pytest.mark.parametrize("name", ["mail.example.org", "localhost", "[192.0.2.1]", "DESKTOP_1"])
def test_valid_helo(name: str) -> None:
    assert valid_helo(name)


@pytest.mark.parametrize(
    "name", ["", "evil\rInjected: yes", "a b", "a..b", "[1.2.3]", "x\x00", "exämple.org"]
)
def test_invalid_helo(name: str) -> None:
    assert not valid_helo(name)
