"""The operator's handover of an IP moving between pods, driven by what the pods report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailfleet.operator.decide.pods import PodRef, PodReport
from mailfleet.operator.loops.ipmoves import PoolMoves


class Adopter:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def adopt_shaping(self, ip: str, token: str, body: Mapping[str, Any]) -> bool:
        self.calls.append((ip, dict(body)))
        return self.ok


def report(pod: str, ip: str, sending: list[str], sent: int = 0) -> PodReport:
    status = {
        "sourceIPs": sending,
        "shaping": [
            {"ip": a, "provider": "gmail", "rate": 1.5, "suspendedUntil": None} for a in sending
        ],
        "warmup": [{"ip": a, "provider": "*", "sent": sent, "cap": 50} for a in sending],
        "fleetLimits": {"mode": "split"},
    }
    return PodReport(PodRef(pod, ip, True), status)


def owned_by(moves: PoolMoves, pod: str) -> None:
    moves.rendered([{"address": "10.0.0.1", "state": "warming", "pod": pod}])


async def test_a_moved_ip_is_held_until_its_old_owner_stops_then_handed_over() -> None:
    moves, engines, events = PoolMoves(), Adopter(), []

    def event(*e: str) -> None:
        events.append(e)

    owned_by(moves, "p0")
    p0 = report("p0", "127.10.0.1", ["10.0.0.1"], sent=12)
    assert await moves.observe([p0], engines, "t", event)  # the mode is news
    assert not await moves.observe([p0], engines, "t", event)
    owned_by(moves, "p1")  # a rescale gave it to p1; p0 has not reloaded yet
    p1 = report("p1", "127.10.0.2", [])
    assert await moves.observe([p0, p1], engines, "t", event)
    assert moves.pending == {"10.0.0.1": "p0"} and not engines.calls
    # p0 runs the new config: nobody sends from it; p1 gets p0's state, then it is released.
    assert await moves.observe([report("p0", "127.10.0.1", []), p1], engines, "t", event)
    ((ip, body),) = engines.calls
    assert ip == "127.10.0.2"
    assert body["warmup"] == [{"ip": "10.0.0.1", "provider": "*", "sent": 12}]
    assert body["shaping"][0]["rate"] == 1.5
    assert moves.pending == {}
    assert events[-1][1] == "IPOwnerChanged" and "from p0 to p1" in events[-1][2]


async def test_a_refused_handover_keeps_the_ip_held() -> None:
    moves, engines = PoolMoves(), Adopter(ok=False)
    owned_by(moves, "p0")
    await moves.observe([report("p0", "127.10.0.1", ["10.0.0.1"])], engines, "t", print)
    owned_by(moves, "p1")
    # p0 went away between two looks: the move is seen all the same.
    await moves.observe([report("p1", "127.10.0.2", [])], engines, "t", print)
    assert engines.calls and moves.pending == {"10.0.0.1": "p0"}
