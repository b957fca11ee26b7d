"""Headers the engine adds at submission: List-Unsubscribe (RFC 2369), one-click unsubscribe
(RFC 8058) and Feedback-ID (Gmail's feedback loop).

They are added before DKIM signing, and the default signed-header list names all three, so the
signature covers them - RFC 8058 §4 requires exactly that for one-click.

Rules, as a receiving provider and a sender's own code would expect:
- a header the sender already set is never duplicated. Where a template is configured, the
  sender's List-Unsubscribe, List-Unsubscribe-Post and Feedback-ID are removed and the pool's
  added (headers.clientHeaders: replace, the default: one tenant must not attribute its
  complaints to another, nor send unsubscribes past the pool's suppression list); with
  ``keep`` theirs wins, and a List-Unsubscribe-Post is added only next to a List-Unsubscribe we
  wrote (we cannot know that the sender's URI accepts a one-click POST);
- ``{recipient}`` and ``{token}`` name one recipient, so a message for several gets no
  List-Unsubscribe from such a template (the result says why, for the log);
- List-Unsubscribe-Post needs an https URI in List-Unsubscribe (RFC 8058 §3.1);
- ``X-Mailfleet-<Name>`` headers are internal: they fill ``{name}`` in the Feedback-ID template
  and are always removed from the message (their values are returned to the caller).

Every parse of a header block is linear in its size (a folded field is split by one regex
and never grown by concatenation), and `header_block_refusal` bounds the block at DATA.

Pure functions; ``load_token_key`` is the only one that reads a file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from mailfleet.mta.config import HeadersConfig
from mailfleet.mta.lineends import end_of_headers

__all__ = [
    "INTERNAL_PREFIX",
    "HeaderResult",
    "add_headers",
    "check_templates",
    "fold_header",
    "has_internal_headers",
    "header_block_refusal",
    "load_token_key",
    "unsubscribe_token",
    "verify_token",
]

INTERNAL_PREFIX = "x-mailfleet-"
MAX_LINE = 78  # RFC 5322 §2.1.1: SHOULD NOT exceed 78 characters, excluding CRLF
TOKEN_CHARS = 22  # 132 bits of HMAC-SHA256: above the 128 RFC 2104 §5 asks a truncation to keep
MIN_KEY_BYTES = 16

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_-]+)\}")
_UNSUB_FIELDS = frozenset({"recipient", "token", "message_id"})
_PERSONAL = frozenset({"recipient", "token"})
_URI = re.compile(r"<([^<>]*)>")
# Where a header field ends: a line end not followed by SP or HT (RFC 5322 §2.2.3), line ends
# being those of bytes.splitlines (CRLF, LF, CR). Found by one regex scan, so a field is sliced
# once, never grown line by line; the CRLF-only form (every message the engine handles) starts
# with a literal and scans several times faster.
_FIELD_END_CRLF = re.compile(rb"\r\n(?![ \t])")
_FIELD_END = re.compile(rb"\r\n(?![ \t])|\r(?![\n \t])|\n(?![ \t])")
# Feedback-ID is colon-separated; a value must not add fields or break the header.
_FEEDBACK_UNSAFE = re.compile(r"[^A-Za-z0-9._+=/@-]+")
_CANONICAL = {
    "list-unsubscribe": "List-Unsubscribe",
    "list-unsubscribe-post": "List-Unsubscribe-Post",
    "feedback-id": "Feedback-ID",
}


@dataclass(frozen=True)
class HeaderResult:
    data: bytes  # the message, changed or not
    added: tuple[str, ...] = ()  # names of the header fields added
    # Why a configured header was not added or is incomplete, one line each, for the log.
    notes: tuple[str, ...] = ()
    # X-Mailfleet-* fields removed from the message: lower-case name after the prefix -> value
    internal: Mapping[str, str] = field(default_factory=dict)
    # The sender's own fields removed for the pool's (clientHeaders: replace), lower-case names
    replaced: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.internal or self.replaced)


def unsubscribe_token(key: bytes, recipient: str) -> str:
    """An opaque, unguessable, URL-safe token for `recipient` (lower-cased first, as the
    suppression list stores it): base64url HMAC-SHA256, truncated to TOKEN_CHARS."""
    mac = hmac.new(key, recipient.strip().lower().encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")[:TOKEN_CHARS]


def verify_token(key: bytes, recipient: str, token: str) -> bool:
    """For the unsubscribe endpoint: does `token` belong to `recipient`? (constant time)"""
    return hmac.compare_digest(unsubscribe_token(key, recipient), token)


def load_token_key(path: Path) -> bytes:
    """The {token} secret from headers.tokenKeyFile (surrounding whitespace ignored)."""
    key = Path(path).read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"headers.tokenKeyFile {path}: the key has {len(key)} bytes, at least "
            f"{MIN_KEY_BYTES} are needed"
        )
    return key


def check_templates(cfg: HeadersConfig) -> list[str]:
    """Problems with the configured templates, for config validation (empty when fine)."""
    problems: list[str] = []
    if cfg.list_unsubscribe is not None:
        tpl = cfg.list_unsubscribe
        unknown = sorted(set(_PLACEHOLDER.findall(tpl)) - _UNSUB_FIELDS)
        if unknown:
            problems.append(
                f"headers.listUnsubscribe: unknown placeholder(s) {', '.join(unknown)}; "
                "known: {recipient}, {token}, {message_id}"
            )
        uris = _URI.findall(tpl)
        if not uris:
            problems.append("headers.listUnsubscribe: no <URI> (RFC 2369 wants <mailto:...>)")
        for uri in uris:
            scheme = uri.strip().split(":", 1)[0].lower()
            if scheme not in ("mailto", "https", "http"):
                problems.append(f"headers.listUnsubscribe: <{uri}> is not mailto:, https: or http:")
        if cfg.one_click and not _has_https(tpl):
            problems.append(
                "headers.oneClick needs an https URI in headers.listUnsubscribe (RFC 8058 §3.1)"
            )
        if "{token}" in tpl and cfg.token_key_file is None:
            problems.append("headers.listUnsubscribe uses {token}: set headers.tokenKeyFile")
    return problems


def _has_https(value: str) -> bool:
    return any(u.strip().lower().startswith("https://") for u in _URI.findall(value))


def fold_header(name: str, value: str, eol: bytes = b"\r\n") -> bytes:
    """`name: value` + eol, folded at whitespace so lines stay within 78 characters where a
    word allows (a URI longer than a line is left whole: folding inside it would break it).
    A first word too long for the name's line starts on the next one (RFC 5322 lets FWS follow
    the colon)."""
    lines: list[str] = []
    line = f"{name}:"
    for word in value.split():
        if len(line) + 1 + len(word) > MAX_LINE and (
            line != f"{name}:" or 1 + len(word) <= MAX_LINE
        ):
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return eol.join(s.encode("utf-8") for s in lines) + eol


def _render_unsubscribe(template: str, values: Mapping[str, str]) -> str:
    """Fill the placeholders; percent-encoded inside <URI>s, where they land in a URI."""
    out: list[str] = []
    pos = 0
    for m in _URI.finditer(template):
        out.append(_PLACEHOLDER.sub(lambda p: values[p.group(1)], template[pos : m.start()]))
        uri = _PLACEHOLDER.sub(lambda p: quote(values[p.group(1)], safe=""), m.group(1))
        out.append(f"<{uri.strip()}>")
        pos = m.end()
    out.append(_PLACEHOLDER.sub(lambda p: values[p.group(1)], template[pos:]))
    return " ".join("".join(out).split())


def _feedback_value(value: str) -> str:
    return _FEEDBACK_UNSAFE.sub("-", value.strip()).strip("-")


def _split_fields(block: bytes) -> list[bytes]:
    """The header block as whole fields, each with its continuation lines and line ends (a
    first line that starts with SP or HT is a field of its own)."""
    crlf_only = block.count(b"\r") == block.count(b"\n") == block.count(b"\r\n")
    fields: list[bytes] = []
    start = 0
    for m in (_FIELD_END_CRLF if crlf_only else _FIELD_END).finditer(block):
        fields.append(block[start : m.end()])
        start = m.end()
    if start < len(block):
        fields.append(block[start:])
    return fields


def header_block_refusal(data: bytes, *, max_bytes: int, max_fields: int) -> str | None:
    """Why the header block of `data` (every line end a CRLF) is too large: more than
    `max_bytes` octets up to the first empty line (or the end), or more than `max_fields`
    fields; None when it is within both. Looks at no more than `max_bytes` octets, each scan
    in C."""
    if data.startswith(b"\r\n"):
        return None  # no header block at all
    end = data.find(b"\r\n\r\n", 0, max_bytes + 2)
    if end < 0 and len(data) > max_bytes:
        return (
            f"the header block (up to the first empty line) is more than {max_bytes} octets "
            f"(submission.maxHeaderBytes)"
        )
    head = data if end < 0 else data[: end + 2]
    # Every line end not followed by SP or HT ends a field; so does the end of the data.
    fields = head.count(b"\r\n") - head.count(b"\r\n ") - head.count(b"\r\n\t")
    if head and not head.endswith(b"\r\n"):
        fields += 1
    if fields > max_fields:
        return f"{fields} header fields, more than {max_fields} (submission.maxHeaderFields)"
    return None


def _field_name(raw: bytes) -> str:
    name, colon, _ = raw.partition(b":")
    return name.strip().decode("ascii", "replace").lower() if colon else ""


def _field_value(raw: bytes) -> str:
    value = raw.partition(b":")[2].decode("utf-8", "replace")
    return " ".join(value.split())


def has_internal_headers(data: bytes) -> bool:
    """The header block has an X-Mailfleet-* field (any case), which `add_headers` removes."""
    blank = end_of_headers(data)
    head = data if blank is None else data[: blank[0]]
    return INTERNAL_PREFIX.encode() in head.lower()


def add_headers(
    data: bytes,
    cfg: HeadersConfig,
    *,
    recipients: Sequence[str],
    message_id: str | None,
    token_key: bytes | None,
) -> HeaderResult:
    """`data` with the configured headers added at the end of its header block and its
    X-Mailfleet-* fields removed. Line ends follow the message's own (CRLF unless it uses LF).
    """
    found = end_of_headers(data)
    if found is None:  # a header block with no body
        head, blank, body = data, b"", b""
    else:
        start, end = found
        first = data.index(b"\n", start) + 1
        head, blank, body = data[:first], data[first:end], data[end:]
    if (
        cfg.list_unsubscribe is None
        and cfg.feedback_id is None
        and INTERNAL_PREFIX.encode() not in head.lower()
    ):
        return HeaderResult(data)
    eol = b"\n" if b"\n" in head and b"\r\n" not in head else b"\r\n"
    if head and not head.endswith(b"\n"):
        head += eol

    # The pool's templates own these fields; the sender's go (see the module's docstring).
    owned: set[str] = set()
    if cfg.client_headers == "replace":
        if cfg.list_unsubscribe is not None:
            owned |= {"list-unsubscribe", "list-unsubscribe-post"}
        if cfg.feedback_id is not None:
            owned.add("feedback-id")
    internal: dict[str, str] = {}
    kept: list[bytes] = []
    present: set[str] = set()
    replaced: dict[str, None] = {}  # in message order, once each
    for f in _split_fields(head):
        name = _field_name(f)
        if name.startswith(INTERNAL_PREFIX) and len(name) > len(INTERNAL_PREFIX):
            internal.setdefault(name[len(INTERNAL_PREFIX) :], _field_value(f))
        elif name in owned:
            replaced[name] = None
        else:
            kept.append(f)
            present.add(name)

    added: list[str] = []
    notes: list[str] = [
        f"{_CANONICAL[n]}: the sender's was removed (headers.clientHeaders: replace)"
        for n in replaced
    ]
    new: list[bytes] = []

    if cfg.list_unsubscribe is not None:
        tpl = cfg.list_unsubscribe
        distinct = {r.strip().strip("<>").lower() for r in recipients}
        used = set(_PLACEHOLDER.findall(tpl))
        unknown = sorted(used - _UNSUB_FIELDS)
        if "list-unsubscribe" in present:
            notes.append("List-Unsubscribe: the sender set one; theirs is kept")
        elif unknown:
            notes.append(f"List-Unsubscribe: unknown placeholder(s) {', '.join(unknown)}")
        elif used & _PERSONAL and len(distinct) != 1:
            notes.append(
                f"List-Unsubscribe: {len(distinct)} recipients; the template's "
                f"{' and '.join('{' + p + '}' for p in sorted(used & _PERSONAL))} "
                "names exactly one"
            )
        elif "token" in used and not token_key:
            notes.append("List-Unsubscribe: {token} needs a key (headers.tokenKeyFile)")
        elif "message_id" in used and not (message_id or "").strip("<> "):
            notes.append("List-Unsubscribe: {message_id} but the message has no Message-ID")
        else:
            recipient = recipients[0].strip().strip("<>") if len(distinct) == 1 else ""
            values = {
                "recipient": recipient,
                "token": unsubscribe_token(token_key, recipient) if token_key and recipient else "",
                "message_id": (message_id or "").strip().strip("<>"),
            }
            value = _render_unsubscribe(tpl, values)
            new.append(fold_header("List-Unsubscribe", value, eol))
            added.append("List-Unsubscribe")
            if cfg.one_click:
                if "list-unsubscribe-post" in present:
                    notes.append("List-Unsubscribe-Post: the sender set one; theirs is kept")
                elif not _has_https(value):
                    notes.append(
                        "List-Unsubscribe-Post: List-Unsubscribe has no https URI (RFC 8058 §3.1)"
                    )
                else:
                    new.append(
                        fold_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click", eol)
                    )
                    added.append("List-Unsubscribe-Post")

    if cfg.feedback_id is not None:
        if "feedback-id" in present:
            notes.append("Feedback-ID: the sender set one; theirs is kept")
        else:
            missing: list[str] = []

            def fill(p: re.Match[str]) -> str:
                name = p.group(1).lower()
                if name not in internal:
                    missing.append(name)
                    return ""
                return _feedback_value(internal[name])

            value = _PLACEHOLDER.sub(fill, cfg.feedback_id)
            if missing:
                # Gmail treats every field but the last (SenderId) as optional: send it with
                # the empty fields, and say which, since they are usually a sender's mistake.
                notes.append(
                    "Feedback-ID: no "
                    + ", ".join(f"X-Mailfleet-{n}" for n in missing)
                    + " header; left empty"
                )
            new.append(fold_header("Feedback-ID", value, eol))
            added.append("Feedback-ID")

    if not new and not internal and not replaced:
        return HeaderResult(data, (), tuple(notes), {})
    out = b"".join(kept) + b"".join(new) + blank + body
    return HeaderResult(out, tuple(added), tuple(notes), internal, tuple(replaced))
