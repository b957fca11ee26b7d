"""Feedback reports (ARF, RFC 5965): who complained about which message, sent from which IP.

A mailbox provider's feedback loop mails one report per complaint: a multipart/report with
report-type=feedback-report whose parts are a human-readable text, a message/feedback-report
(fields like Feedback-Type, Original-Rcpt-To, Source-IP) and the complained-about message,
whole (message/rfc822) or its header only (text/rfc822-headers).

Providers fill the fields unevenly, so each value falls back on the embedded message:
- recipient: Original-Rcpt-To; else Microsoft JMRP's X-HmXmrOriginalRecipient; else the To of
  the embedded message;
- source IP: Source-IP; else the client-ip= of the top-most Received-SPF (RFC 7208 §9.1, written
  by the receiver's border MTA: it names exactly the address that connected); else the top-most
  Received whose "from" clause names an IP: bracketed (``from out1 (out1 [192.0.2.1])``,
  ``[IPv6:2001:db8::1]``) or alone in parentheses as Yahoo and Outlook write it
  (``from out1 (EHLO out1) (192.0.2.1)``).

Pure: bytes in, an ARFReport out; nothing here does I/O (the DKIM check of a report takes its
DNS lookup as a function).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import ipaddress
import quopri
import re
from dataclasses import dataclass
from email import message_from_bytes
from email.header import Header, decode_header
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser
from email.policy import compat32

from mailfleet.mta.addresses import AddressError, canonical_address

__all__ = [
    "ARFError",
    "ARFReport",
    "from_feedback_domain",
    "is_arf",
    "parse_arf",
    "received_ip",
]


class ARFError(ValueError):
    """The input is not a feedback report, or one too broken to use."""


@dataclass(frozen=True)
class ARFReport:
    feedback_type: str  # abuse, fraud, virus, other, not-spam, auth-failure (lower case)
    user_agent: str | None
    version: str | None
    original_recipient: str | None  # canonical (addresses.canonical_address), lower case
    original_recipients: tuple[str, ...]  # every Original-Rcpt-To (or the fallback's addresses)
    original_mail_from: str | None
    source_ip: str | None  # normalised (ipaddress) text form
    source_ip_from: str | None  # "source-ip" | "received-spf" | "received"
    reported_domain: str | None
    arrival_date: str | None  # as written (Arrival-Date, or the older Received-Date)
    message_id: str | None  # of the complained-about message, with its <>
    reporting_mta: str | None  # the name, without the "dns;" type
    reporter: str | None  # domain of the report's own From, e.g. "feedback.yahoo.com"
    headers_only: bool  # the third part was text/rfc822-headers

    @property
    def source(self) -> str:
        """A label for logs and Suppression.source, e.g. "arf:feedback.yahoo.com"."""
        return f"arf:{self.reporter or self.reporting_mta or 'unknown'}"


def _header_block(data: bytes) -> bytes:
    m = re.search(rb"\r?\n\r?\n", data)
    return data if m is None else data[: m.start()]


def is_arf(data: bytes) -> bool:
    """True when the top-level Content-Type is multipart/report; report-type=feedback-report.
    Reads only the header block."""
    msg = BytesHeaderParser(policy=compat32).parsebytes(_header_block(data) + b"\r\n\r\n")
    return _is_feedback_report(msg)


def _is_feedback_report(msg: Message) -> bool:
    if msg.get_content_type() != "multipart/report":
        return False
    report_type = msg.get_param("report-type")
    return isinstance(report_type, str) and report_type.strip().lower() == "feedback-report"


def parse_arf(data: bytes) -> ARFReport:
    """The fields of one feedback report. Raises ARFError when `data` is not one."""
    msg = message_from_bytes(data, policy=compat32)
    if msg.get_content_type() != "multipart/report":
        raise ARFError(
            f"not a feedback report: Content-Type is {msg.get_content_type()}, "
            "expected multipart/report; report-type=feedback-report (RFC 5965)"
        )
    if not _is_feedback_report(msg):
        raise ARFError(
            f"not a feedback report: multipart/report with report-type="
            f"{msg.get_param('report-type')!r}, expected feedback-report (RFC 5965)"
        )
    parts = msg.get_payload()
    if not isinstance(parts, list):
        raise ARFError("feedback report has no MIME parts (broken boundary?)")

    fields: list[tuple[str, str]] | None = None
    original: Message | None = None
    headers_only = False
    for part in parts:
        if not isinstance(part, Message):
            continue
        ctype = part.get_content_type()
        if ctype == "message/feedback-report" and fields is None:
            fields = _report_fields(part)
        elif ctype == "message/rfc822" and original is None:
            original = _embedded_message(part)
        elif ctype in ("text/rfc822-headers", "text/rfc822-header") and original is None:
            original = _embedded_headers(part)
            headers_only = True
    if fields is None:
        raise ARFError("feedback report has no message/feedback-report part (RFC 5965 §2)")

    def field(name: str) -> str | None:
        for k, v in fields:
            if k == name and v:
                return v
        return None

    def field_all(name: str) -> list[str]:
        return [v for k, v in fields if k == name and v]

    feedback_type = field("feedback-type")
    if feedback_type is None:
        raise ARFError("feedback report has no Feedback-Type field (RFC 5965 §3.1)")

    recipients = [r for r in map(_address, field_all("original-rcpt-to")) if r is not None]
    if not recipients:
        xmr = msg.get("X-HmXmrOriginalRecipient") or (
            original.get("X-HmXmrOriginalRecipient") if original is not None else None
        )
        if xmr:
            recipients = [r for r in [_address(str(xmr))] if r is not None]
    if not recipients and original is not None:
        to = [str(v) for v in original.get_all("To", [])]
        recipients = [_canonical(a) for _, a in email.utils.getaddresses(to) if "@" in a]

    source_ip, source_ip_from = None, None
    raw_ip = field("source-ip")
    if raw_ip is not None:
        source_ip = _ip(raw_ip.strip().strip("[]"))
        source_ip_from = "source-ip" if source_ip else None
    if source_ip is None and original is not None:
        source_ip = _received_spf_ip([str(v) for v in original.get_all("Received-SPF", [])])
        source_ip_from = "received-spf" if source_ip else None
        if source_ip is None:
            source_ip = received_ip([str(v) for v in original.get_all("Received", [])])
            source_ip_from = "received" if source_ip else None

    mail_from = field("original-mail-from")
    reporting_mta = field("reporting-mta")
    if reporting_mta is not None and ";" in reporting_mta:
        reporting_mta = reporting_mta.split(";", 1)[1].strip()
    message_id = original.get("Message-ID") if original is not None else None
    from_addrs = email.utils.getaddresses([str(v) for v in msg.get_all("From", [])])
    reporter = next((a.rpartition("@")[2].lower() for _, a in from_addrs if "@" in a), None)

    return ARFReport(
        feedback_type=feedback_type.lower(),
        user_agent=field("user-agent"),
        version=field("version"),
        original_recipient=recipients[0] if recipients else None,
        original_recipients=tuple(recipients),
        original_mail_from=_address(mail_from) if mail_from is not None else None,
        source_ip=source_ip,
        source_ip_from=source_ip_from,
        reported_domain=field("reported-domain"),
        arrival_date=field("arrival-date") or field("received-date"),
        message_id=_unfold(str(message_id)).strip() if message_id else None,
        reporting_mta=reporting_mta,
        reporter=reporter,
        headers_only=headers_only,
    )


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", value)


def _report_fields(part: Message) -> list[tuple[str, str]]:
    """The fields of the message/feedback-report part as (lower-case name, unfolded value).

    The email package parses a message/* part as a message whose header is the field list;
    a part it could not parse that way (e.g. base64-encoded, which RFC 2046 forbids but some
    reporters send) is decoded and read as a header block.
    """
    payload = part.get_payload()
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte in ("base64", "quoted-printable"):
        # The email package parsed the encoded text as a message already: undo that first.
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            encoded = payload[0].as_bytes()
        else:
            encoded = str(payload).encode("ascii", "replace")
        try:
            decoded = base64.b64decode(encoded) if cte == "base64" else quopri.decodestring(encoded)
        except binascii.Error as e:
            raise ARFError(f"message/feedback-report part is not valid {cte}: {e}") from e
        text = decoded.decode("utf-8", "replace")
        items = (
            HeaderParser(policy=compat32).parsestr(text.lstrip("\r\n"), headersonly=True).items()
        )
    elif isinstance(payload, list) and payload and isinstance(payload[0], Message):
        items = payload[0].items()
    else:
        items = HeaderParser(policy=compat32).parsestr(str(payload).lstrip("\r\n")).items()
    return [(k.strip().lower(), _unfold(_field_text(v)).strip()) for k, v in items]


def _field_text(value: object) -> str:
    """A field value as text. The email package gives a field with raw 8-bit bytes as a Header
    whose str() replaces them; an internationalised address (RFC 6533) is UTF-8."""
    if not isinstance(value, Header):
        return str(value)
    out = []
    for part, charset in decode_header(value):
        if isinstance(part, str):
            out.append(part)
            continue
        try:
            out.append(part.decode(charset or "utf-8", "replace"))
        except LookupError:  # "unknown-8bit", or a name no codec has
            out.append(part.decode("utf-8", "replace"))
    return "".join(out)


def _embedded_message(part: Message) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    raw = part.get_payload(decode=True)
    if isinstance(raw, bytes) and raw.strip():
        return message_from_bytes(raw.lstrip(b"\r\n"), policy=compat32)
    return None


def _embedded_headers(part: Message) -> Message | None:
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes) or not raw.strip():
        return None
    return BytesHeaderParser(policy=compat32).parsebytes(raw.lstrip(b"\r\n"))


def _canonical(address: str) -> str:
    """An address in the spelling the suppression list keys on (addresses.canonical_address,
    lower case): a complaint for ``"victim"@Example.org`` is one for ``victim@example.org``.
    What does not parse as an envelope address stays as written, lower case."""
    try:
        return canonical_address(address).lower()
    except AddressError:
        return address.lower()


def _address(value: str) -> str | None:
    v = _unfold(value).strip()
    if v.lower().startswith("rfc822;"):
        v = v[7:].strip()
    # Original-Rcpt-To is an envelope address (RFC 5965 §3.2, RFC 3461's addr-type rfc822):
    # parsed as RFC 5321 writes it first, quoted local parts included.
    inner = v[1:-1].strip() if v.startswith("<") and v.endswith(">") else v
    try:
        return canonical_address(inner).lower()
    except AddressError:
        pass
    addrs = [a for _, a in email.utils.getaddresses([v]) if "@" in a]
    if addrs:
        return _canonical(addrs[0])
    v = v.strip("<> ")
    return _canonical(v) if "@" in v else None


def _ip(text: str) -> str | None:
    t = text.strip()
    if t.lower().startswith("ipv6:"):
        t = t[5:]
    try:
        return str(ipaddress.ip_address(t))
    except ValueError:
        return None


_SPF_CLIENT_IP = re.compile(r"\bclient-ip\s*=\s*\"?([0-9A-Fa-f:.]+)", re.IGNORECASE)


def _received_spf_ip(values: list[str]) -> str | None:
    for v in values:
        m = _SPF_CLIENT_IP.search(_unfold(v))
        if m is not None:
            ip = _ip(m.group(1))
            if ip is not None:
                return ip
    return None


_BRACKETED = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]", re.IGNORECASE)
_PARENTHESISED = re.compile(r"\(\s*(?:IPv6:)?([0-9A-Fa-f:.]+)\s*\)", re.IGNORECASE)
_BY = re.compile(r"\sby\s", re.IGNORECASE)


def _received_ips(received: str) -> tuple[str | None, str | None, str | None]:
    """(bracketed, parenthesised, bare from-name) IPs of one Received's "from" clause."""
    value = _unfold(received).strip()
    if not value[:5].lower().startswith("from") or not value[4:5].isspace():
        return None, None, None
    by = _BY.search(value)
    clause = value[4 : by.start()] if by else value[4:]
    found: list[str | None] = []
    for pattern in (_BRACKETED, _PARENTHESISED):
        ips = (_ip(m.group(1)) for m in pattern.finditer(clause))
        found.append(next((ip for ip in ips if ip is not None), None))
    words = clause.split()
    bare = _ip(words[0].strip("[]")) if words else None
    return found[0], found[1], bare


def received_ip(received: list[str] | str) -> str | None:
    """The connecting client's IP from Received fields listed top-most first, or None.

    The top-most field whose "from" clause (up to " by ") names an IP decides: a bracketed
    address (RFC 5321 §4.4 TCP-info, ``(name [192.0.2.1])``, Gmail and Postfix), else an
    address alone in parentheses (``(EHLO name) (192.0.2.1)``, Yahoo and Outlook), else a
    from-name that is itself an IP. Forms are not ranked across fields: a lower field with
    brackets is an earlier hop (e.g. the app handing mail to our MTA), not the one that matters.
    """
    fields = [received] if isinstance(received, str) else received
    for f in fields:
        for ip in _received_ips(f):
            if ip is not None:
                return ip
    return None


def from_feedback_domain(verified: set[str], domains: frozenset[str] | set[str]) -> str | None:
    """The first verified signing domain that is, or is under, a configured feedback domain."""
    for d in sorted(verified):
        if any(d == f or d.endswith("." + f) for f in domains):
            return d
    return None
