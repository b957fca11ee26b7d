"""DMARC aggregate reports as providers mail them (samples in tests/data/dmarc/, shaped like
Google's zip and Outlook's gzip with a namespace), and what is refused."""

from __future__ import annotations

import gzip
import io
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailfleet.operator.decide import dmarcreport as d

DATA = Path(__file__).resolve().parents[1] / "data" / "dmarc"
GOOGLE = (DATA / "google.com!example.com!1764460800!1764547199.xml").read_bytes()
OUTLOOK = (
    DATA / "enterprise.protection.outlook.com!example.com!1764460800!1764547200.xml"
).read_bytes()


def zipped(xml: bytes, name: str = "google.com!example.com!1764460800!1764547199.xml") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, xml)
    return buf.getvalue()


def test_google_zip() -> None:
    r = d.parse(zipped(GOOGLE))
    assert (r.org_name, r.report_id, r.domain, r.policy) == (
        "google.com", "10485761234567890123", "example.com", "quarantine"
    )  # fmt: skip
    assert r.begin == datetime(2025, 11, 30, tzinfo=UTC)
    assert r.messages == 1203
    assert [(x.source_ip, x.count, x.disposition, x.dkim, x.spf, x.passed) for x in r.rows] == [
        ("192.0.2.10", 1180, "none", "pass", "pass", True),
        ("192.0.2.11", 20, "none", "pass", "fail", True),
        ("203.0.113.66", 3, "quarantine", "fail", "fail", False),
    ]


def test_outlook_gzip_with_a_namespace() -> None:
    r = d.parse(gzip.compress(OUTLOOK))
    assert (r.org_name, r.domain, r.messages) == ("Enterprise Outlook", "example.com", 412)
    assert r.rows[0].header_from == "example.com"


def test_plain_xml() -> None:
    assert d.parse(GOOGLE).messages == 1203


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"not xml at all", "not well-formed"),
        (b"<html></html>", "not <feedback>"),
        (b"<feedback><report_metadata/></feedback>", "policy_published missing"),
        (
            b'<?xml version="1.0"?><!DOCTYPE lol [<!ENTITY a "aaaa">]><feedback/>',
            "DOCTYPE or ENTITY",
        ),
        (GOOGLE.replace(b"192.0.2.10", b"192.0.2.300"), "bad source_ip"),
        (GOOGLE.replace(b"<count>3</count>", b"<count>three</count>"), "count is not a number"),
        (GOOGLE.replace(b"<begin>1764460800", b"<begin>yesterday"), "not a Unix time"),
        (b"\x1f\x8bnot really gzip", "gzip"),
        (b"PK\x03\x04broken", "zip"),
    ],
)
def test_refused(data: bytes, words: str) -> None:
    with pytest.raises(d.ReportError, match=words):
        d.parse(data)


def test_zip_needs_exactly_one_xml() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.xml", GOOGLE)
        z.writestr("b.xml", GOOGLE)
    with pytest.raises(d.ReportError, match=r"2 \.xml files"):
        d.parse(buf.getvalue())


def test_bombs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(d, "MAX_XML", 1000)
    with pytest.raises(d.ReportError, match="larger than 1000"):
        d.parse(gzip.compress(GOOGLE))
    with pytest.raises(d.ReportError, match="larger than 1000"):
        d.parse(zipped(GOOGLE))
