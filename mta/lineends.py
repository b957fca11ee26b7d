"""Line ends and line lengths of message data (RFC 5321 §2.3.8 and §4.5.3.1.6).

Each check is a few passes of `bytes` methods in C over the message and nothing per line: a
100 KB message has 1,300 lines, and a Python step per line costs more than the whole check.
"""

from __future__ import annotations

import re

_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")
_CR_ALONE = re.compile(rb"\r(?!\n)")
_DOTS_ONE_BY_ONE = 16


def has_bare_newline(data: bytes) -> bool:
    """A CR or LF that is not part of a CRLF pair (RFC 5321 §2.3.8 forbids them).

    As many CRs as LFs, and every CR followed by an LF, pairs every LF too. (Counting CRLFs
    instead is a two-octet search, slower than both single-octet counts together.)
    """
    lfs = data.count(b"\n")
    return data.count(b"\r") != lfs or _CR_ALONE.search(data) is not None


def normalize_newlines(data: bytes) -> bytes:
    """Every bare CR and bare LF made a CRLF, as the receiving side would read them."""
    return _ANY_NEWLINE.sub(b"\r\n", data)


def crlf_only(data: bytes) -> bytes:
    """`data` with every line end a CRLF: itself when it is already."""
    return normalize_newlines(data) if has_bare_newline(data) else data


def has_long_line(data: bytes, limit: int) -> bool:
    """Some line of `data` is longer than `limit` octets; lines are what CRLFs separate (as
    `longest_line` counts them), so a bare LF does not end one.

    Instead of splitting, each step looks backwards for the last CRLF within the longest a line
    may be from the current line's start, and jumps past it: a step costs a few octets of
    search and moves about `limit` octets on.
    """
    window = limit + 2  # the longest allowed line with its CRLF
    start = 0
    while len(data) - start > window:
        end = data.rfind(b"\r\n", start, start + window)
        if end < 0:
            return True
        start = end + 2
    return longest_line(data[start:]) > limit


def end_of_headers(data: bytes) -> tuple[int, int] | None:
    """Where the first empty line is: (start, end) of the leftmost match of
    ``\\r?\\n\\r?\\n`` in `data` (the line end of the last header line and the empty line), or
    None. Two memmem scans, where the regex costs a step per octet (14 ms for a 1 MB header).

    The match holds a "\\n\\r\\n" or "\\n\\n" (the earlier of the two), and the CR before it if any.
    """
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n", 0, len(data) if crlf < 0 else crlf + 2)
    at = lf if lf >= 0 else crlf
    if at < 0:
        return None
    start = at - 1 if at > 0 and data[at - 1] == 0x0D else at
    return start, at + (2 if at == lf else 3)


def has_dot_line(data: bytes) -> bool:
    """Some line of `data` after the first starts with a dot (`b"\\r\\n." in data`).

    Headers have dots (domains) and base64 bodies none: the first few dots are looked at one by
    one with memchr, and only a message with many of them pays for the two-octet search.
    """
    at = data.find(b".", 2)
    for _ in range(_DOTS_ONE_BY_ONE):
        if at < 0:
            return False
        if data[at - 2 : at] == b"\r\n":
            return True
        at = data.find(b".", at + 1)
    return b"\r\n." in data


def longest_line(data: bytes) -> int:
    """The longest line of `data` (ending in CRLF), without its CRLF."""
    return max(map(len, data.split(b"\r\n")))
