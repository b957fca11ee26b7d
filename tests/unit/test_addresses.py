"""The strict RFC 5321 envelope address parser: what it accepts and the reply for what it does
not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailfleet.mta.addresses import AddressError, canonical_address, parse_path, valid_helo
from mailfleet.mta.suppression import SQLiteSuppressions, check_recipient, normalize_recipient


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


# -- issue 21: address literals as RFC 5321 §4.1.3 writes them ----------------------------------


@pytest.mark.parametrize(
    "literal",
    [
        "[IPv6:::1]",
        "[IPv6:::]",
        "[ipv6:2001:DB8::1]",
        "[IPv6:1:2:3:4:5:6:7:8]",
        "[IPv6:1:2:3:4:5::6]",  # "::" for two groups
        "[IPv6:::ffff:192.0.2.1]",
        "[IPv6:1:2:3:4:5:6:192.0.2.1]",
        "[IPv6:1::2:192.0.2.1]",
        "[192.0.2.1]",
        "[0.0.0.0]",
    ],
)
def test_rfc5321_literals(literal: str) -> None:
    assert valid_helo(literal)
    assert parse_path(f"<a@{literal}>", "recipient").address == f"a@{literal}"


@pytest.mark.parametrize(
    "literal",
    [
        "[IPv6:::1%eth0]",  # a zone id: not in RFC 5321, and ipaddress takes any characters
        "[IPv6:::1%\r]",
        "[IPv6:::1%\x00]",
        "[IPv6:::1% ]",
        "[IPv6:::1%> SIZE=1]",
        "[IPv6:1:2:3:4:5:6:7::]",  # "::" for one group only
        "[IPv6:1:2:3:4:5::192.0.2.1]",  # five groups besides "::" and the IPv4 part
        "[IPv6:1:192.0.2.1]",
        "[IPv6:192.0.2.1]",
        "[IPv6:1::2::3]",
        "[IPv6:12345::1]",
        "[IPv6:::1.2.3]",
        "[192.0.2.01]",  # a leading zero (octal to some)
        "[192.0.2.256]",
        "[192.0.2]",
        "[ 192.0.2.1]",
        "[tag:content]",  # General-address-literal: refused
        "[]",
    ],
)
def test_literals_outside_rfc5321_are_refused(literal: str) -> None:
    assert not valid_helo(literal)
    with pytest.raises(AddressError) as e:
        parse_path(f"<a@{literal}>", "recipient")
    assert e.value.reply.startswith("501 5.1.3 "), e.value.reply


def test_a_bracket_cannot_hide_the_end_of_the_path() -> None:
    # The literal's "]" after the ">" does not extend the path: what is left is no literal.
    for arg in ("<x@[IPv6:::1%> SIZE=1 RET=FULL ENVID=abc]>", "<x@[1.2.3.4> SIZE=1]>"):
        with pytest.raises(AddressError) as e:
            parse_path(arg, "sender")
        assert e.value.reply.startswith("501 5.1.7 "), e.value.reply
    # A ">" in a quoted local part is part of the address.
    assert parse_path('<"a> b"@x.org> SIZE=1', "sender").address == '"a> b"@x.org'


# -- issue 21: ESMTP parameters, checked and rebuilt -------------------------------------------


@pytest.mark.parametrize(
    ("params", "rebuilt"),
    [
        ("SIZE=0100 body=8bitmime smtputf8", ["SIZE=100", "BODY=8BITMIME", "SMTPUTF8"]),
        ("BODY=7BIT", ["BODY=7BIT"]),
        ("AUTH=<>", []),  # checked, never passed on
        ("AUTH=user+40example.org", []),
        ("SIZE=12345678901234567890", ["SIZE=12345678901234567890"]),
    ],
)
def test_mail_parameters_are_rebuilt(params: str, rebuilt: list[str]) -> None:
    assert parse_path(f"<a@b.org> {params}", "sender").params == rebuilt


@pytest.mark.parametrize(
    ("arg", "kind", "reply"),
    [
        ("<a@b.org> RET=FULL", "sender", "555 5.5.4 MAIL FROM parameter RET: DSN"),
        ("<a@b.org> ENVID=x", "sender", "555 5.5.4 MAIL FROM parameter ENVID: DSN"),
        ("<a@b.org> NOTIFY=NEVER", "recipient", "555 5.5.4 RCPT TO parameter NOTIFY: DSN"),
        ("<a@b.org> ORCPT=rfc822;a@b.org", "recipient", "555 5.5.4 RCPT TO parameter ORCPT"),
        ("<a@b.org> SIZE=1", "recipient", "555 5.5.4 RCPT TO parameter SIZE"),
        ("<a@b.org> X-FOO", "sender", "555 5.5.4 MAIL FROM parameter X-FOO: not supported"),
        ("<a@b.org> SIZE=", "sender", "501 5.5.4 Bad parameter syntax"),
        ("<a@b.org> SIZE=1=2", "sender", "501 5.5.4 Bad parameter syntax"),
        ("<a@b.org> SIZE=\u00b2", "sender", "501 5.5.4 Bad parameter syntax"),
        ("<a@b.org> SIZE=-1", "sender", "501 5.5.4 SIZE: expected"),
        ("<a@b.org> SIZE", "sender", "501 5.5.4 SIZE: expected"),
        ("<a@b.org> SIZE=123456789012345678901", "sender", "501 5.5.4 SIZE: expected"),
        ("<a@b.org> SIZE=1 size=2", "sender", "501 5.5.4 MAIL FROM parameter SIZE given twice"),
        ("<a@b.org> BODY=BINARYMIME", "sender", "501 5.5.4 BODY: expected 7BIT or 8BITMIME"),
        ("<a@b.org> SMTPUTF8=1", "sender", "501 5.5.4 SMTPUTF8 takes no value"),
        ("<a@b.org> AUTH=a+zzb", "sender", "501 5.5.4 AUTH: expected"),
        ("<a@b.org> AUTH", "sender", "501 5.5.4 AUTH: expected"),
        ("<a@b.org> -X=1", "sender", "501 5.5.4 Bad parameter syntax"),
    ],
)
def test_parameters_outside_their_rfc_are_refused(arg: str, kind: str, reply: str) -> None:
    with pytest.raises(AddressError) as e:
        parse_path(arg, kind)  # type: ignore[arg-type]
    assert e.value.reply.startswith(reply), e.value.reply


# -- issue 21: IDNA 2008 domains -----------------------------------------------------------------


@pytest.mark.parametrize(
    "domain",
    [
        "ex\u200bample.org",
        "exa\u200dmple.org",
        "\u202eelpmaxe.org",
        "example\u2066.org",
        "exam\u00adple.org",
        "\u05d0\u05d1c.org",
        "xn--zz.org",
        "e\u0301xample.org",  # not NFC
    ],
)
def test_domains_that_are_not_idna2008_are_refused(domain: str) -> None:
    with pytest.raises(AddressError) as e:
        parse_path(f"<a@{domain}>", "recipient", smtputf8=True)
    assert e.value.reply.startswith("501 5.1.3 "), e.value.reply
    assert "IDNA 2008" in e.value.reply and e.value.reply.isascii()


@pytest.mark.parametrize(
    "domain",
    ["b\u00fccher.example", "B\u00dcCHER.example", "xn--bcher-kva.example", "\u05d0\u05d1.org"],
)
def test_idna2008_domains_are_taken(domain: str) -> None:
    assert parse_path(f"<a@{domain}>", "recipient", smtputf8=True).address == f"a@{domain}"


def test_format_characters_in_a_local_part_are_refused() -> None:
    for local in ("a\u202eb", '"a\u202eb"', "a\u200bb", "a\u2028b"):
        with pytest.raises(AddressError):
            parse_path(f"<{local}@x.org>", "recipient", smtputf8=True)
    assert parse_path("<\u0646\u200c\u0627@x.org>", "recipient", smtputf8=True)  # ZWNJ stays


# -- issue 21: one spelling of an address ---------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "canonical"),
    [
        ("victim@example.org", "victim@example.org"),
        ('"victim"@example.org', "victim@example.org"),
        ('"vic\\tim"@example.org', "victim@example.org"),
        ('"\\v\\i\\c\\t\\i\\m"@example.org', "victim@example.org"),
        ("Victim@EXAMPLE.org", "Victim@example.org"),  # the local part's case is kept here
        ('"first.last"@x.org', "first.last@x.org"),
        ('"vic tim"@x.org', '"vic tim"@x.org'),
        ('"a\\ b"@x.org', '"a b"@x.org'),
        ('"a\\"b"@x.org', '"a\\"b"@x.org'),
        ('"a..b"@x.org', '"a..b"@x.org'),
        ("@relay.example:victim@example.org", "victim@example.org"),
        ("j\u00f6e@B\u00dcCHER.example", "j\u00f6e@xn--bcher-kva.example"),
        ("jo\u0308e@x.org", "j\u00f6e@x.org"),  # NFC
        ("a@[IPv6:2001:DB8:0:0::1]", "a@[IPv6:2001:db8::1]"),
    ],
)
def test_canonical_address(address: str, canonical: str) -> None:
    assert canonical_address(address) == canonical
    assert canonical_address(canonical) == canonical


def test_suppression_keys_are_canonical() -> None:
    for spelling in (
        '"victim"@example.org',
        '<"Vic\\tim"@Example.ORG.>',
        "rfc822; victim@EXAMPLE.org",
        "<@relay.example:victim@example.org>",
    ):
        assert normalize_recipient(spelling) == "victim@example.org", spelling
    assert normalize_recipient("x@b\u00fccher.example") == "x@xn--bcher-kva.example"
    # Text that is no address still gets a key (it can be looked up and removed).
    assert normalize_recipient("Not An Address") == "not an address"
    assert check_recipient("a@[IPv6:::1%\r]") is not None
    assert check_recipient("<victim@example.org>") is None


async def test_a_list_stored_by_an_older_version_is_rekeyed(tmp_path: Path) -> None:
    path = tmp_path / "suppressions.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE suppressions (recipient TEXT PRIMARY KEY, reason TEXT NOT NULL,"
        " source TEXT NOT NULL, created_at REAL NOT NULL) WITHOUT ROWID"
    )
    db.execute("INSERT INTO suppressions VALUES ('\"victim\"@example.org', 'complaint', 'arf', 1)")
    db.execute("INSERT INTO suppressions VALUES ('x@b\u00fccher.example', 'manual', 'admin', 2)")
    db.commit()
    db.close()
    store = SQLiteSuppressions(path)
    try:
        hit = await store.get("victim@example.org")
        assert hit is not None and (hit.recipient, hit.reason) == (
            "victim@example.org",
            "complaint",
        )
        assert store.contains('"victim"@example.org')
        assert store.contains("x@xn--bcher-kva.example")
        assert await store.count() == 2
    finally:
        await store.close()
