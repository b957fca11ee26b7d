"""The pure limiters of the submission listener, with the time passed in."""

from __future__ import annotations

import bcrypt
import pytest

from mailfleet.mta.auth import UserDB, hash_password
from mailfleet.mta.limits import AuthLimiter, SessionLimiter, data_deadline
from mailfleet.mta.submission import reply_text


def test_session_limiter_per_client_and_total() -> None:
    s = SessionLimiter(max_total=3, max_per_client=2)
    assert s.open("a") is None and s.open("a") is None
    assert (s.open("a") or "").startswith("421 4.7.0")
    assert s.open("b") is None
    assert (s.open("c") or "").startswith("421 4.7.0")
    s.close("a")
    assert s.open("c") is None
    s.close("unknown")  # never opened: no effect
    assert s.total == 3


def test_auth_limiter_locks_after_max_failures_within_the_window() -> None:
    lim = AuthLimiter(max_failures=3, window=60, lockout=600)
    keys = ("ip:192.0.2.1", "user:app")
    assert not lim.failure(keys, 0) and not lim.failure(keys, 10)
    assert lim.failure(keys, 20)
    assert lim.locked(keys, 21) and lim.locked(("user:app",), 619)
    assert not lim.locked(keys, 621)
    # Failures spread wider than the window never lock.
    lim2 = AuthLimiter(max_failures=3, window=60, lockout=600)
    assert not any(lim2.failure(keys, t) for t in (0, 61, 122, 183))


def test_auth_limiter_forgets_expired_keys() -> None:
    lim = AuthLimiter(max_failures=2, window=60, lockout=120)
    for n in range(1000):
        lim.failure((f"user:guess{n}",), 0)
    assert len(lim) == 1000
    lim.failure(("user:late",), 1000)
    assert len(lim) == 1


def test_data_deadline_grows_with_data_up_to_the_cap() -> None:
    d = data_deadline(100.0, 0, grace=60, min_rate=500, max_duration=300)
    assert d == 160.0
    assert data_deadline(100.0, 50_000, grace=60, min_rate=500, max_duration=300) == 260.0
    assert data_deadline(100.0, 10**9, grace=60, min_rate=500, max_duration=300) == 400.0


def test_unknown_user_costs_a_bcrypt_run_and_long_passwords_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = UserDB({"app": hash_password("pw", rounds=4).encode()})
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed[:7])
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    assert not db.check("nobody", b"pw")
    # Against a dummy hash of the real users' cost: as long as a real check.
    assert calls == [b"$2b$04$"]
    assert not db.check("app", b"x" * 73) and not db.check("nobody", b"x" * 73)
    assert len(calls) == 1  # refused before bcrypt, for every user alike
    assert db.check("app", b"pw")


def test_reply_text_keeps_a_reply_on_one_line() -> None:
    # A reason stored before input was checked (or by another tool) is made safe on output.
    assert reply_text("x)\r\n250 2.1.5 Ok\r\n550 (y") == "x) 250 2.1.5 Ok 550 (y"
    assert reply_text("caf\u00e9\x00" + "z" * 300, 20) == "caf " + "z" * 16
