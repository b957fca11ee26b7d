"""Perl Mail::DKIM verifies dkimpy signatures with keys published in the test's dnsmasq."""

from __future__ import annotations

import base64
import subprocess

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from fixtures.peers import DkimVerifier, DnsServer, dkim_verify

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: quarterly report\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <r1@example.com>\r\n"
    b"\r\n"
    b"Numbers are up.\r\n"
    b".. and this line started with a dot.\r\n"
)
HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]
# Debian's Mail::DKIM needs CryptX (libcryptx-perl) for Ed25519; dkimverify.pl adds the rest
HAVE_ED25519 = (
    subprocess.run(["perl", "-MCrypt::PK::Ed25519", "-e1"], capture_output=True).returncode == 0
)
needs_ed25519 = pytest.mark.skipif(
    not HAVE_ED25519, reason="libcryptx-perl missing: Mail::DKIM cannot verify Ed25519"
)


def _rsa_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def _ed25519_key() -> tuple[bytes, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw), f"v=DKIM1; k=ed25519; p={base64.b64encode(pub).decode()}"


@pytest.fixture
def signed(dns_server: DnsServer) -> bytes:
    """MESSAGE dual-signed (Ed25519 first, then RSA-2048) with keys published in DNS."""
    if not HAVE_ED25519:
        pytest.skip("libcryptx-perl missing: Mail::DKIM cannot verify Ed25519")
    rsa_pem, rsa_txt = _rsa_key()
    ed_key, ed_txt = _ed25519_key()
    dns_server.add_txt("rsa2048._domainkey.example.com", rsa_txt)
    dns_server.add_txt("ed1._domainkey.example.com", ed_txt)
    rsa_sig = dkim.sign(MESSAGE, b"rsa2048", b"example.com", rsa_pem, include_headers=HEADERS)
    ed_sig = dkim.sign(
        MESSAGE,
        b"ed1",
        b"example.com",
        ed_key,
        signature_algorithm=b"ed25519-sha256",
        include_headers=HEADERS,
    )
    return bytes(ed_sig + rsa_sig + MESSAGE)


def _summary(results: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    return [(r["algorithm"], r["selector"], r["domain"], r["result"]) for r in results]


def test_good_signatures_pass(signed: bytes, dkim_verifier: DkimVerifier) -> None:
    assert _summary(dkim_verifier(signed)) == [
        ("ed25519-sha256", "ed1", "example.com", "pass"),
        ("rsa-sha256", "rsa2048", "example.com", "pass"),
    ]


def test_tampered_body_fails(signed: bytes, dkim_verifier: DkimVerifier) -> None:
    results = dkim_verifier(signed.replace(b"Numbers are up.", b"Numbers are down."))
    assert [r["result"] for r in results] == ["fail", "fail"]
    assert all("body has been altered" in r["details"] for r in results)


def test_tampered_header_fails(signed: bytes, dkim_verifier: DkimVerifier) -> None:
    results = dkim_verifier(signed.replace(b"quarterly report", b"quarterly rep0rt"))
    assert [r["result"] for r in results] == ["fail", "fail"]
    assert not any("body" in r["details"] for r in results)


def test_bare_lf_line_ends_as_on_disk_still_pass(signed: bytes, dns_server: DnsServer) -> None:
    assert [r["result"] for r in dkim_verify(signed.replace(b"\r\n", b"\n"), dns_server)] == [
        "pass",
        "pass",
    ]


def test_key_missing_from_dns_is_not_a_pass(dns_server: DnsServer) -> None:
    rsa_pem, _ = _rsa_key()
    sig = dkim.sign(MESSAGE, b"gone", b"example.com", rsa_pem, include_headers=HEADERS)
    (result,) = dkim_verify(sig + MESSAGE, dns_server)
    assert result["result"] in ("invalid", "temperror", "permerror")
    assert result["result"] != "pass"


def test_key_mismatch_fails(dns_server: DnsServer) -> None:
    signing_pem, _ = _rsa_key()
    _, other_txt = _rsa_key()
    dns_server.add_txt("rot._domainkey.example.com", other_txt)
    sig = dkim.sign(MESSAGE, b"rot", b"example.com", signing_pem, include_headers=HEADERS)
    assert DkimVerifier(dns_server).results(sig + MESSAGE) == ["fail"]


def test_rsa_alone_passes_and_fails(dns_server: DnsServer) -> None:
    pem, txt = _rsa_key()
    dns_server.add_txt("solo._domainkey.example.com", txt)
    signed = dkim.sign(MESSAGE, b"solo", b"example.com", pem, include_headers=HEADERS) + MESSAGE
    assert _summary(dkim_verify(signed, dns_server)) == [
        ("rsa-sha256", "solo", "example.com", "pass")
    ]
    tampered = signed.replace(b"Numbers are up.", b"Numbers are down.")
    assert [r["result"] for r in dkim_verify(tampered, dns_server)] == ["fail"]


@needs_ed25519
def test_ed25519_alone_passes(dns_server: DnsServer) -> None:
    key, txt = _ed25519_key()
    dns_server.add_txt("ed._domainkey.example.com", txt)
    sig = dkim.sign(
        MESSAGE,
        b"ed",
        b"example.com",
        key,
        signature_algorithm=b"ed25519-sha256",
        include_headers=HEADERS,
    )
    assert DkimVerifier(dns_server).results(sig + MESSAGE) == ["pass"]


def test_unsigned_message_has_no_results(dkim_verifier: DkimVerifier) -> None:
    assert dkim_verifier(MESSAGE) == []
