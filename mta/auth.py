"""SMTP AUTH users: a file of `user:bcrypt-hash` lines, the format `htpasswd -B` writes."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import bcrypt


class CredentialsError(Exception):
    pass


def hash_password(password: str, rounds: int = 12) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def parse_users(text: str, source: str) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            # Never echo the line: it may hold a password typed in clear by mistake.
            raise CredentialsError(
                f"{source}:{n}: expected 'user:bcrypt-hash' (make one with"
                " `mailfleet mta hash-password` or `htpasswd -nB user`)"
            )
        users[user] = hashed.replace("$2y$", "$2b$", 1).encode()
    return users


class UserDB:
    """Checks passwords; a successful check is remembered (keyed by a salted digest, never the
    password) so that a client re-authenticating on every connection does not cost a bcrypt run
    on the event loop each time."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._salt = os.urandom(16)
        self._ok: set[bytes] = set()

    @classmethod
    def from_file(cls, path: Path) -> UserDB:
        try:
            text = path.read_text()
        except OSError as e:
            raise CredentialsError(f"{path}: cannot read the users file: {e.strerror}") from None
        return cls(parse_users(text, str(path)))

    def __len__(self) -> int:
        return len(self._users)

    def check(self, user: str, password: bytes) -> bool:
        hashed = self._users.get(user)
        if hashed is None:
            return False
        key = hmac.new(
            self._salt, user.encode() + b"\0" + password + b"\0" + hashed, hashlib.sha256
        )
        digest = key.digest()
        if digest in self._ok:
            return True
        if bcrypt.checkpw(password, hashed):
            self._ok.add(digest)
            return True
        return False
