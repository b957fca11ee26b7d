"""Reading the files a config names without trusting them: a config (pushed through the admin
API, or edited) may name a FIFO, a device or a huge file where a key or a token should be. A
FIFO would block whoever opens it until a writer comes, /dev/zero would fill the memory: each
file must be a regular file of a bounded size, checked before it is opened and again once it is
open (the path may be swapped in between), and it is opened without blocking."""

from __future__ import annotations

import os
import stat
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB

# The most each kind of file may hold: far above any real one, far below what hurts.
TOKEN_MAX = 4 * KiB
DKIM_KEY_MAX = 64 * KiB
TOKEN_KEY_MAX = 64 * KiB
TLS_FILE_MAX = 1 * MiB
USERS_FILE_MAX = 16 * MiB
CONFIG_FILE_MAX = 16 * MiB


class UnsafeFile(ValueError):
    """A named file that is not a regular file of a bounded size; the message names the field."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _check(st: os.stat_result, path: Path, field: str, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"{field}: {path} is {_kind(st.st_mode)}, expected a regular file")
    if st.st_size > limit:
        raise UnsafeFile(
            f"{field}: {path} has {st.st_size} bytes, more than the {limit} such a file may have"
        )


def check_file(path: Path, field: str, limit: int) -> None:
    """UnsafeFile when `path` exists and is not a regular file of at most `limit` bytes (a
    missing or unreadable file is left to whoever reads it, which says so)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    _check(st, path, field, limit)


def read_file(path: Path, field: str, limit: int, *, nofollow: bool = False) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. UnsafeFile names `field` when it
    is something else; OSError when it cannot be read."""
    _check(os.stat(path, follow_symlinks=not nofollow), path, field, limit)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    fd = os.open(path, flags)
    try:
        _check(os.fstat(fd), path, field, limit)
        chunks = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 64 * KiB))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:  # it grew since fstat
        raise UnsafeFile(f"{field}: {path} has more than the {limit} bytes such a file may have")
    return data


def read_token(path: Path, field: str) -> bytes:
    """A bearer token from a file (surrounding whitespace ignored): at least 16 characters of
    printable ASCII, as an Authorization header carries it. ValueError names the field."""
    try:
        token = read_file(path, field, TOKEN_MAX).strip()
    except OSError as e:
        raise ValueError(f"{field} {path}: cannot read it: {e.strerror}") from None
    if len(token) < 16:
        raise ValueError(f"{field} {path}: the token must be at least 16 characters")
    if not all(0x21 <= b <= 0x7E for b in token):
        raise ValueError(f"{field} {path}: the token must be one word of printable ASCII")
    return token
