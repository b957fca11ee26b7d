"""Fuzzing header parsing with folded headers of every size, from none to a few megabytes (issue
21: a 1.2 MB field of 300,000 continuation lines stalled the engine). Each parser gives what a
plain line-by-line definition gives, raises only its documented exception, and signing a long
folded field gives a signature dkimpy verifies. Sizes are drawn as repeat counts, so a large
example costs its parsing, not its generation; `bench/headers.py` shows the time per byte."""

from __future__ import annotations

import re

import dkim
from fixtures.keys import RSA_KEY
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailfleet.mta.config import DKIMConfig, HeadersConfig
from mailfleet.mta.dkim import DKIMMessageError, DKIMSigner, split_message
from mailfleet.mta.dkimkeys import dns_txt_record
from mailfleet.mta.headers import _field_name, _split_fields, add_headers, header_block_refusal

_LINE_END = re.compile(rb"\r?\n")
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")


# -- plain definitions: one line at a time, continuation lines collected in lists ------------------


def plain_fields(block: bytes) -> list[bytes]:
    fields: list[list[bytes]] = []
    for line in block.splitlines(keepends=True):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1].append(line)
        else:
            fields.append([line])
    return [b"".join(f) for f in fields]


def plain_split_message(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's rfc822_parse (an mbox From line skipped), with lists instead of `+=`."""
    if message.startswith((b"\r\n", b"\n")):
        return [], _LINE_END.sub(b"\r\n", message[2 if message[0] == 0x0D else 1 :])
    m = re.search(rb"\r?\n\r?\n", message)
    head, body = (message, b"") if m is None else (message[: m.start()], message[m.end() :])
    names: list[bytes] = []
    values: list[list[bytes]] = []
    for line in _LINE_END.split(head):
        if not line:
            break
        if line[0] in (0x09, 0x20):
            if not values:
                raise DKIMMessageError("message starts with a continuation line")
            values[-1].append(line + b"\r\n")
            continue
        name = _FIELD_NAME.match(line)
        if name is not None:
            names.append(name.group(1))
            values.append([line[name.end() :] + b"\r\n"])
        elif not line.startswith(b"From "):
            raise DKIMMessageError(f"unexpected characters in header line: {line[:80]!r}")
    headers = [[n, b"".join(v)] for n, v in zip(names, values, strict=True)]
    return headers, _LINE_END.sub(b"\r\n", body)


# -- folded header blocks of every size ----------------------------------------------------------

names = st.sampled_from(
    [b"Subject", b"From", b"To", b"X-Mailfleet-Campaign", b"Feedback-ID", b"List-Unsubscribe",
     b"Received", b"x", b"From ", b" "]
)  # fmt: skip
chunk = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
ends = st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"])
# Continuation lines of one field: a few, or 1 to 131,072 (up to a few MB), every power of 2.
few = st.integers(0, 40)
many = st.integers(0, 17).map(lambda k: 2**k)


@st.composite
def folded_field(draw: st.DrawFn, repeats: st.SearchStrategy[int] = few) -> bytes:
    first = draw(names) + b":" + draw(chunk) + draw(ends)
    cont = draw(st.sampled_from([b" ", b"\t", b"  "])) + draw(chunk) + draw(ends)
    return first + cont * draw(repeats)


@st.composite
def messages(draw: st.DrawFn, crlf: bool = False) -> bytes:
    fields = draw(st.lists(folded_field(), max_size=10))
    if draw(st.booleans()):  # one field of any size among them
        fields.insert(draw(st.integers(0, len(fields))), draw(folded_field(many)))
    block = b"".join(fields)
    message = block + draw(st.sampled_from([b"\r\n", b"\n", b""])) + draw(chunk) + b"\r\n"
    return re.sub(rb"\r\n|\r|\n", b"\r\n", message) if crlf else message


BIG = b"From: a@b\r\nX-Mailfleet-Campaign: a\r\n" + b" a\r\n" * 300_000 + b"\r\nbody\r\n"


@given(messages() | st.binary(max_size=300))
@example(BIG)
def test_split_fields_is_the_plain_definition(message: bytes) -> None:
    fields = _split_fields(message)
    assert fields == plain_fields(message)
    assert b"".join(fields) == message


@given(messages() | st.binary(max_size=300))
@example(BIG)
def test_split_message_is_the_plain_definition(message: bytes) -> None:
    try:
        expected: object = plain_split_message(message)
    except DKIMMessageError as e:
        expected = str(e)
    try:
        got: object = split_message(message)
    except DKIMMessageError as e:
        got = str(e)
    assert got == expected


@given(
    messages(crlf=True),
    st.integers(1, 5000) | st.integers(1024, 4 * 1024 * 1024),
    st.integers(1, 50) | st.integers(10, 5000),
)
@example(BIG, 1024 * 1024, 1000)
def test_header_block_refusal_is_the_plain_measure(
    message: bytes, max_bytes: int, max_fields: int
) -> None:
    got = header_block_refusal(message, max_bytes=max_bytes, max_fields=max_fields)
    if message.startswith(b"\r\n"):
        assert got is None
        return
    head = message.split(b"\r\n\r\n", 1)[0] + b"\r\n" if b"\r\n\r\n" in message else message
    if len(head) > max_bytes:
        assert got is not None and str(max_bytes) in got and "maxHeaderBytes" in got
    elif len(plain_fields(head)) > max_fields:
        assert got is not None and got.startswith(f"{len(plain_fields(head))} header fields")
    else:
        assert got is None


CONFIGS = [
    HeadersConfig(feedback_id="{campaign}:mf"),
    HeadersConfig(feedback_id="{campaign}:mf", client_headers="keep"),
    HeadersConfig(list_unsubscribe="<https://u.example/{message_id}>", feedback_id="{x}:mf"),
    HeadersConfig(),
]


@given(messages(crlf=True), st.sampled_from(CONFIGS))
@example(BIG, CONFIGS[0])
def test_add_headers_keeps_every_other_field_in_order(message: bytes, cfg: HeadersConfig) -> None:
    out = add_headers(message, cfg, recipients=["r@example.org"], message_id="q1", token_key=None)
    if not out.changed:
        assert out.data == message
        return
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    owned = {"feedback-id"} if cfg.feedback_id else set()
    if cfg.list_unsubscribe:
        owned |= {"list-unsubscribe", "list-unsubscribe-post"}
    if cfg.client_headers == "keep":
        owned = set()
    kept = [
        f
        for f in plain_fields(head)
        if not _field_name(f).startswith("x-mailfleet-") or _field_name(f) == "x-mailfleet-"
        if _field_name(f) not in owned
    ]
    assert out.data.startswith(b"".join(kept))
    assert out.data.endswith(message[len(head) :])


def _verify(signed: bytes) -> bool:
    record = dns_txt_record(RSA_KEY).encode()

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return (
            record if name == f"{RSA_KEY.selector}._domainkey.{RSA_KEY.domain}.".encode() else b""
        )

    return bool(dkim.verify(signed, dnsfunc=dnsfunc))


_SIGNER: list[DKIMSigner] = []  # one, built at first use (loading the key takes ~70 ms)


# dkimpy's own parse is quadratic in a field's continuation lines: kept to a thousand here; and
# its verification takes ~70 ms, so this one runs a sixth of the profile's examples.
@settings(max_examples=max(10, settings.default.max_examples // 6))
@given(
    st.integers(0, 10).map(lambda k: 2**k - 1) | st.integers(0, 20),
    st.binary(min_size=1, max_size=60).map(lambda b: re.sub(rb"[\x00-\x20\x7f-\xff]", b"x", b)),
)
def test_long_folded_fields_are_signed_correctly(lines: int, word: bytes) -> None:
    message = (
        f"From: <a@{RSA_KEY.domain}>\r\nTo: <b@example.org>\r\n".encode()
        + b"Subject: s\r\n"
        + b"\t" * (lines > 0)
        + b"\r\n\t".join([word] * lines)
        + b"\r\n" * (lines > 0)
        + b"\r\nbody\r\n"
    )
    if not _SIGNER:
        _SIGNER.append(DKIMSigner(DKIMConfig(keys=[RSA_KEY])))
    result = _SIGNER[0].sign_result(message, crlf=True)
    assert result.header and _verify(result.header + message)
