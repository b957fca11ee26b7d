"""Line-end and line-length checks over their input space, against the plain definitions."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from mailfleet.mta.lineends import (
    crlf_only,
    has_bare_newline,
    has_dot_line,
    has_long_line,
    longest_line,
    normalize_newlines,
)

# Short runs of a few kinds of octet, so that line ends, long lines and windows' edges meet.
_RUNS = st.lists(
    st.tuples(st.sampled_from([b"a", b"\r\n", b"\r", b"\n", b" ", b"."]), st.integers(1, 40)),
    max_size=80,
).map(lambda runs: b"".join(chunk * n for chunk, n in runs))


@given(_RUNS, st.integers(0, 60))
def test_has_long_line_is_longest_line_over_the_limit(data: bytes, limit: int) -> None:
    assert has_long_line(data, limit) == (longest_line(data) > limit)


@given(st.integers(0, 3000), st.integers(1, 1100))
def test_has_long_line_at_smtp_sizes(longest: int, others: int) -> None:
    """One line of `longest` octets among many of `others`, against the 998-octet limit."""
    lines = [b"x" * others] * 50
    lines.insert(len(lines) // 3, b"y" * longest)
    data = b"\r\n".join(lines) + b"\r\n"
    assert has_long_line(data, 998) == (max(longest, others) > 998)


def test_a_line_of_exactly_the_limit_is_not_long() -> None:
    assert not has_long_line((b"x" * 998 + b"\r\n") * 200, 998)
    assert has_long_line((b"x" * 998 + b"\r\n") * 100 + b"x" * 999 + b"\r\n", 998)
    assert has_long_line(b"x" * 999, 998)  # the last line need not end in CRLF
    assert not has_long_line(b"", 0)


def test_a_bare_lf_does_not_end_a_line() -> None:
    assert has_long_line((b"x" * 600 + b"\n") * 3, 998)


@given(_RUNS)
def test_crlf_only_leaves_no_bare_line_end(data: bytes) -> None:
    fixed = crlf_only(data)
    assert not has_bare_newline(fixed)
    assert fixed == normalize_newlines(data)
    if not has_bare_newline(data):
        assert fixed is data  # nothing copied when nothing is wrong


@given(_RUNS)
def test_has_bare_newline_is_a_cr_or_lf_outside_a_pair(data: bytes) -> None:
    assert has_bare_newline(data) == bool(re.search(rb"\r(?!\n)|(?<!\r)\n", data))


@given(_RUNS)
def test_has_dot_line_is_a_crlf_followed_by_a_dot(data: bytes) -> None:
    assert has_dot_line(data) == (b"\r\n." in data)


@given(st.integers(0, 40), st.integers(0, 40), st.booleans())
def test_has_dot_line_past_many_dots(before: int, after: int, dot_line: bool) -> None:
    """Dots in the header and the text, then (or not) a line that starts with one."""
    data = b"From: a@b.example\r\n\r\n" + b"x. " * before + b"\r\n"
    data += (b"." if dot_line else b"x") + b"y\r\n" + b"z." * after
    assert has_dot_line(data) == dot_line
