"""The one parser of SMTP envelope addresses (RFC 5321 §4.1.2, RFC 6531 §3.3) and EHLO names.

Every MAIL FROM and RCPT TO argument goes through ``parse_path``; what it accepts is exactly the
grammar below, so an address that passes can be stored, routed and written back into an SMTP
command without surprises (no control characters, no second ``@``, no empty label):

    Path           = "<" [ A-d-l ":" ] Mailbox ">"
    Mailbox        = Local-part "@" ( Domain / address-literal )
    Local-part     = Dot-string / Quoted-string
    Domain         = sub-domain *("." sub-domain)
    sub-domain     = Let-dig [Ldh-str]  ; or, with SMTPUTF8, a U-label (RFC 6531 §3.3)
    address-literal = "[" ( IPv4-address-literal / IPv6-address-literal ) "]"
    IPv4-address-literal = Snum 3("." Snum)
    IPv6-address-literal = "IPv6:" IPv6-addr    ; §4.1.3: no zone id ("%eth0") in any form
    Mail-parameters = esmtp-param *(SP esmtp-param)
    esmtp-param    = esmtp-keyword ["=" esmtp-value]

Decisions where the RFC leaves room:

- **Source routes** (``<@relay.org:user@dest.org>``): RFC 5321 §4.1.1.3 and Appendix C say a
  server SHOULD ignore them. A well-formed route is parsed and dropped; the mail goes to
  ``user@dest.org``. A route with no mailbox after it (``<@dest.org>``) is a syntax error.
- **Non-ASCII** (UTF-8 in the local part or domain) only after ``MAIL FROM:<...> SMTPUTF8``
  (RFC 6531 §3.4); without it the reply is ``553 5.6.7``. Bytes that are not UTF-8 are refused.
- **Angle brackets are required** (RFC 5321 §4.1.2); a bare ``MAIL FROM:user@x`` is refused.
- **Address literals** follow RFC 5321 §4.1.3 exactly, checked here by the grammar and not
  by ``ipaddress`` (which takes a zone id of any characters, CR and NUL included, and "::" for a
  single group). Stricter in one place: an IPv4 octet with a leading zero (``[010.0.0.1]``) is
  refused, as some read it as octal. General address literals (``[tag:...]``) are refused:
  nothing could route them.
- **Domains** that are not valid IDNA 2008 (RFC 5891) are refused: a U-label (after lower-casing)
  or an ``xn--`` A-label that ``idna`` rejects: bidi controls, zero-width characters outside
  their CONTEXTJ rule, a label that fails the bidi rule, an A-label that does not decode.
- **ESMTP parameters** are checked against their RFCs and rebuilt: what ``ParsedPath.params``
  holds is made from the parsed values, never the client's text. MAIL takes SIZE (RFC 1870:
  1 to 20 digits), BODY=7BIT/8BITMIME (RFC 6152), SMTPUTF8 without a value (RFC 6531) and
  AUTH=xtext (RFC 4954 §5; checked, then dropped: the engine never passes on a client's claim);
  RCPT takes none. Anything else, DSN's RET/ENVID/NOTIFY/ORCPT included (DSN is not offered), is
  ``555 5.5.4`` (RFC 5321 §4.1.1.11); a keyword twice or a malformed value is ``501 5.5.4``.

Replies: the sender's syntax errors are ``501 5.1.7`` (RFC 3463: bad sender's mailbox syntax),
the recipient's ``501 5.1.3``, parameters ``501 5.5.4``, as Postfix answers. All permanent:
a client that retries an unparseable address gets the same answer forever.

Pure functions: text in, an address or an ``AddressError`` carrying the whole SMTP reply out.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

import idna

__all__ = [
    "AddressError",
    "ParsedPath",
    "canonical_address",
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
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")  # esmtp-value: printable ASCII but "="
_SIZE = re.compile(r"[0-9]{1,20}")  # RFC 1870 §4
# xtext (RFC 3461 §4): "!" to "~" except "+" and "=", or "+" and two upper-case hex digits.
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+")
_HEX4 = re.compile(r"[0-9A-Fa-f]{1,4}")
# Snum without leading zeros (see the module docstring).
_SNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_SNUM}(?:\.{_SNUM}){{3}}")


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
    # control, line separator, private-use or format character: bidi controls reorder what a log
    # or header shows, zero-width ones make two spellings of one name. ZWNJ and ZWJ stay: some
    # scripts need them.
    if ord(c) < 0x80:
        return False
    if c in "\u200c\u200d":
        return True
    return unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp")


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
        # RFC 6531 §3.3: sub-domain =/ U-label. Which non-ASCII characters a U-label may hold
        # is IDNA 2008's to say (_idna_problem), with a reply that names the rule.
        if not utf8:
            return False
        if not all(
            (c.isalnum() or c == "-") if c.isascii() else not 0xD800 <= ord(c) <= 0xDFFF
            for c in label
        ):
            return False
    return True


def _a_label(label: str) -> str:
    """The A-label of a domain label, lower case; IDNAError when it is not valid IDNA 2008.
    An LDH label that is no A-label is returned as it is (lower case)."""
    lower = label.lower()
    if lower.isascii():
        if lower.startswith("xn--"):
            idna.ulabel(lower)  # decodes, and checks what it decodes to
        return lower
    return idna.alabel(lower).decode("ascii")


def _idna_problem(domain: str) -> str | None:
    """Why a domain that passed `_domain_ok` is not valid IDNA 2008 (RFC 5891), or None."""
    for label in domain.split("."):
        if label.isascii() and label[:4].lower() != "xn--":
            continue
        try:
            _a_label(label)
        except (idna.IDNAError, UnicodeError) as e:
            return f"domain label '{_ascii(label)}' is not valid IDNA 2008 ({_ascii(str(e))})"
    return None


def _ascii(text: str) -> str:
    # For a reply line: what the client sent, escaped, never raw (it may hold a bidi control).
    return text.encode("ascii", "backslashreplace").decode("ascii")[:80]


def _hex_groups_ok(text: str, full: int, most: int) -> bool:
    """`full` groups of 1-4 hex digits separated by ":", or at most `most` of them around one
    "::" (RFC 5321 §4.1.3: the "::" stands for at least two groups)."""
    if "::" in text:
        left, _, right = text.partition("::")
        groups = (left.split(":") if left else []) + (right.split(":") if right else [])
        return len(groups) <= most and all(_HEX4.fullmatch(g) for g in groups)
    groups = text.split(":")
    return len(groups) == full and all(_HEX4.fullmatch(g) for g in groups)


def _ipv6_ok(text: str) -> bool:
    """IPv6-addr of RFC 5321 §4.1.3: IPv6-full / IPv6-comp / IPv6v4-full / IPv6v4-comp."""
    if ":" not in text:
        return False
    if "." in text:
        head, _, v4 = text.rpartition(":")
        if not _IPV4.fullmatch(v4):
            return False
        # "::" right before the IPv4 part ("1:2::1.2.3.4": head "1:2:") or not ("1::2:1.2.3.4")
        return _hex_groups_ok(head + ":" if head.endswith(":") else head, 6, 4)
    return _hex_groups_ok(text, 8, 6)


def _literal_ok(literal: str) -> bool:
    inner = literal[1:-1]
    if inner[:5].lower() == "ipv6:":
        return _ipv6_ok(inner[5:])
    return _IPV4.fullmatch(inner) is not None


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
    """The index of the ">" that closes the path at text[0] == "<", skipping quoted strings; -1
    when there is none. Brackets mean nothing here: an IPv4 or IPv6 literal cannot hold a ">",
    so a ">" inside "[...]" ends the path, and what is left of the literal fails its grammar
    (``<x@[IPv6:::1%> SIZE=1]>`` is the address ``x@[IPv6:::1%``, refused)."""
    i, quoted = 1, False
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            return i
        i += 1
    return -1


# MAIL parameters taken (RFC 1870, 6152, 6531, 4954); RCPT takes none. Those of DSN (RFC 3461)
# get their own refusal: a client may send them unasked.
_DSN = {"RET", "ENVID", "NOTIFY", "ORCPT"}


def _parameters(params: list[str], kind: Kind) -> list[str]:
    """The parameters checked and rebuilt from their values; AddressError with the reply."""
    verb = "MAIL FROM" if kind == "sender" else "RCPT TO"
    seen: dict[str, str | None] = {}
    for p in params:
        keyword, eq, text = p.partition("=")
        if not _KEYWORD.fullmatch(keyword) or (eq and not _VALUE.fullmatch(text)):
            raise AddressError(
                f"501 5.5.4 Bad parameter syntax: {_ascii(p)[:64]} (expected KEYWORD or"
                " KEYWORD=value, printable ASCII without '=' in the value)"
            )
        key = keyword.upper()
        if key in seen:
            raise AddressError(f"501 5.5.4 {verb} parameter {key} given twice")
        seen[key] = text if eq else None
    out: list[str] = []
    for key, value in seen.items():
        if kind == "recipient" or key not in ("SIZE", "BODY", "SMTPUTF8", "AUTH"):
            why = "DSN (RFC 3461) is not offered here" if key in _DSN else "not supported"
            raise AddressError(f"555 5.5.4 {verb} parameter {key}: {why}")
        if key == "SIZE":
            if value is None or not _SIZE.fullmatch(value):
                raise AddressError("501 5.5.4 SIZE: expected the size in octets, 1 to 20 digits")
            out.append(f"SIZE={int(value)}")
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise AddressError("501 5.5.4 BODY: expected 7BIT or 8BITMIME")
            out.append(f"BODY={value.upper()}")
        elif key == "SMTPUTF8":
            if value is not None:
                raise AddressError("501 5.5.4 SMTPUTF8 takes no value (RFC 6531)")
            out.append("SMTPUTF8")
        elif value is None or not (value == "<>" or _XTEXT.fullmatch(value)):
            # AUTH: checked, not kept (RFC 4954 §5 lets a server ignore it; nothing passes on
            # what a client claims about the original submitter).
            raise AddressError(
                "501 5.5.4 AUTH: expected AUTH=<> or AUTH=xtext (RFC 4954 section 5)"
            )
    return out


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
    words = [p for p in rest.split(" ") if p]
    if kind == "sender" and any(p.partition("=")[0].upper() == "SMTPUTF8" for p in words):
        smtputf8 = True
    if len(path) + 2 > MAX_PATH:
        raise bad(f"longer than {MAX_PATH} characters")
    if path == "":
        if kind == "sender":
            return ParsedPath("", _parameters(words, kind), False)
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
            raise bad(
                "malformed address literal (expected [192.0.2.1] or [IPv6:2001:db8::1], as in"
                " RFC 5321 section 4.1.3: no zone id, no leading zeros, no other tag)"
            )
    elif not _domain_ok(domain, smtputf8):
        raise bad("malformed domain (empty label, a second '@', or a character not allowed)")
    else:
        problem = _idna_problem(domain)
        if problem is not None:
            raise bad(problem)
    # The path first: a client learns what is wrong with its address before its parameters.
    return ParsedPath(f"{local}@{domain}", _parameters(words, kind), has_utf8)


def canonical_address(address: str) -> str:
    """The one spelling of a mailbox, for keys that must match whatever way it was written
    (the suppression list): a quoted local part unquoted where the quotes are unnecessary
    (RFC 5321 §4.1.2: ``"victim"@d`` and ``"vic\\tim"@d`` are ``victim@d``), else quoted with
    the fewest quoted-pairs; the local part in NFC (RFC 6532 §3.1), its case kept; a source
    route dropped; the domain in lower case, as A-labels; an IPv6 literal in RFC 5952 form.
    AddressError when `address` (without angle brackets) is not a mailbox."""
    parsed = parse_path(f"<{address}>", "recipient", smtputf8=True)
    split = _split_mailbox(parsed.address)
    assert split is not None  # parse_path split it
    local, domain = split
    if local.startswith('"'):
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    local = unicodedata.normalize("NFC", local)
    if not _dot_string_ok(local, True):
        local = '"' + re.sub(r'(["\\])', r"\\\1", local) + '"'
    if is_address_literal(domain):
        inner = domain[1:-1]
        if inner[:5].lower() == "ipv6:":
            domain = f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
    else:
        domain = ".".join(_a_label(label) for label in domain.split("."))
    return f"{local}@{domain}"


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
