"""A provider policy's perIP.maxMessagesPerConnection is how many messages one connection to that
provider carries; delivery.maxMessagesPerConnection stays the engine-wide cap. Counted where a
user would count them: the sessions the receiving MX sees."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fixtures.engine import EngineProc, message
from fixtures.smtppeers import RecordingMX

MESSAGES = 10


def _config(mx: RecordingMX, per_ip: dict[str, Any], engine_cap: int = 100) -> dict[str, Any]:
    return {
        "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
        "delivery": {"maxMessagesPerConnection": engine_cap},
        "shaping": {
            "providers": [
                {
                    "name": "example",
                    "match": {"recipientDomains": ["example.org"]},
                    # One connection at a time: every message is a chance to reuse it.
                    "perIP": {"maxConnections": 1, **per_ip},
                }
            ]
        },
    }


def _sessions(eng: EngineProc, mx: RecordingMX) -> int:
    for i in range(MESSAGES):
        eng.send("app@example.test", [f"user{i}@example.org"], message(f"reuse {i}"))
    mx.wait_for(MESSAGES, timeout=60)
    eng.wait_queue_empty()
    got = mx.messages()
    assert len(got) == MESSAGES
    return len({(m.peer_ip, m.peer_port) for m in got})


def test_the_provider_policy_closes_connections_after_its_count(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_config(mx, {"maxMessagesPerConnection": 3}))
    # 10 messages, 3 per connection: at least 4 sessions (the engine's cap of 100 would be 1).
    assert _sessions(eng, mx) >= 4


def test_the_engine_cap_still_applies_below_the_policy(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_config(mx, {"maxMessagesPerConnection": 50}, engine_cap=5))
    assert _sessions(eng, mx) >= 2


def test_without_a_provider_count_one_connection_carries_them_all(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    """The control: nothing closes the connection early, so the counts above are the policy's."""
    eng = mta_engine(_config(mx, {}))
    assert _sessions(eng, mx) == 1


def test_the_outbound_connections_gauge_counts_open_connections(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    """mailfleet_outbound_connections: the pooled connection while it idles, none once the idle
    timeout closed it."""
    config = _config(mx, {})
    config["delivery"]["idleTimeout"] = "5s"
    eng = mta_engine(config)
    assert eng.metric("mailfleet_outbound_connections") == 0
    eng.send("app@example.test", ["user@example.org"], message("gauge"))
    mx.wait_for(1, timeout=30)
    eng.wait_queue_empty()
    assert eng.metric("mailfleet_outbound_connections") == 1
    eng.wait_until(
        lambda: eng.metric("mailfleet_outbound_connections") == 0,
        timeout=30,
        what="the idle connection closed",
    )
