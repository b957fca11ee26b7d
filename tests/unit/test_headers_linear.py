"""Header parsing in linear time (issue 21, item 1): `headers._split_fields` and
`dkim.split_message` give exactly what their former line-by-line definitions gave (kept here,
quadratic on a long folded field), on random folded header blocks; `header_block_refusal`
counts fields as `_split_fields` splits them and measures the block as `add_headers` cuts it."""

from __future__ import annotations

import re

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailfleet.mta.dkim import DKIMMessageError, split_message
from mailfleet.mta.headers import _split_fields, header_block_refusal
from mailfleet.mta.lineends import end_of_headers

# -- the former definitions, verbatim but for names ----------------------------------------------

_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")
_LINE_END = re.compile(rb"\r?\n")


def old_split_fields(block: bytes) -> list[bytes]:
    lines = block.splitlines(keepends=True)
    fields: list[bytes] = []
    for line in lines:
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _crlf_only(data: bytes) -> bool:
    return data.count(b"\n") == data.count(b"\r\n")


def _crlf(data: bytes) -> bytes:
    return data if _crlf_only(data) else _LINE_END.sub(b"\r\n", data)


def old_split_message(message: bytes, *, crlf: bool = False) -> tuple[list[list[bytes]], bytes]:
    if message.startswith((b"\r\n", b"\n")):
        body = message[2 if message[0] == 0x0D else 1 :]
        return [], body if crlf else _crlf(body)
    m = _END_OF_HEADERS.search(message)
    if m is None:
        head, body = message, b""
    else:
        head, body = message[: m.start()], message[m.end() :]
    headers: list[list[bytes]] = []
    lines = head.split(b"\r\n") if _crlf_only(head) else _LINE_END.split(head)
    for line in lines:
        if not line:
            break
        if line[0] in (0x09, 0x20):
            if not headers:
                raise DKIMMessageError("message starts with a continuation line")
            headers[-1][1] += line + b"\r\n"
            continue
        name = _FIELD_NAME.match(line)
        if name is not None:
            headers.append([name.group(1), line[name.end() :] + b"\r\n"])
        elif not line.startswith(b"From "):
            raise DKIMMessageError(f"unexpected characters in header line: {line[:80]!r}")
    return headers, body if crlf else _crlf(body)


def _outcome(fn: object, *args: object, **kw: object) -> object:
    try:
        return fn(*args, **kw)  # type: ignore[operator]
    except DKIMMessageError as e:
        return ("DKIMMessageError", str(e))


# -- random folded header blocks -------------------------------------------------------------------

_text = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
line_starts = st.sampled_from(
    [b"Subject:", b"From: a@b", b"X-Mailfleet-Id:", b"Name :", b" ", b"\t", b"  ", b"From ",
     b"no colon", b"", b"\x00:", b"From:"]
)  # fmt: skip
line_ends = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r"])
lines = st.tuples(line_starts, _text, line_ends).map(b"".join)


@st.composite
def folded_blocks(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(lines, max_size=30))
    # now and then a long run of continuation lines in one field
    if draw(st.booleans()):
        at = draw(st.integers(0, len(parts)))
        cont = draw(st.sampled_from([b" a\r\n", b"\tb\r\n", b" \r\n", b" x\n"]))
        parts[at:at] = [b"F: v\r\n", cont * draw(st.integers(1, 500))]
    block = b"".join(parts)
    if draw(st.booleans()):
        block += draw(st.sampled_from([b"\r\n", b"\n"])) + draw(st.binary(max_size=40))
    return block


crlf_blocks = folded_blocks().map(lambda b: re.sub(rb"\r\n|\r|\n", b"\r\n", b))


@settings(deadline=None)  # a shared 2-core machine: no per-example time limit
@given(folded_blocks() | st.binary(max_size=200))
def test_split_fields_equals_the_line_by_line_definition(block: bytes) -> None:
    assert _split_fields(block) == old_split_fields(block)


@settings(deadline=None)  # a shared 2-core machine: no per-example time limit
@given(folded_blocks() | st.binary(max_size=200))
def test_split_message_equals_the_line_by_line_definition(message: bytes) -> None:
    assert _outcome(split_message, message) == _outcome(old_split_message, message)
    if _crlf_only(message):
        assert _outcome(split_message, message, crlf=True) == _outcome(
            old_split_message, message, crlf=True
        )


@settings(deadline=None)  # a shared 2-core machine: no per-example time limit
@given(crlf_blocks)
def test_split_message_is_dkimpys_parse_on_valid_blocks(message: bytes) -> None:
    try:
        ours = split_message(message)
    except DKIMMessageError:
        return
    # dkimpy skips a continuation line at the very start instead of raising; ours raises then.
    assert ours == dkim.rfc822_parse(message)


@settings(deadline=None)  # a shared 2-core machine: no per-example time limit
@given(crlf_blocks, st.integers(10, 2000), st.integers(1, 60))
def test_header_block_refusal_counts_and_measures_as_the_parsers_do(
    message: bytes, max_bytes: int, max_fields: int
) -> None:
    refusal = header_block_refusal(message, max_bytes=max_bytes, max_fields=max_fields)
    if message.startswith(b"\r\n"):
        assert refusal is None
        return
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    if len(head) > max_bytes:
        assert refusal is not None and "submission.maxHeaderBytes" in refusal
        assert f"more than {max_bytes} octets" in refusal
    elif len(_split_fields(head)) > max_fields:
        assert refusal == (
            f"{len(_split_fields(head))} header fields, more than {max_fields}"
            " (submission.maxHeaderFields)"
        )
    else:
        assert refusal is None


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"A: 1\r\n 2\r\n\r\nbody", None),
        (b"A: 1\r\nB: 2\r\nC: 3\r\n\r\n", "3 header fields, more than 2"),
        (b"A: 1\r\n\tB: 2\r\n C: 3\r\n\r\n", None),
        (b"A: 1\r\nB: 2\r\nC", "3 header fields, more than 2"),  # no empty line, no line end
        (b"\r\nA:\r\nB:\r\nC:\r\n", None),  # no header block: all body
        (b" A: 1\r\nB: 2\r\n\r\n", None),  # a first line starting with SP is a field
    ],
)
def test_header_block_refusal_examples(message: bytes, expected: str | None) -> None:
    got = header_block_refusal(message, max_bytes=1024, max_fields=2)
    assert got == expected if expected is None else got is not None and got.startswith(expected)


def test_header_block_refusal_size_bound_is_inclusive() -> None:
    block = b"A: " + b"x" * 93 + b"\r\n"  # 98 octets
    assert header_block_refusal(block + b"\r\nbody", max_bytes=98, max_fields=5) is None
    assert header_block_refusal(block + b"\r\nbody", max_bytes=97, max_fields=5) is not None
    assert header_block_refusal(block, max_bytes=98, max_fields=5) is None
    assert header_block_refusal(block, max_bytes=97, max_fields=5) is not None


def test_a_long_folded_field_is_one_field_either_way() -> None:
    field = b"X-Mailfleet-Campaign: a\r\n" + b" a\r\n" * 300_000
    message = b"From: a@b\r\n" + field + b"\r\nbody\r\n"
    assert _split_fields(b"From: a@b\r\n" + field) == [b"From: a@b\r\n", field]
    headers, body = split_message(message)
    assert [h[0] for h in headers] == [b"From", b"X-Mailfleet-Campaign"]
    assert headers[1][1] == field[len(b"X-Mailfleet-Campaign:") :]
    assert body == b"body\r\n"


@settings(deadline=None)
@given(
    st.lists(st.sampled_from([b"\r", b"\n", b"a", b" ", b"\r\n", b"\n\r"]), max_size=30).map(
        b"".join
    )
    | folded_blocks()
)
def test_end_of_headers_is_the_regex_search(data: bytes) -> None:
    m = _END_OF_HEADERS.search(data)
    assert end_of_headers(data) == (None if m is None else m.span())
