"""Fuzzing the SMTP command path of a real engine: random command lines (bare CR, NUL, invalid
UTF-8, over-long lines, real verbs with random arguments) sent to the submission listener. Every
reply must be a valid SMTP reply, the engine never hangs a session, and it keeps serving: a
clean message is still accepted at the end."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from fixtures.engine import EngineProc, message
from fixtures.rawsmtp import RawSMTP
from fixtures.smtppeers import RecordingMX
from hypothesis import given
from hypothesis import strategies as st

REPLY_LINE = re.compile(r"^[2-5]\d\d[ -]")
VERBS = [
    b"EHLO",
    b"HELO",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"VRFY",
    b"HELP",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"BDAT",
    b"X",
]
ARGS = st.lists(
    st.sampled_from(list(b'<>@." :\\[]=abcXYZ09-\r\x00\x7f\xff\xc3\xa9')), max_size=40
).map(bytes) | st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))
LINE = st.tuples(st.sampled_from(VERBS), st.sampled_from([b"", b" "]), ARGS).map(b"".join) | (
    st.binary(max_size=80).map(lambda b: b.replace(b"\n", b""))
)


@pytest.fixture
def engine(mta_engine: Callable[..., EngineProc]) -> Iterator[tuple[EngineProc, RecordingMX]]:
    with RecordingMX("127.0.0.1") as mx:
        eng = mta_engine(
            {
                "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
                "retry": {"initial": "1s"},
                "submission": {"commandTimeout": "10s", "maxSessionsPerClient": 200},
            }
        )
        yield eng, mx


def _run(c: RawSMTP, lines: list[bytes]) -> None:
    for line in lines:
        c.send(line + b"\r\n")
        reply = c.reply()  # raises on anything that is not a reply; times out on a hang
        for ln in reply.split("\r\n"):
            assert REPLY_LINE.match(ln), reply
        code = reply[:3]
        if code == "354":  # in DATA: end it, and its reply must be valid too
            c.send(b".\r\n")
            end = c.reply()
            assert REPLY_LINE.match(end), end
        elif code == "334":  # an AUTH challenge: cancel it
            c.send(b"*\r\n")
            assert REPLY_LINE.match(c.reply())
        elif code in ("221", "421") or reply.startswith("220 Ready to start TLS"):
            return


def test_random_command_lines_get_valid_replies(
    engine: tuple[EngineProc, RecordingMX],
) -> None:
    eng, mx = engine

    @given(lines=st.lists(LINE, min_size=1, max_size=12))
    def session(lines: list[bytes]) -> None:
        with RawSMTP("127.0.0.1", eng.smtp_port, timeout=15) as c:
            assert c.greeting.startswith("220")
            try:
                _run(c, lines)
            except ConnectionError:
                pass  # the server closed after a 421/221, or a line it could not take
            except TimeoutError as e:
                raise AssertionError(f"no reply within 15 s to {lines!r}") from e

    session()
    # The engine still serves, and nothing in the fuzzing raised inside it.
    eng.send("app@example.test", ["x@example.org"], message("after fuzzing"))
    mx.wait_for(1)
    assert "Traceback" not in eng.log()
