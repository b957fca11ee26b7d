"""DMARC aggregate reports (RFC 7489 §7.2, appendix C): parsed from the XML, gzip or zip that
providers mail, into rows the operator counts in its metrics. Pure: bytes in, data out.

Hostile input is refused, not parsed: a DOCTYPE (entity expansion), more than MAX_XML bytes
once decompressed (zip and gzip bombs), or a zip without exactly one .xml member.
"""

from __future__ import annotations

import gzip
import io
import ipaddress
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

MAX_XML = 32 * 1024 * 1024


class ReportError(ValueError):
    """Not a DMARC aggregate report we can read; the message says why."""


@dataclass(frozen=True)
class Row:
    source_ip: str
    count: int
    disposition: str  # none, quarantine, reject: what the receiver did
    dkim: str  # pass/fail: DMARC's verdict on DKIM (aligned pass)
    spf: str  # pass/fail: DMARC's verdict on SPF (aligned pass)
    header_from: str

    @property
    def passed(self) -> bool:
        return "pass" in (self.dkim, self.spf)


@dataclass(frozen=True)
class Report:
    org_name: str
    report_id: str
    domain: str  # policy_published/domain
    policy: str
    begin: datetime
    end: datetime
    rows: tuple[Row, ...]

    @property
    def messages(self) -> int:
        return sum(r.count for r in self.rows)


def _limited(stream: IO[bytes] | gzip.GzipFile) -> bytes:
    data = stream.read(MAX_XML + 1)
    if len(data) > MAX_XML:
        raise ReportError(f"report larger than {MAX_XML} bytes once decompressed")
    return data


def unpack(data: bytes) -> bytes:
    """The XML of a report as mailed: plain, gzip (.xml.gz) or zip (.zip with one .xml)."""
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
                return _limited(f)
        except (OSError, EOFError) as e:
            raise ReportError(f"not a valid gzip file: {e}") from None
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                xmls = [i for i in z.infolist() if i.filename.lower().endswith(".xml")]
                if len(xmls) != 1:
                    raise ReportError(f"zip holds {len(xmls)} .xml files; a report has one")
                with z.open(xmls[0]) as f:
                    return _limited(f)
        except zipfile.BadZipFile as e:
            raise ReportError(f"not a valid zip file: {e}") from None
    if len(data) > MAX_XML:
        raise ReportError(f"report larger than {MAX_XML} bytes")
    return data


def _text(node: ET.Element | None, path: str, default: str = "") -> str:
    if node is None:
        return default
    found = node.find(path)
    return (found.text or "").strip() if found is not None and found.text else default


def _strip_ns(root: ET.Element) -> None:
    # Reports of the DMARCbis draft carry a namespace; RFC 7489 ones none. Compare local names.
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]


def _time(value: str, what: str) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError):
        raise ReportError(f"{what} is not a Unix time: {value!r}") from None


def parse(data: bytes) -> Report:
    xml = unpack(data)
    head = xml[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in xml.lower():
        raise ReportError("a DOCTYPE or ENTITY is not allowed in a report")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ReportError(f"not well-formed XML: {e}") from None
    _strip_ns(root)
    if root.tag != "feedback":
        raise ReportError(f"root element is <{root.tag}>, not <feedback>")
    meta = root.find("report_metadata")
    policy = root.find("policy_published")
    if meta is None or policy is None:
        raise ReportError("report_metadata or policy_published missing")
    domain = _text(policy, "domain").lower().rstrip(".")
    if not domain:
        raise ReportError("policy_published/domain missing")
    rows = []
    for rec in root.findall("record"):
        row = rec.find("row")
        ip = _text(row, "source_ip")
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise ReportError(f"record with a bad source_ip {ip!r}") from None
        try:
            count = int(_text(row, "count", "0"))
        except ValueError:
            raise ReportError(f"record for {ip}: count is not a number") from None
        if count < 0:
            raise ReportError(f"record for {ip}: negative count")
        evaluated = row.find("policy_evaluated") if row is not None else None
        rows.append(
            Row(
                source_ip=ip,
                count=count,
                disposition=_text(evaluated, "disposition", "none").lower(),
                dkim=_text(evaluated, "dkim", "fail").lower(),
                spf=_text(evaluated, "spf", "fail").lower(),
                header_from=_text(rec.find("identifiers"), "header_from").lower(),
            )
        )
    return Report(
        org_name=_text(meta, "org_name") or "unknown",
        report_id=_text(meta, "report_id"),
        domain=domain,
        policy=_text(policy, "p"),
        begin=_time(_text(meta, "date_range/begin", "0"), "date_range/begin"),
        end=_time(_text(meta, "date_range/end", "0"), "date_range/end"),
        rows=tuple(rows),
    )
