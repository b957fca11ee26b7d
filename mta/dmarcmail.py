"""DMARC aggregate reports as providers mail them (RFC 7489 §7.2.1.1): the report is the
message's attachment, a .zip, .xml.gz or .xml file. Google mails it as the whole body of a
single-part message (application/zip); Microsoft and Yahoo attach it to a multipart/mixed message
beside a text part. Pure: the message's bytes in, the attachments' bytes out (the operator
parses the XML).
"""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message
from email.policy import compat32

MAX_ATTACHMENTS = 8

_REPORT_TYPES = frozenset(
    {
        "application/zip",
        "application/x-zip-compressed",
        "application/gzip",
        "application/x-gzip",
        "application/xml",
        "text/xml",
    }
)
_REPORT_SUFFIXES = (".zip", ".gz", ".xml")


class NotAReport(ValueError):
    """The message carries no report attachment; the message says what was looked for."""


def _is_report(part: Message) -> bool:
    ctype = part.get_content_type()
    param = part.get_param("name")
    name = (part.get_filename() or (param if isinstance(param, str) else "")).lower()
    if ctype in _REPORT_TYPES:
        return True
    # Some reporters send application/octet-stream and let the file name say what it is.
    return ctype == "application/octet-stream" and name.endswith(_REPORT_SUFFIXES)


def report_attachments(data: bytes) -> list[bytes]:
    """The decoded report files of a mailed DMARC aggregate report, in message order."""
    msg = message_from_bytes(data, policy=compat32)
    out: list[bytes] = []
    for part in msg.walk():
        if part.is_multipart() or not _is_report(part):
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and payload:
            out.append(payload)
        if len(out) >= MAX_ATTACHMENTS:
            break
    if not out:
        raise NotAReport(
            "no DMARC aggregate report attached (a .zip, .xml.gz or .xml file, RFC 7489 7.2.1.1)"
        )
    return out
