"""DKIM signing (RFC 6376, RFC 8463 Ed25519, dual signing) for outgoing messages.

The signature format is dkimpy's: the same tag list (minus the optional i= and q=), relaxed/
relaxed canonicalization, header selection (`dkim.select_headers`, bottom-up per name), header
hashing as `dkim.hash_headers` does it, and `dkim.fold` for folding. What we do ourselves, for
speed, with byte-identical results (tests/unit/test_dkim.py checks them against dkimpy):
- the signature: made by `cryptography` (OpenSSL). dkimpy's RSA is pure Python, ~136 sig/s a
  core; OpenSSL does ~3,000/s;
- parsing and canonicalization: dkimpy splits and rejoins every body line and runs a regex
  substitution over every space (~150 µs for 5 KB); ours parses only the header block and
  touches only whitespace runs that change (~15 µs);
- the From address: a regex for the common shapes, email.utils for the rest.

A DKIMSigner holds only immutable state once built, so one instance may sign from many threads
at once (cryptography's key objects are safe for concurrent use).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, utils

from mailfleet.mta.config import DKIMConfig
from mailfleet.mta.dkimkeys import (
    Algorithm,
    DKIMKeyError,
    PrivateKey,
    load_private_key,
)
from mailfleet.mta.lineends import end_of_headers

__all__ = [
    "DKIMConfigError",
    "DKIMKeyError",
    "DKIMMessageError",
    "DKIMSigner",
    "SignResult",
    "Signature",
    "canonicalize_body_relaxed",
    "canonicalize_header_relaxed",
    "from_domain",
    "headers_to_sign",
    "signing_domain",
    "split_message",
]

Header = list[bytes]  # [name, value] as dkimpy parses them; value keeps its folding and CRLF

_SIG_NAME = b"DKIM-Signature"
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")
# `local@domain`, `<local@domain>`, `Name <local@domain>` or `"Name" <local@domain>`, with no
# comment, group, second address, quoted local part or non-ASCII domain: the shapes nearly all
# mail has. Anything else goes through email.utils, which is ~10x slower.
_ATOMS = rb"[^\s\"<>()@,;:\\\[\]]+"
_DOMAIN = rb"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?"
_SIMPLE_FROM = re.compile(
    rb"[ \t]*(?:"
    rb"(?:\"[^\"\\]*\"[ \t]*|[^\"<>()@,;:\\\[\]]*)<" + _ATOMS + rb"@(?P<angle>" + _DOMAIN + rb")>"
    rb"|" + _ATOMS + rb"@(?P<bare>" + _DOMAIN + rb")"
    rb")[ \t]*"
)
_LINE_END = re.compile(rb"\r?\n")
# Where a header field ends: a CRLF not followed by SP or HT (RFC 5322 §2.2.3), or the last one.
_FIELD_END = re.compile(rb"\r\n(?![ \t])")
# RFC 6376 §5.4: these must not be signed (and Bcc would leak through the h= list otherwise).
_NEVER_SIGN = frozenset(h.decode("ascii") for h in dkim.DKIM.SHOULD_NOT)
_B64_LINE = 70


class DKIMConfigError(ValueError):
    """The DKIM configuration asks for something that must not be done (e.g. sign Bcc)."""


class DKIMMessageError(ValueError):
    """The message's header cannot be parsed, so it cannot be signed."""


@dataclass(frozen=True)
class Signature:
    domain: str
    selector: str
    algorithm: Algorithm


@dataclass(frozen=True)
class SignResult:
    """Header fields to prepend (b"" when unsigned), which signatures they hold, and why none."""

    header: bytes
    signatures: tuple[Signature, ...]
    unsigned_reason: str | None = None


@dataclass(frozen=True)
class _Key:
    domain: str
    selector: str
    algorithm: Algorithm
    private: PrivateKey

    def sign_digest(self, digest: bytes) -> bytes:
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the canonicalized header data.
            signature: bytes = self.private.sign(digest)
        else:
            signature = self.private.sign(
                digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
            )
        return signature


# --- pure functions ----------------------------------------------------------------------------


def split_message(message: bytes, *, crlf: bool = False) -> tuple[list[Header], bytes]:
    """Header fields and body, exactly as dkimpy's rfc822_parse gives them: each header value
    keeps its folding and ends in CRLF, body lines end in CRLF.

    Ours slices the body off instead of splitting and re-joining every line of it. `crlf`: the
    caller knows every line end is CRLF already (the body is not scanned again for bare LFs).
    """
    if message.startswith((b"\r\n", b"\n")):
        body = message[2 if message[0] == 0x0D else 1 :]
        return [], body if crlf else _crlf(body)
    found = end_of_headers(message)
    if found is None:
        head, body = message, b""
    else:
        head, body = message[: found[0]], message[found[1] :]
    if not _crlf_only(head):
        head = _LINE_END.sub(b"\r\n", head)  # lines are what CRLF or LF ends, as dkimpy's
    # Whole fields (a line and its continuation lines), each split off in C and sliced once: a
    # value grown line by line is quadratic in the field's size (300,000 continuation lines of a
    # 1.2 MB field took seconds).
    headers: list[Header] = []
    # Continuation lines that follow a skipped mbox line belong to the field before it (as in
    # dkimpy): collected here and joined once at the end.
    extra: dict[int, list[bytes]] = {}
    for field in _FIELD_END.split(head):
        if not field:
            break  # a trailing line end of a message that has no body
        if field[0] in (0x09, 0x20):  # only the first can start so
            raise DKIMMessageError("message starts with a continuation line")
        name = _FIELD_NAME.match(field)
        if name is not None:
            headers.append([name.group(1), field[name.end() :] + b"\r\n"])
            continue
        line, more, rest = field.partition(b"\r\n")
        if not line.startswith(b"From "):  # an mbox separator line is skipped, as dkimpy does
            raise DKIMMessageError(f"unexpected characters in header line: {line[:80]!r}")
        if more:
            if not headers:
                raise DKIMMessageError("message starts with a continuation line")
            extra.setdefault(len(headers) - 1, []).append(rest + b"\r\n")
    for i, parts in extra.items():
        headers[i][1] = b"".join([headers[i][1], *parts])
    return headers, body if crlf else _crlf(body)


def _crlf_only(data: bytes) -> bool:
    return data.count(b"\n") == data.count(b"\r\n")


def _crlf(data: bytes) -> bytes:
    return data if _crlf_only(data) else _LINE_END.sub(b"\r\n", data)


def _compress_wsp(value: bytes) -> bytes:
    if b"\t" in value:
        value = value.replace(b"\t", b" ")
    # Each pass halves every run of spaces: a handful of passes at most, each a C-speed scan.
    while b"  " in value:
        value = value.replace(b"  ", b" ")
    return value


def canonicalize_header_relaxed(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """RFC 6376 §3.4.2 relaxed header canonicalization, byte-identical to dkimpy's."""
    unfolded = value.replace(b"\r\n", b"").replace(b"\n", b"")
    return name.lower().rstrip(), _compress_wsp(unfolded).strip() + b"\r\n"


def canonicalize_body_relaxed(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 relaxed body canonicalization, byte-identical to dkimpy's."""
    # A body without a space or tab (base64 parts: most of a large message) has nothing to
    # compress; one memchr each answers that, where the searches for runs cost a scan each.
    if b" " in body or b"\t" in body:
        body = _compress_wsp(body)
        if b" \r\n" in body:
            body = body.replace(b" \r\n", b"\r\n")
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    # Empty lines at the end are ignored; a non-empty body ends with exactly one CRLF, and an
    # empty one is empty (RFC 6376 errata 3300, as dkimpy and Mail::DKIM do).
    return body[:end] + b"\r\n" if end else b""


def from_domain(headers: Sequence[Header]) -> str | None:
    """The domain of the (single) From header's first address, lowercased, as an A-label.

    None when there is no From, more than one From header (DMARC receivers reject those, and
    which one we aligned to would be a guess) or no address with a domain.
    """
    values = [v for n, v in headers if n.lower() == b"from"]
    if len(values) != 1:
        return None
    value = values[0].replace(b"\r\n", b"").replace(b"\n", b"")
    simple = _SIMPLE_FROM.fullmatch(value)
    if simple is not None:
        return (simple["angle"] or simple["bare"]).decode("ascii").lower().rstrip(".")
    text = value.decode("utf-8", errors="replace")
    for _, addr in email.utils.getaddresses([text]):
        if "@" not in addr:
            continue
        domain = addr.rsplit("@", 1)[1].strip().rstrip(".").lower()
        if not domain:
            continue
        try:
            return domain.encode("idna").decode("ascii")
        except UnicodeError:
            return domain
    return None


def from_header_domain(data: bytes) -> str | None:
    """The domain of a message's From header as the DKIM signer sees it (`dkim.from_domain`):
    None without a single From header with an address. Linear in the header's size."""
    head = data.split(b"\r\n\r\n", 1)[0]
    fields: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        name, sep, value = line.partition(b":")
        current = None
        if sep and name.strip().lower() == b"from":
            current = [value]
            fields.append(current)
    return from_domain([[b"From", b"\r\n".join(f)] for f in fields])


def signing_domain(configured: Collection[str], domain: str) -> str | None:
    """The most specific configured domain equal to `domain` or a parent of it.

    DMARC relaxed alignment accepts a d= that is the From domain's organizational domain, so a
    key for example.com may sign mail from news.example.com; an exact key wins over a parent's.
    """
    labels = domain.split(".")
    for i in range(len(labels)):
        candidate = ".".join(labels[i:])
        if candidate in configured:
            return candidate
    return None


def headers_to_sign(headers: Sequence[Header], configured: Iterable[str]) -> list[bytes]:
    """The h= list: each configured header field actually present, once per occurrence, in
    message order; From always, and once more at the end ("oversigning") so that a second From
    added on the way breaks the signature instead of showing a forged sender.
    """
    return _headers_to_sign(headers, _wanted(configured))


def _wanted(configured: Iterable[str]) -> frozenset[bytes]:
    return frozenset(h.lower().encode("ascii") for h in configured) | {b"from"}


def _headers_to_sign(headers: Sequence[Header], wanted: frozenset[bytes]) -> list[bytes]:
    return [*(n.lower() for n, _ in headers if n.lower() in wanted), b"from"]


def _fold_b64(value: bytes) -> bytes:
    first = _B64_LINE - 4  # after " b="
    parts = [value[:first]] + [
        value[i : i + _B64_LINE] for i in range(first, len(value), _B64_LINE)
    ]
    return b"\r\n ".join(parts)


# --- the signer --------------------------------------------------------------------------------


class DKIMSigner:
    """Signs messages with the configured keys of their From domain.

    Keys are read once, here; an unreadable or invalid key raises DKIMKeyError naming the file,
    domain and selector.
    """

    def __init__(self, config: DKIMConfig, *, clock: Callable[[], float] = time.time) -> None:
        forbidden = sorted({h.lower() for h in config.headers} & _NEVER_SIGN)
        if forbidden:
            raise DKIMConfigError(
                f"dkim.headers lists {', '.join(forbidden)}, which must not be signed "
                "(RFC 6376 §5.4)"
            )
        self._wanted = _wanted(config.headers)
        self._clock = clock
        by_domain: dict[str, list[_Key]] = {}
        for k in config.keys:
            try:  # d= must be ASCII; From domains are compared as A-labels too
                domain = k.domain.encode("idna").decode("ascii")
            except UnicodeError as e:
                raise DKIMConfigError(f"DKIM key domain {k.domain!r} is not a valid domain") from e
            by_domain.setdefault(domain, []).append(
                _Key(domain, k.selector, k.algorithm, load_private_key(k))
            )
        self._keys: dict[str, tuple[_Key, ...]] = {d: tuple(ks) for d, ks in by_domain.items()}

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(self._keys)

    def sign(self, message: bytes) -> bytes:
        """DKIM-Signature header field(s) to prepend to `message` (CRLF-terminated, folded),
        or b"" when no configured key fits its From domain.

        Raises DKIMMessageError when the header block cannot be parsed.
        """
        return self.sign_result(message).header

    def sign_result(self, message: bytes, *, crlf: bool = False) -> SignResult:
        """As `sign`, with what was signed. `crlf`: every line end of `message` is CRLF (the
        caller checked; the body is not scanned again)."""
        headers, body = split_message(message, crlf=crlf)
        domain = from_domain(headers)
        if domain is None:
            return SignResult(b"", (), "no single From header with a domain")
        d = signing_domain(self._keys.keys(), domain)
        if d is None:
            return SignResult(b"", (), f"no DKIM key for {domain}")
        keys = self._keys[d]

        include = _headers_to_sign(headers, self._wanted)
        signed_names = set(include)
        canon_headers = [
            canonicalize_header_relaxed(n, v) for n, v in headers if n.lower() in signed_names
        ]
        selected = dkim.select_headers(canon_headers, include)
        bh = base64.b64encode(hashlib.sha256(canonicalize_body_relaxed(body)).digest())
        t = str(int(self._clock())).encode("ascii")
        h_value = b" : ".join(include)

        out: list[bytes] = []
        for key in keys:
            fields = [
                (b"v", b"1"),
                (b"a", key.algorithm.encode("ascii")),
                (b"c", b"relaxed/relaxed"),
                (b"d", key.domain.encode("ascii")),
                (b"s", key.selector.encode("ascii")),
                (b"t", t),
                (b"h", h_value),
                (b"bh", bh),
            ]
            # Everything but b= is folded once and hashed exactly as it will be sent; b= goes
            # on lines of its own, so its length cannot move any other tag's folding.
            head = dkim.fold(
                b"; ".join(b"=".join(f) for f in fields) + b";",
                namelen=len(_SIG_NAME) + 2,
            )
            unsigned = b" " + head + b"\r\n b="
            # As dkim.hash_headers does it: the chosen fields (bottom-up per name, by dkimpy's
            # select_headers), then this signature's own field, without its final CRLF.
            hasher = hashlib.sha256()
            for name, value in selected:
                hasher.update(name + b":" + value)
            sig_name, sig_value = canonicalize_header_relaxed(_SIG_NAME, unsigned)
            hasher.update(sig_name + b":" + sig_value.rstrip(b"\r\n"))
            sig = base64.b64encode(key.sign_digest(hasher.digest()))
            out.append(_SIG_NAME + b":" + unsigned + _fold_b64(sig) + b"\r\n")
        return SignResult(
            b"".join(out),
            tuple(Signature(k.domain, k.selector, k.algorithm) for k in keys),
        )
