"""Delivery Status Notifications (RFC 3464): the bounce a sender gets, and when not to send one.

Pure: bytes in, bytes out. The message is assembled by hand rather than with `email.message`, so
that an original message with raw 8-bit or malformed headers is quoted as it came, byte for byte,
instead of being re-encoded (or refused) by a serializer.
"""

from __future__ import annotations

import email.utils
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Literal

DSNAction = Literal["failed", "delayed"]

_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_CRLF = b"\r\n"
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class DSNRecipient:
    """One recipient the report is about."""

    recipient: str
    status: str  # RFC 3463, e.g. "5.1.1"
    diagnostic: str | None = None  # the remote reply, e.g. "550 5.1.1 no such user"
    remote_mta: str | None = None  # host name of the MX that answered, if one did
    last_attempt_date: float | None = None  # Unix time; default: when the report is built
    will_retry_until: float | None = None  # for action="delayed"
    # Why the engine itself gave up without a remote reply (no usable MX, ...): said in the
    # human-readable part; Diagnostic-Code is for what a remote MTA answered (RFC 3464 §2.3.6).
    local_reason: str | None = None

    def __post_init__(self) -> None:
        if not _STATUS.match(self.status):
            raise ValueError(f"DSN status {self.status!r} is not an RFC 3463 code like 5.1.1")


def should_send_dsn(original_sender: str, original_message: bytes) -> bool:
    """False where a bounce must not be sent: to nobody, or about a bounce (no mail loops).

    - A null envelope sender (`<>` or empty) asked for no reports (RFC 5321 §4.5.5); DSNs, and
      our own DSNs in particular, are sent that way.
    - A message that is itself a delivery or disposition report (multipart/report), or an
      automatic reply (Auto-Submitted: auto-replied, RFC 3834), is never answered with another
      report, even when some broken system gave it a real envelope sender.
    Auto-generated mail with a real sender (Auto-Submitted: auto-generated, e.g. an application's
    notifications) does get bounces: its sender needs to learn about dead addresses.
    """
    sender = original_sender.strip()
    if sender in ("", "<>"):
        return False
    headers = _parse_headers(original_message)
    auto = (headers.get("auto-submitted") or "").strip().lower()
    if auto.startswith("auto-replied"):
        return False
    ctype = (headers.get("content-type") or "").lower()
    if ctype.lstrip().startswith("multipart/report"):
        return False
    local = sender.strip("<>").rpartition("@")[0].lower()
    # Some systems send bounces from MAILER-DAEMON instead of <>; answering those loops too.
    return local != "mailer-daemon"


def build_dsn(
    *,
    reporting_mta: str,
    dsn_from: str,
    original_sender: str,
    original_message: bytes,
    failures: list[DSNRecipient],
    arrival_date: float,
    action: DSNAction = "failed",
    return_full: bool = False,
    now: float | None = None,
    message_id: str | None = None,
) -> bytes:
    """An RFC 3464 multipart/report (report-type=delivery-status), CRLF line endings.

    Parts: a human-readable explanation, the message/delivery-status report, and the original
    headers as text/rfc822-headers (or the whole original as message/rfc822 with `return_full`).
    The result is 7-bit unless the original message or a recipient address is not ASCII.
    """
    if not failures:
        raise ValueError("a DSN needs at least one recipient to report on")
    now = time.time() if now is None else now
    boundary = f"=_mailfleet_{secrets.token_hex(12)}"
    message_id = message_id or _message_id(reporting_mta, now)
    original = _crlf(original_message)
    quoted_part = original if return_full else _header_block(original)

    out: list[bytes] = []
    subject = (
        "Undelivered Mail Returned to Sender"
        if action == "failed"
        else "Delayed Mail (still being retried)"
    )
    to = _one_line(original_sender.strip().strip("<>"))
    for name, value in (
        ("From", _one_line(dsn_from)),
        ("To", to),
        ("Subject", subject),
        ("Date", email.utils.formatdate(now, localtime=False)),
        ("Message-ID", message_id),
        ("Auto-Submitted", "auto-replied"),
        ("MIME-Version", "1.0"),
        (
            "Content-Type",
            f'multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        ),
    ):
        out.append(f"{name}: {value}".encode())
    out.append(b"")
    out.append(b"This is a MIME-encapsulated message.")
    out.append(b"")

    human = _human_text(reporting_mta, failures, action)
    out.append(f"--{boundary}".encode())
    out.append(b"Content-Description: Notification")
    if human.isascii():
        out.append(b"Content-Type: text/plain; charset=us-ascii")
    else:
        out.append(b"Content-Type: text/plain; charset=utf-8")
        out.append(b"Content-Transfer-Encoding: 8bit")
    out.append(b"")
    out.extend(line.encode() for line in human.split("\n"))
    out.append(b"")

    report = _status_report(reporting_mta, failures, action, arrival_date, now)
    out.append(f"--{boundary}".encode())
    out.append(b"Content-Description: Delivery report")
    out.append(b"Content-Type: message/delivery-status")
    if not report.isascii():
        out.append(b"Content-Transfer-Encoding: 8bit")
    out.append(b"")
    out.extend(line.encode() for line in report.split("\n"))
    out.append(b"")

    out.append(f"--{boundary}".encode())
    if return_full:
        out.append(b"Content-Description: Undelivered Message")
        out.append(b"Content-Type: message/rfc822")
    else:
        out.append(b"Content-Description: Undelivered Message Headers")
        out.append(b"Content-Type: text/rfc822-headers")
    if not quoted_part.isascii():
        # RFC 2046 allows only identity encodings for message/rfc822, and an 8-bit header
        # block is quoted the same way rather than re-encoded.
        out.append(b"Content-Transfer-Encoding: 8bit")
    out.append(b"")
    body = quoted_part.removesuffix(_CRLF)
    if body:
        out.append(body)
    out.append(b"")
    out.append(f"--{boundary}--".encode())
    out.append(b"")
    return _CRLF.join(out)


def _human_text(reporting_mta: str, failures: Iterable[DSNRecipient], action: DSNAction) -> str:
    if action == "failed":
        lines = [
            f"This is the mail system at host {reporting_mta}.",
            "",
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
            "",
            "The mail system",
            "",
        ]
    else:
        lines = [
            f"This is the mail system at host {reporting_mta}.",
            "",
            "Your message could not be delivered yet to one or more recipients.",
            "The mail system will keep trying; you do not need to send it again.",
            "",
        ]
    for f in failures:
        diagnostic = _one_line(f.diagnostic or f.local_reason or "no reply from the remote side")
        where = f" (host {f.remote_mta} said)" if f.remote_mta else ""
        lines.append(f"<{_one_line(f.recipient)}>:{where} {diagnostic}")
    return "\n".join(lines)


def _status_report(
    reporting_mta: str,
    failures: Iterable[DSNRecipient],
    action: DSNAction,
    arrival_date: float,
    now: float,
) -> str:
    blocks = [
        "\n".join(
            [
                f"Reporting-MTA: dns; {_one_line(reporting_mta)}",
                f"Arrival-Date: {email.utils.formatdate(arrival_date, localtime=False)}",
            ]
        )
    ]
    for f in failures:
        recipient = _one_line(f.recipient)
        # RFC 6533: an internationalized address is typed "utf-8", not "rfc822".
        addr_type = "rfc822" if recipient.isascii() else "utf-8"
        lines = [
            f"Final-Recipient: {addr_type}; {recipient}",
            f"Action: {action}",
            f"Status: {f.status}",
        ]
        if f.remote_mta:
            lines.append(f"Remote-MTA: dns; {_one_line(f.remote_mta)}")
        if f.diagnostic:
            lines.append(f"Diagnostic-Code: smtp; {_one_line(f.diagnostic)}")
        last = f.last_attempt_date if f.last_attempt_date is not None else now
        lines.append(f"Last-Attempt-Date: {email.utils.formatdate(last, localtime=False)}")
        if action == "delayed" and f.will_retry_until is not None:
            until = email.utils.formatdate(f.will_retry_until, localtime=False)
            lines.append(f"Will-Retry-Until: {until}")
        blocks.append("\n".join(lines))
    # Each block ends with a blank line, the per-message one included (RFC 3464 §2.1).
    return "\n\n".join(blocks)


def _one_line(text: str) -> str:
    """Header-safe: no line breaks (header injection) and no control characters."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _crlf(data: bytes) -> bytes:
    return _LINE_END.sub(_CRLF, data)


def _header_block(message: bytes) -> bytes:
    """The header section of a CRLF message, ending with CRLF (no blank line)."""
    head, sep, _ = message.partition(b"\r\n\r\n")
    if not sep:
        # No body separator: either only headers, or not a message at all; quote it as is.
        return message if message.endswith(_CRLF) else message + _CRLF
    return head + _CRLF


def _parse_headers(message: bytes) -> dict[str, str]:
    head = _header_block(_crlf(message))
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head + _CRLF)
    return {k.lower(): str(v) for k, v in parsed.items()}


def _message_id(reporting_mta: str, now: float) -> str:
    domain = _one_line(reporting_mta).replace(" ", "") or "localhost"
    return f"<{int(now)}.{secrets.token_hex(8)}@{domain}>"
