"""The one parser of SMTP envelope addresses (RFC 5321 §4.1.2, RFC 6531 §3.3) and EHLO names.

Every MAIL FROM and RCPT TO argument goes through ``parse_path``; what it accepts is exactly the
grammar below, so an address that passes can be stored, routed and written back into an SMTP
command without surprises (no control characters, no second ``@``, no empty label):

    Path           = "<" [ A-d-l ":" ] Mailbox ">"
    Mailbox        = Local-part "@" ( Domain / address-literal )
    Local-part     = Dot-string / Quoted-string
    Domain         = sub-domain *("." sub-domain)
    sub-domain     = Let-dig [Ldh-str]
    address-literal = "[" ( IPv4-address-literal / "IPv6:" IPv6-addr ) "]"

Decisions where the RFC leaves room:

- **Source routes** (``<@relay.org:user@dest.org>``): RFC 5321 §4.1.1.3 and Appendix C say a
  server SHOULD ignore them. A well-formed route is parsed and dropped; the mail goes to
  ``user@dest.org``. A route with no mailbox after it (``<@dest.org>``) is a syntax error.
- **Non-ASCII** (UTF-8 in the local part or domain) only after ``MAIL FROM:<...> SMTPUTF8``
  (RFC 6531 §3.4); without it the reply is ``553 5.6.7``. Bytes that are not UTF-8 are refused.
- **Angle brackets are required** (RFC 5321 §4.1.2); a bare ``MAIL FROM:user@x`` is refused.
- **General address literals** (``[tag:...]``) are refused: nothing could route them.

Replies: the sender's syntax errors are ``501 5.1.7`` (RFC 3463: bad sender's mailbox syntax),
the recipient's ``501 5.1.3``, parameters ``501 5.5.4``, as Postfix answers. All permanent:
a client that retries an unparseable address gets the same answer forever.

Pure functions: text in, an address or an ``AddressError`` carrying the whole SMTP reply out.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AddressError",
    "ParsedPath",
    "domain_of",
    "is_address_literal",
    "parse_path",
    "valid_helo",
]

MAX_PATH = 256  # RFC 5321 §4.5.3.1.3, including the angle brackets
MAX_DOMAIN = 255  # §4.5.3.1.2
MAX_LABEL = 63  # RFC 1035 §2.3.4

Kind = Literal["sender", "recipient"]

_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_LDH = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


class AddressError(ValueError):
    """An argument that can never be valid; ``reply`` is the whole SMTP reply line."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class ParsedPath:
    address: str  # "" for the null reverse-path <>
    params: list[str]  # ESMTP parameters as written ("SIZE=100", "SMTPUTF8")
    utf8: bool  # the mailbox holds non-ASCII characters


def _is_utf8_char(c: str) -> bool:
    # Non-ASCII, not a surrogate (undecodable bytes arrive as surrogate escapes), not a C1
    # control or other control/format character that would smuggle something into a header.
    o = ord(c)
    if o < 0x80 or 0xD800 <= o <= 0xDFFF or 0x80 <= o <= 0x9F:
        return False
    return c not in "\u2028\u2029\ufeff"


def _atom_ok(text: str, utf8: bool) -> bool:
    if _ATEXT.fullmatch(text):
        return True
    return utf8 and all(_ATEXT.fullmatch(c) or _is_utf8_char(c) for c in text) and text != ""


def _dot_string_ok(text: str, utf8: bool) -> bool:
    return all(_atom_ok(atom, utf8) for atom in text.split("."))


def _quoted_ok(text: str, utf8: bool) -> bool:
    # text includes the quotes
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        return False
    body = text[1:-1]
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 >= len(body) or not 32 <= ord(body[i + 1]) <= 126:
                return False
            i += 2
            continue
        o = ord(c)
        if not ((32 <= o <= 126 and c != '"') or (utf8 and _is_utf8_char(c))):
            return False
        i += 1
    return True


def _domain_ok(domain: str, utf8: bool) -> bool:
    if not domain or len(domain.encode("utf-8", "surrogateescape")) > MAX_DOMAIN:
        return False
    for label in domain.split("."):
        if not label or len(label.encode("utf-8", "surrogateescape")) > MAX_LABEL:
            return False
        if _LDH.fullmatch(label):
            continue
        # RFC 6531 §3.3: sub-domain =/ U-label
        if not (utf8 and label[0] != "-" and label[-1] != "-"):
            return False
        if not all((c.isascii() and (c.isalnum() or c == "-")) or _is_utf8_char(c) for c in label):
            return False
    return True


def _literal_ok(literal: str) -> bool:
    inner = literal[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def is_address_literal(domain: str) -> bool:
    return domain.startswith("[") and domain.endswith("]")


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def _split_mailbox(text: str) -> tuple[str, str] | None:
    """(local part, domain) split at the "@" that ends the local part: a quoted local part may
    hold "@" itself."""
    if text.startswith('"'):
        i = 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                break
            i += 1
        local, rest = text[: i + 1], text[i + 1 :]
        if not rest.startswith("@"):
            return None
        return local, rest[1:]
    local, at, domain = text.partition("@")
    if not at:
        return None
    return local, domain


def _close_bracket(text: str) -> int:
    """The index of the ">" that closes the path at text[0] == "<", skipping quoted strings and
    address literals; -1 when there is none."""
    i, quoted, literal = 1, False, False
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                quoted = False
        elif literal:
            if c == "]":
                literal = False
        elif c == '"':
            quoted = True
        elif c == "[":
            literal = True
        elif c == ">":
            return i
        i += 1
    return -1


def parse_path(arg: str, kind: Kind, *, smtputf8: bool = False) -> ParsedPath:
    """The path and parameters of a MAIL FROM (kind "sender") or RCPT TO ("recipient") argument,
    the text after "FROM:"/"TO:". Raises AddressError with the reply to send.

    `smtputf8`: the transaction was opened with SMTPUTF8 (for MAIL, a SMTPUTF8 parameter in
    `arg` itself counts)."""
    enhanced = "5.1.7" if kind == "sender" else "5.1.3"
    who = "sender" if kind == "sender" else "recipient"

    def bad(why: str) -> AddressError:
        return AddressError(f"501 {enhanced} Bad {who} address syntax: {why}")

    text = arg.strip(" ")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise bad("not valid UTF-8")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise bad("control characters are not allowed")
    if not text.startswith("<"):
        raise bad("the address must be in angle brackets, <user@domain>")
    end = _close_bracket(text)
    if end < 0:
        raise bad("no closing '>'")
    path, rest = text[1:end], text[end + 1 :]
    if rest and not rest.startswith(" "):
        raise bad("expected a space between the address and its parameters")
    params = rest.split()
    for p in params:
        keyword, eq, value = p.partition("=")
        if not _KEYWORD.fullmatch(keyword) or (eq and not value) or "=" in value:
            raise AddressError(f"501 5.5.4 Bad parameter syntax: {p[:64]}")
    if kind == "sender" and any(p.partition("=")[0].upper() == "SMTPUTF8" for p in params):
        smtputf8 = True
    if len(path) + 2 > MAX_PATH:
        raise bad(f"longer than {MAX_PATH} characters")
    if path == "":
        if kind == "sender":
            return ParsedPath("", params, False)
        raise bad("a recipient cannot be the null path <>")
    if path.startswith("@"):
        # A source route (A-d-l ":"): checked, then ignored (RFC 5321 §4.1.1.3, Appendix C).
        route, colon, path = path.partition(":")
        if not colon:
            raise bad("a source route must be followed by ':' and a mailbox")
        for hop in route.split(","):
            if not hop.startswith("@") or not _domain_ok(hop[1:], False):
                raise bad("malformed source route")
    has_utf8 = not path.isascii()
    split = _split_mailbox(path)
    if split is None:
        raise bad("expected user@domain")
    local, domain = split
    if not local:
        raise bad("empty local part")
    if has_utf8 and not smtputf8:
        raise AddressError(
            f"553 5.6.7 Non-ASCII {who} address without SMTPUTF8 (RFC 6531): not permitted"
        )
    if local.startswith('"'):
        if not _quoted_ok(local, smtputf8):
            raise bad("malformed quoted local part")
    elif not _dot_string_ok(local, smtputf8):
        raise bad("malformed local part (empty part between dots, or a special character)")
    if not domain:
        raise bad("empty domain")
    if is_address_literal(domain):
        if not _literal_ok(domain):
            raise bad("malformed address literal (expected [192.0.2.1] or [IPv6:2001:db8::1])")
    elif not _domain_ok(domain, smtputf8):
        raise bad("malformed domain (empty label, a second '@', or a character not allowed)")
    return ParsedPath(f"{local}@{domain}", params, has_utf8)


def valid_helo(arg: str) -> bool:
    """An EHLO/HELO argument: a domain or an address literal (RFC 5321 §4.1.1.1). Underscores
    are tolerated in labels (Windows host names carry them and they can do no harm); nothing
    else beyond letters, digits, '-' and '.'."""
    if not arg or len(arg) > MAX_DOMAIN or not arg.isascii():
        return False
    if is_address_literal(arg):
        return _literal_ok(arg)
    name = arg[:-1] if arg.endswith(".") else arg
    return all(
        label and len(label) <= MAX_LABEL and re.fullmatch(r"[A-Za-z0-9_-]+", label)
        for label in name.split(".")
    )
