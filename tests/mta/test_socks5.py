"""Egress through a real SOCKS5 proxy (Dante): mail leaves from the address the proxy binds."""

from __future__ import annotations

from collections.abc import Callable

from fixtures.engine import EngineProc, message
from fixtures.procs import free_port
from fixtures.smtppeers import RecordingMX


def test_mail_leaves_from_the_proxy_address(
    mta_engine: Callable[..., EngineProc], dante: str
) -> None:
    with RecordingMX("127.0.0.1") as mx:
        eng = mta_engine(
            {
                "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
                "delivery": {
                    "sourceIPs": [{"address": "127.0.0.5", "hostname": "out5.mta.test"}],
                    "egress": {"mode": "socks5", "proxy": dante},
                },
            }
        )
        for i in range(3):
            eng.send("app@example.test", [f"r{i}@example.org"], message(f"via socks {i}"))
        got = mx.wait_for(3)
        assert {m.peer_ip for m in got} == {"127.0.0.5"}
        assert {m.helo for m in got} == {"out5.mta.test"}
        eng.wait_until(
            lambda: eng.metric("mailfleet_delivery_attempts_total", source_ip="127.0.0.5") == 3,
            what="three attempts counted for 127.0.0.5",
        )


def test_a_dead_proxy_defers_and_says_why(mta_engine: Callable[..., EngineProc]) -> None:
    with RecordingMX("127.0.0.1") as mx:
        eng = mta_engine(
            {
                "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
                "retry": {"initial": "1h"},
                "delivery": {
                    "sourceIPs": [
                        {"address": "127.0.0.5", "proxy": f"socks5://127.0.0.1:{free_port()}"}
                    ]
                },
            }
        )
        eng.send("app@example.test", ["r@example.org"], message("no proxy"))
        eng.wait_until(
            lambda: eng.metric("mailfleet_delivery_attempts_total", result="deferred") == 1,
            what="a deferred attempt",
        )
        attempt = next(ln for ln in eng.log_lines() if ln.get("msg") == "delivery attempt")
        assert "SOCKS5 proxy" in attempt["reply"]
        assert mx.messages() == []
