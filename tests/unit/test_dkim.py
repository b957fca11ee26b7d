"""DKIM signing: signatures made by DKIMSigner are checked by dkimpy's verifier.

(Perl Mail::DKIM checks them too, against keys served by dnsmasq: tests/mta/test_dkim_perl.py.)
"""

from __future__ import annotations

import base64
import os
import random
import re
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import CanonicalizationPolicy
from fixtures.keys import ED_KEY, EXAMPLES, RSA_KEY

from mailfleet.mta.config import DKIMConfig, DKIMKey
from mailfleet.mta.dkim import (
    DKIMConfigError,
    DKIMKeyError,
    DKIMMessageError,
    DKIMSigner,
    canonicalize_body_relaxed,
    canonicalize_header_relaxed,
    from_domain,
    signing_domain,
    split_message,
)
from mailfleet.mta.dkimkeys import dns_txt_record, generate_key, zone_record

MESSAGE = (
    b"Received: from app1 (app1 [10.0.0.5]) by mta1; Mon, 02 Mar 2026 10:00:00 +0000\r\n"
    b"From: Shop <orders@example.test>\r\n"
    b"To: Jane Doe <jane@example.org>\r\n"
    b"Subject: Your order   has\r\n"
    b"\tshipped\r\n"
    b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
    b"Message-ID: <order-12345@example.test>\r\n"
    b"X-Mailer: shop 1.0\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Jane,  your order\t has shipped.   \r\n"
    b"\r\n"
    b"Thanks!\r\n"
    b"\r\n"
    b"\r\n"
)


def _records(*keys: DKIMKey) -> dict[bytes, bytes]:
    return {
        f"{k.selector}._domainkey.{k.domain}.".encode(): dns_txt_record(k).encode() for k in keys
    }


def verify(signed: bytes, *keys: DKIMKey) -> list[bool]:
    """dkimpy's verdict on every DKIM-Signature of `signed`, top to bottom."""
    if any(k.algorithm == "ed25519-sha256" for k in keys):
        try:
            import nacl.signing  # noqa: F401
        except ImportError:
            pytest.fail("dkimpy verifies Ed25519 only with pynacl: install dkimpy[ed25519]")
    records = _records(*keys)

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return records.get(name, b"")

    d = dkim.DKIM(signed)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    results = []
    for i in range(count):
        try:
            results.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
        except dkim.DKIMException:
            results.append(False)
    return results


def tags(header_field: bytes) -> dict[str, str]:
    """The tag=value pairs of one DKIM-Signature field, whitespace removed."""
    value = header_field.split(b":", 1)[1].decode()
    value = re.sub(r"\s+", "", value)
    return dict(t.split("=", 1) for t in value.split(";") if t)


def fields(signature_header: bytes) -> list[bytes]:
    """Split the signer's output into its header fields."""
    return [f for f in re.split(rb"\r\n(?=\S)", signature_header) if f]


def signer(*keys: DKIMKey, headers: list[str] | None = None) -> DKIMSigner:
    config = (
        DKIMConfig(keys=list(keys))
        if headers is None
        else DKIMConfig(keys=list(keys), headers=headers)
    )
    return DKIMSigner(config)


# --- signing and verifying ---------------------------------------------------------------------


@pytest.mark.parametrize("key", [RSA_KEY, ED_KEY], ids=["rsa", "ed25519"])
def test_signature_verifies(key: DKIMKey) -> None:
    header = signer(key).sign(MESSAGE)
    assert header.startswith(b"DKIM-Signature: ")
    assert header.endswith(b"\r\n")
    assert tags(header)["a"] == key.algorithm
    assert verify(header + MESSAGE, key) == [True]


def test_dual_signing_gives_one_signature_per_key_and_both_verify() -> None:
    header = signer(RSA_KEY, ED_KEY).sign(MESSAGE)
    sigs = fields(header)
    assert [tags(s)["a"] for s in sigs] == ["rsa-sha256", "ed25519-sha256"]
    assert [tags(s)["s"] for s in sigs] == ["s2026a", "s2026e"]
    assert verify(header + MESSAGE, RSA_KEY, ED_KEY) == [True, True]


def test_sign_result_names_the_signatures() -> None:
    result = signer(RSA_KEY, ED_KEY).sign_result(MESSAGE)
    assert [(s.domain, s.selector, s.algorithm) for s in result.signatures] == [
        ("example.test", "s2026a", "rsa-sha256"),
        ("example.test", "s2026e", "ed25519-sha256"),
    ]
    assert result.unsigned_reason is None


@pytest.mark.parametrize("key", [RSA_KEY, ED_KEY], ids=["rsa", "ed25519"])
@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Thanks!", b"Thanks?"),  # body
        (b"Subject: Your order", b"Subject: Our order"),  # signed header
        (b"To: Jane Doe <jane@example.org>", b"To: Jane Doe <jane@example.net>"),
    ],
    ids=["body", "subject", "to"],
)
def test_tampering_breaks_the_signature(key: DKIMKey, old: bytes, new: bytes) -> None:
    header = signer(key).sign(MESSAGE)
    assert old in MESSAGE
    assert verify(header + MESSAGE.replace(old, new), key) == [False]


@pytest.mark.parametrize("key", [RSA_KEY, ED_KEY], ids=["rsa", "ed25519"])
def test_relaxed_changes_on_the_way_keep_the_signature(key: DKIMKey) -> None:
    """Refolding, whitespace changes and unsigned headers added by relays are allowed."""
    header = signer(key).sign(MESSAGE)
    relayed = (
        b"Received: from mta1 by mx.example.org; Mon, 02 Mar 2026 10:00:01 +0000\r\n"
        + header
        + MESSAGE.replace(
            b"Subject: Your order   has\r\n\tshipped", b"Subject: Your order has shipped"
        )
        .replace(b"Thanks!\r\n", b"Thanks!   \r\n")
        .replace(b"\r\n\r\n\r\n", b"\r\n\r\n\r\n\r\n\r\n")
    )
    assert verify(relayed, key) == [True]


def test_message_with_bare_lf_line_ends_is_signed_as_its_crlf_form() -> None:
    lf_message = MESSAGE.replace(b"\r\n", b"\n")
    header = signer(RSA_KEY).sign(lf_message)
    assert verify(header + MESSAGE, RSA_KEY) == [True]


def test_message_without_body_is_signed() -> None:
    message = b"From: a@example.test\r\nSubject: empty\r\n"
    header = signer(ED_KEY).sign(message)
    assert verify(header + message, ED_KEY) == [True]


def test_t_tag_is_the_signing_time_and_canonicalization_relaxed() -> None:
    before = int(time.time())
    header = signer(RSA_KEY).sign(MESSAGE)
    after = int(time.time())
    t = tags(header)
    assert before <= int(t["t"]) <= after
    assert t["c"] == "relaxed/relaxed"
    assert t["d"] == "example.test"
    assert t["v"] == "1"


@pytest.mark.parametrize("key", [RSA_KEY, ED_KEY], ids=["rsa", "ed25519"])
def test_signature_lines_are_folded(key: DKIMKey) -> None:
    header = signer(key).sign(MESSAGE)
    lines = header.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith((b" ", b"\t")) for line in lines[1:-1])


# --- which domain signs ------------------------------------------------------------------------


def _with_from(from_value: bytes) -> bytes:
    return MESSAGE.replace(b"From: Shop <orders@example.test>", b"From: " + from_value)


def test_subdomain_is_signed_with_the_parent_domain_key() -> None:
    message = _with_from(b"News <news@mail.news.example.test>")
    header = signer(RSA_KEY).sign(message)
    assert tags(header)["d"] == "example.test"
    assert verify(header + message, RSA_KEY) == [True]


def test_the_most_specific_domain_wins(tmp_path: Path) -> None:
    sub_key = DKIMKey(
        domain="news.example.test",
        selector="n1",
        key_file=tmp_path / "news.pem",
        algorithm="ed25519-sha256",
    )
    generate_key("ed25519-sha256", sub_key.key_file)
    s = signer(RSA_KEY, sub_key)
    exact = _with_from(b"<a@news.example.test>")
    deeper = _with_from(b"<a@eu.news.example.test>")
    sibling = _with_from(b"<a@shop.example.test>")
    assert [tags(f)["d"] for f in fields(s.sign(exact))] == ["news.example.test"]
    assert [tags(f)["d"] for f in fields(s.sign(deeper))] == ["news.example.test"]
    assert [tags(f)["d"] for f in fields(s.sign(sibling))] == ["example.test"]
    assert verify(s.sign(deeper) + deeper, sub_key) == [True]


@pytest.mark.parametrize(
    "from_value",
    [
        b"<a@example.org>",
        b"<a@notexample.test>",  # a suffix, not a parent domain
        b"<a@example.test.evil>",
        b"undisclosed-recipients:;",
    ],
)
def test_no_matching_key_means_no_signature(from_value: bytes) -> None:
    result = signer(RSA_KEY, ED_KEY).sign_result(_with_from(from_value))
    assert result.header == b""
    assert result.signatures == ()
    assert result.unsigned_reason


def test_no_keys_configured_signs_nothing() -> None:
    assert DKIMSigner(DKIMConfig()).sign(MESSAGE) == b""


def test_message_with_two_from_headers_is_not_signed() -> None:
    message = b"From: a@example.test\r\n" + MESSAGE
    assert signer(RSA_KEY).sign(message) == b""


def test_message_without_from_is_not_signed() -> None:
    message = MESSAGE.replace(b"From: Shop <orders@example.test>\r\n", b"")
    assert signer(RSA_KEY).sign(message) == b""


def test_unparseable_header_is_an_error() -> None:
    with pytest.raises(DKIMMessageError, match="unexpected characters"):
        signer(RSA_KEY).sign(b"From: a@example.test\r\nthis is no header\r\n\r\nbody\r\n")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b" a@example.test\r\n", "example.test"),
        (b" <a@Example.TEST>\r\n", "example.test"),
        (b" Shop <orders@example.test>\r\n", "example.test"),
        (b' "Shop, Inc." <orders@example.test.>\r\n', "example.test"),
        (b' "ceo@bank.example" <x@example.test>\r\n', "example.test"),
        (b" Shop\r\n <orders@example.test>\r\n", "example.test"),
        (b" orders@example.test (Shop)\r\n", "example.test"),
        (b" =?utf-8?q?Caf=C3=A9?= <a@example.test>\r\n", "example.test"),
        (" Café <a@bücher.example>\r\n".encode(), "xn--bcher-kva.example"),
        (b" a@example.test, b@example.org\r\n", "example.test"),
        (b" Group: a@example.test;\r\n", "example.test"),
        (b" nobody\r\n", None),
        (b" \r\n", None),
    ],
)
def test_from_domain(value: bytes, expected: str | None) -> None:
    assert from_domain([[b"From", value]]) == expected


def test_signing_domain_picks_the_closest_configured_parent() -> None:
    configured = {"example.test", "news.example.test"}
    assert signing_domain(configured, "example.test") == "example.test"
    assert signing_domain(configured, "a.news.example.test") == "news.example.test"
    assert signing_domain(configured, "shop.example.test") == "example.test"
    assert signing_domain(configured, "example.org") is None
    assert signing_domain(configured, "xexample.test") is None


# --- which headers are signed ------------------------------------------------------------------


def test_only_configured_headers_present_are_signed_and_from_is_oversigned() -> None:
    h = tags(signer(RSA_KEY).sign(MESSAGE))["h"].split(":")
    assert h == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "from",
    ]
    # Present but not signed: trace headers and unknown ones.
    assert "received" not in h
    assert "x-mailer" not in h


def test_a_header_present_twice_is_signed_twice() -> None:
    message = b"References: <a@x>\r\nReferences: <b@x>\r\n" + MESSAGE
    header = signer(RSA_KEY).sign(message)
    assert tags(header)["h"].split(":").count("references") == 2
    assert verify(header + message, RSA_KEY) == [True]


def test_a_second_from_added_later_breaks_the_signature() -> None:
    header = signer(RSA_KEY).sign(MESSAGE)
    forged = header + b"From: Bank <security@bank.example>\r\n" + MESSAGE
    assert verify(forged, RSA_KEY) == [False]


def test_adding_an_unsigned_absent_header_keeps_the_signature() -> None:
    """Only headers present are listed, so a relay may add e.g. a List-Id without harm."""
    header = signer(RSA_KEY).sign(MESSAGE)
    assert verify(header + b"List-Id: <l.example.org>\r\n" + MESSAGE, RSA_KEY) == [True]


def test_configured_header_list_is_used() -> None:
    h = tags(signer(RSA_KEY, headers=["subject", "date"]).sign(MESSAGE))["h"].split(":")
    assert h == ["from", "subject", "date", "from"]


@pytest.mark.parametrize("bad", ["bcc", "Received", "dkim-signature"])
def test_headers_that_must_not_be_signed_are_refused(bad: str) -> None:
    with pytest.raises(DKIMConfigError, match=bad.lower()):
        signer(RSA_KEY, headers=["from", bad])


# --- key files ---------------------------------------------------------------------------------


def _key(path: Path, algorithm: str = "rsa-sha256") -> DKIMKey:
    return DKIMKey(domain="example.test", selector="sel1", key_file=path, algorithm=algorithm)  # type: ignore[arg-type]


def test_missing_key_file_names_file_domain_and_selector(tmp_path: Path) -> None:
    path = tmp_path / "nope.pem"
    with pytest.raises(DKIMKeyError) as err:
        signer(_key(path))
    text = str(err.value)
    assert str(path) in text
    assert "sel1._domainkey.example.test" in text
    assert "No such file" in text


@pytest.mark.parametrize(
    ("content", "algorithm", "reason"),
    [
        (b"hello world\n", "rsa-sha256", "not a PEM private key"),
        (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "rsa-sha256",
            "not a valid PEM",
        ),
        (b"bm90IGEga2V5\n", "ed25519-sha256", "must decode to 32 bytes"),
        (b"%%%%\n", "ed25519-sha256", "neither PEM nor a base64"),
    ],
    ids=["garbage", "bad-pem", "short-base64", "not-base64"],
)
def test_invalid_key_file_is_a_clear_error(
    tmp_path: Path, content: bytes, algorithm: str, reason: str
) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(DKIMKeyError, match=reason) as err:
        signer(_key(path, algorithm))
    assert str(path) in str(err.value)
    assert "sel1._domainkey.example.test" in str(err.value)


def test_key_of_the_wrong_type_is_refused() -> None:
    wrong = DKIMKey(
        domain="example.test", selector="s2026e", key_file=ED_KEY.key_file, algorithm="rsa-sha256"
    )
    with pytest.raises(DKIMKeyError, match="needs an RSA key, file holds an Ed25519 key"):
        signer(wrong)


def test_encrypted_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "enc.pem"
    private = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(DKIMKeyError, match="encrypted"):
        signer(_key(path, "ed25519-sha256"))


def test_pkcs1_rsa_pem_is_accepted(tmp_path: Path) -> None:
    private = serialization.load_pem_private_key(RSA_KEY.key_file.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    path = tmp_path / "pkcs1.pem"
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    path.write_bytes(pem)
    key = _key(path)
    assert verify(
        signer(key).sign(_with_from(b"<a@example.test>")) + _with_from(b"<a@example.test>"), key
    ) == [True]


def test_dkimpy_base64_ed25519_key_is_accepted(tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    path = tmp_path / "dkimpy.key"
    path.write_bytes(base64.b64encode(seed))  # what `dknewkey --ktype ed25519` writes
    key = _key(path, "ed25519-sha256")
    assert dns_txt_record(key) == dns_txt_record(private)
    assert verify(signer(key).sign(MESSAGE) + MESSAGE, key) == [True]


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_generate_key_writes_a_private_file_that_signs(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "new.pem"
    txt = generate_key(algorithm, path)  # type: ignore[arg-type]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    key = _key(path, algorithm)
    assert txt == dns_txt_record(key)
    assert txt.startswith(
        "v=DKIM1; k=rsa; p=" if algorithm == "rsa-sha256" else "v=DKIM1; k=ed25519; p="
    )
    assert verify(signer(key).sign(MESSAGE) + MESSAGE, key) == [True]


def test_generate_key_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "existing.pem"
    path.write_bytes(b"in use")
    with pytest.raises(FileExistsError):
        generate_key("ed25519-sha256", path)
    assert path.read_bytes() == b"in use"


def test_zone_record_splits_long_values_into_255_byte_strings() -> None:
    value = dns_txt_record(RSA_KEY)
    line = zone_record("example.test", "s2026a", value)
    assert line.startswith("s2026a._domainkey.example.test. IN TXT ( ")
    strings = re.findall(r'"([^"]*)"', line)
    assert len(strings) == 2
    assert all(len(s) <= 255 for s in strings)
    assert "".join(strings) == value


def test_example_readme_shows_the_example_keys_records() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for key in (RSA_KEY, ED_KEY):
        assert zone_record(key.domain, key.selector, dns_txt_record(key)) in readme


# --- thread safety -----------------------------------------------------------------------------


def test_one_signer_used_from_many_threads_gives_valid_signatures() -> None:
    s = signer(RSA_KEY, ED_KEY)
    messages = [MESSAGE.replace(b"Thanks!", f"Thanks {i}!".encode()) for i in range(64)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        headers = list(pool.map(s.sign, messages))
    for header, message in zip(headers, messages, strict=True):
        assert verify(header + message, RSA_KEY, ED_KEY) == [True, True]


# --- our parsing and canonicalization equal dkimpy's -------------------------------------------

_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


def _random_text(rng: random.Random, n: int) -> bytes:
    pieces = [b"a", b"bc", b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"x y"]
    return b"".join(rng.choice(pieces) for _ in range(n))


def test_body_canonicalization_equals_dkimpy() -> None:
    rng = random.Random(6376)
    bodies = [b"", b"\r\n", b"\r\n\r\n", b"a", b"a  ", b" \r\n", b"a\r\n\r\n\r\n", b"\t\r\n x"]
    bodies += [_random_text(rng, rng.randrange(0, 40)) for _ in range(3000)]
    # without a space or tab (a base64 part): nothing to compress, trailing empty lines still go
    bodies += [b"QUJD\r\nREVG\r\n\r\n\r\n", b"QUJD", b"\r\n\r\nQUJD\r\n", b"a\r\n" * 50]
    for body in bodies:
        crlf_body = re.sub(rb"\r?\n", b"\r\n", body)
        assert canonicalize_body_relaxed(crlf_body) == _RELAXED.canonicalize_body(crlf_body), body


def test_header_canonicalization_equals_dkimpy() -> None:
    rng = random.Random(5322)
    values = [b"", b" x\r\n", b"\t a \r\n\t b  \r\n", b" \x0bv\x0c \r\n"]
    values += [_random_text(rng, rng.randrange(0, 20)) + b"\r\n" for _ in range(2000)]
    for value in values:
        for name in (b"Subject", b"X-ODD ", b"from"):
            expected = _RELAXED.canonicalize_headers([(name, value)])[0]
            assert canonicalize_header_relaxed(name, value) == expected, (name, value)


def test_message_parsing_equals_dkimpy() -> None:
    rng = random.Random(822)
    messages = [
        MESSAGE,
        MESSAGE.replace(b"\r\n", b"\n"),
        b"",
        b"\r\nbody only\r\n",
        b"\nbody only\n",
        b"From: a@b\r\n",
        b"From: a@b",
        b"From: a@b\r\n\r\n",
        b"From mbox-line Mon Jan 1\r\nFrom: a@b\r\n\r\nx",
        b"From: a@b\n\r\nmixed\r\nends\n",
        b"From: a@b\r\nSubject: x\r\n  y\r\n\r\n\r\nbody\r\n\r\n",
    ]
    for _ in range(500):
        head = b"".join(
            rng.choice(
                [b"From: a@b", b"Subject:" + _random_text(rng, 3).replace(b"\n", b""), b" cont"]
            )
            + rng.choice([b"\r\n", b"\n"])
            for _ in range(rng.randrange(1, 6))
        )
        if head.startswith(b" "):
            head = b"X:" + head
        messages.append(head + rng.choice([b"\r\n", b"\n"]) + _random_text(rng, 20))
    for message in messages:
        headers, body = split_message(message)
        expected_headers, expected_body = dkim.rfc822_parse(message)
        assert headers == expected_headers, message
        assert body == expected_body, message
        if not re.search(rb"\r(?!\n)|(?<!\r)\n", message):
            # what the engine passes once submission has checked the line ends
            assert split_message(message, crlf=True) == (headers, body), message
