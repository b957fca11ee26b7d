"""DKIM signatures checked by an independent implementation: Perl Mail::DKIM, fetching the public
keys from a real DNS server (dnsmasq) the way a receiving MTA would."""

from __future__ import annotations

import pytest
from fixtures.dkimverify import DkimVerifier
from fixtures.dnsserver import DnsServer
from fixtures.keys import ED_KEY, RSA_KEY

from mailfleet.mta.config import DKIMConfig
from mailfleet.mta.dkim import DKIMSigner
from mailfleet.mta.dkimkeys import dns_txt_record

MESSAGE = (
    b"Received: from app1 (app1 [10.0.0.5]) by mta1; Mon, 02 Mar 2026 10:00:00 +0000\r\n"
    b'From: "Shop, Inc." <orders@shop.example.test>\r\n'
    b"To: Jane Doe <jane@example.org>,\r\n"
    b"\tJohn Doe <john@example.org>\r\n"
    b"Subject:   Your order   has  shipped  \r\n"
    b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
    b"Message-ID: <order-12345@shop.example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Hello Jane,  your order\t has shipped.   \r\n" + "Grüße aus dem Lager.\r\n".encode() + b"\r\n"
    b"Thanks!\r\n"
    b"\r\n"
    b"\r\n"
)


@pytest.fixture
def verifier(dns_server: DnsServer, dkim_verifier: DkimVerifier) -> DkimVerifier:
    for key in (RSA_KEY, ED_KEY):
        dns_server.add_txt(f"{key.selector}._domainkey.{key.domain}", dns_txt_record(key))
    return dkim_verifier


def test_rsa_ed25519_and_dual_signatures_pass(verifier: DkimVerifier) -> None:
    for keys, algorithms in [
        ([RSA_KEY], ["rsa-sha256"]),
        ([ED_KEY], ["ed25519-sha256"]),
        ([RSA_KEY, ED_KEY], ["rsa-sha256", "ed25519-sha256"]),
    ]:
        header = DKIMSigner(DKIMConfig(keys=keys)).sign(MESSAGE)
        sigs = verifier(header + MESSAGE)
        assert [s["algorithm"] for s in sigs] == algorithms
        assert [s["result"] for s in sigs] == ["pass"] * len(keys), sigs
        assert {s["domain"] for s in sigs} == {"example.test"}


def test_altered_body_or_header_fails(verifier: DkimVerifier) -> None:
    header = DKIMSigner(DKIMConfig(keys=[RSA_KEY, ED_KEY])).sign(MESSAGE)
    body_changed = header + MESSAGE.replace(b"Thanks!", b"Thanks?")
    assert verifier.results(body_changed) == ["fail", "fail"]
    subject_changed = header + MESSAGE.replace(b"has  shipped", b"was lost")
    assert verifier.results(subject_changed) == ["fail", "fail"]


def test_a_second_from_added_after_signing_fails(verifier: DkimVerifier) -> None:
    """From is signed twice (oversigned), so an added From cannot slip in unnoticed."""
    header = DKIMSigner(DKIMConfig(keys=[RSA_KEY, ED_KEY])).sign(MESSAGE)
    forged = header + b"From: Bank <security@bank.example>\r\n" + MESSAGE
    assert verifier.results(forged) == ["fail", "fail"]


def test_relaying_changes_allowed_by_relaxed_canonicalization_pass(
    verifier: DkimVerifier,
) -> None:
    header = DKIMSigner(DKIMConfig(keys=[RSA_KEY, ED_KEY])).sign(MESSAGE)
    relayed = (
        b"Received: from mta1 by mx.example.org; Mon, 02 Mar 2026 10:00:01 +0000\r\n"
        + header
        + MESSAGE.replace(
            b"To: Jane Doe <jane@example.org>,\r\n\tJohn", b"To: Jane Doe <jane@example.org>, John"
        ).replace(b"Thanks!\r\n", b"Thanks!  \r\n")
        + b"\r\n\r\n"
    )
    assert verifier.results(relayed) == ["pass", "pass"]
