"""SMTP AUTH users: a file of `user:bcrypt-hash` lines, the format `htpasswd -B` writes, each
optionally with a third field, the From domains that user may send (and have signed) for:
`user:bcrypt-hash:example.com,news.example.org`, or `*` for any."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt


class CredentialsError(Exception):
    pass


# bcrypt reads at most 72 bytes of a password (and the library refuses longer ones); a longer
# password is refused before bcrypt sees it, the same way for every user.
MAX_PASSWORD_BYTES = 72
# bcrypt runs here, never on the event loop; two threads bound what parallel guessers can take
# from the engine (bcrypt releases the GIL, so the loop keeps serving meanwhile).
_BCRYPT = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bcrypt")


def hash_password(password: str, rounds: int = 12) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


# A domain in the third field: A-labels (or U-labels, converted), dot-separated; or "*".
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}$")


def a_label(domain: str) -> str:
    """`domain` lower case, without a final dot, as A-labels where it can be."""
    d = domain.strip().rstrip(".").lower()
    try:
        return d.encode("idna").decode("ascii")
    except UnicodeError:
        return d


def parse_users_file(text: str, source: str) -> tuple[dict[str, bytes], dict[str, frozenset[str]]]:
    """(user -> bcrypt hash, user -> the From domains listed in its third field)."""
    users: dict[str, bytes] = {}
    domains: dict[str, frozenset[str]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, rest = line.partition(":")
        # bcrypt hashes hold no ':' ($2b$12$ and base64 of ./A-Za-z0-9): a third field is clear.
        hashed, _, listed = rest.partition(":")
        if not sep or not user or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            # Never echo the line: it may hold a password typed in clear by mistake.
            raise CredentialsError(
                f"{source}:{n}: expected 'user:bcrypt-hash' or 'user:bcrypt-hash:domain,...'"
                " (make one with `mailfleet mta hash-password` or `htpasswd -nB user`)"
            )
        users[user] = hashed.replace("$2y$", "$2b$", 1).encode()
        if listed.strip():
            names = {a_label(d) for d in listed.split(",") if d.strip()}
            bad = sorted(d for d in names if d != "*" and not _DOMAIN.match(d))
            if bad:
                raise CredentialsError(
                    f"{source}:{n}: user {user}: the third field lists the From domains the"
                    f" user may send for (comma-separated domain names, or *); not a domain:"
                    f" {bad[0][:64]!r}"
                )
            domains[user] = frozenset(names)
    return users, domains


def parse_users(text: str, source: str) -> dict[str, bytes]:
    return parse_users_file(text, source)[0]


def domain_allowed(domain: str, allowed: frozenset[str]) -> bool:
    """`domain` is one of `allowed`, or under one of them ("*": any). Subdomains count as the
    pool's signer counts them: a key for example.com signs news.example.com (relaxed
    alignment), so a user who may send for example.com may for news.example.com too."""
    if "*" in allowed:
        return True
    d = a_label(domain)
    return any(d == a or d.endswith("." + a) for a in allowed)


class UserDB:
    """Checks passwords; a successful check is remembered (keyed by a salted digest, never the
    password) so that a client re-authenticating on every connection does not cost a bcrypt run
    each time. An unknown user costs one bcrypt run too (against a dummy hash of the same cost
    as the real ones), so the time of the answer does not tell which users exist."""

    def __init__(
        self, users: dict[str, bytes], sender_domains: dict[str, frozenset[str]] | None = None
    ) -> None:
        self._users = users
        self._sender_domains = sender_domains or {}
        self._salt = os.urandom(16)
        self._ok: set[bytes] = set()
        self._dummy: bytes | None = None
        self._dummy_lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path) -> UserDB:
        try:
            text = path.read_text()
        except OSError as e:
            raise CredentialsError(f"{path}: cannot read the users file: {e.strerror}") from None
        except UnicodeDecodeError:
            raise CredentialsError(f"{path}: the users file is not UTF-8 text") from None
        return cls(*parse_users_file(text, str(path)))

    def sender_domains(self, user: str) -> frozenset[str]:
        """The From domains `user` may send for: its file's third field; without one, the
        domain of its login when the login is an address (news@example.com: example.com), else
        none. Safe by default: a user's credentials cannot have another tenant's domain signed
        with the pool's keys unless the users file says so (`*` allows any)."""
        listed = self._sender_domains.get(user)
        if listed is not None:
            return listed
        _, at, domain = user.rpartition("@")
        return frozenset({a_label(domain)}) if at and domain else frozenset()

    def may_send_for(self, user: str, domain: str) -> bool:
        return domain_allowed(domain, self.sender_domains(user))

    def __len__(self) -> int:
        return len(self._users)

    def _dummy_hash(self) -> bytes:
        with self._dummy_lock:
            if self._dummy is None:
                costs = sorted(int(h[4:6]) for h in self._users.values() if h[4:6].isdigit())
                rounds = costs[len(costs) // 2] if costs else 12
                self._dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(rounds))
            return self._dummy

    def check(self, user: str, password: bytes) -> bool:
        """Blocking (bcrypt): call it from a thread, as `verify` does."""
        if len(password) > MAX_PASSWORD_BYTES:
            return False
        hashed = self._users.get(user)
        if hashed is None:
            bcrypt.checkpw(password, self._dummy_hash())
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

    async def verify(self, user: str, password: bytes) -> bool:
        """`check` on the bcrypt threads, so the event loop keeps serving."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_BCRYPT, self.check, user, password)
