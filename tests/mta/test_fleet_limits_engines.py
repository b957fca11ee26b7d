"""Fleet-wide limits with real engines: three engine processes (pods fl-0..2, one source IP each)
against the ISP simulator, which records every message with its source IP and time, sharing a
pool-wide gmail limit through a real redis-server, or keeping to the operator's split without
it; a warming IP moved between engines mid-day (Redis stopped and started under load is
in tests/e2e/test_fleet_limits.py, with the operator).

Figures (`pytest -s`): `fleet limits: pods P, limit L/min, observed max M/min, warmup cap C,
sent S`. The bound asserted is the one docs/reference/resources.md states: the limit in any 60 s
window, plus one message of bucket per pod.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.dnsserver import DnsServer
from fixtures.engine import EngineProc, message
from fixtures.isp import IspSimulator, max_in_window
from fixtures.procs import RedisServer

IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
PODS = ["fl-0", "fl-1", "fl-2"]
LIMIT = 120  # messages a minute to gmail from the whole pool
SENDER = "app@example.test"
LOAD = 150  # per pod: 450 queued against 120 a minute


@pytest.fixture
def isp() -> Iterator[IspSimulator]:
    with IspSimulator() as sim:
        sim["gmail"].set_limit(None)  # the simulator only counts; the limit is ours
        yield sim


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    # Its own server: this test stops and starts it.
    with RedisServer(workdir=tmp_path / "redis") as server:
        yield server


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[list[EngineProc]]:
    started: list[EngineProc] = []
    yield started
    for eng in started:
        eng.stop()


def fleet_config(
    isp: IspSimulator, dns: DnsServer, redis_url: str | None, ns: str, **shaping: Any
) -> dict[str, Any]:
    """What the operator renders for three pods: each IP owned by one pod, the pool-wide limit,
    and each pod's share of it (a third each: one IP each)."""
    ips = [{"address": ip, "owner": pod} for ip, pod in zip(IPS, PODS, strict=True)]
    cfg = isp.engine_config(
        dns,
        ips,
        {"gmail": {"pool": {"maxMessageRate": f"{LIMIT}/min"}, "perIP": {"maxConnections": 4}}},
        **shaping,
    )
    cfg["fleet"] = {
        "redisURL": redis_url,
        "namespace": ns,
        "shares": [{"pod": p, "rateShare": 0.333333, "connections": {}} for p in PODS],
    }
    return cfg


def start_fleet(
    tmp_path: Path, engines: list[EngineProc], cfg: dict[str, Any], pods: list[str] = PODS
) -> list[EngineProc]:
    for pod in pods:
        workdir = tmp_path / pod
        workdir.mkdir()
        eng = EngineProc(workdir, cfg, env={"POD_NAME": pod})
        engines.append(eng)
        eng.start()
    return engines


def load(eng: EngineProc, isp: IspSimulator, n: int, tag: str) -> None:
    with eng.smtp() as s:
        s.ehlo()
        for i in range(n):
            r = isp.rcpt("gmail", f"{tag}{i}")
            s.sendmail(SENDER, [r], message(f"{tag} {i}", frm=SENDER, to=r))


def modes(engines: list[EngineProc]) -> list[str]:
    return [e.status()["fleetLimits"]["mode"] for e in engines]


def run_under_load(
    isp: IspSimulator, engines: list[EngineProc], seconds: float, tag: str
) -> list[float]:
    for k, eng in enumerate(engines):
        load(eng, isp, LOAD, f"{tag}{k}-")
    gmail = isp["gmail"]
    gmail.wait(lambda: gmail.count() > 0, timeout=30, what="first delivery")
    time.sleep(seconds)
    return [a.at for a in gmail.accepted()]


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "split"])
def test_pool_wide_limit_holds_across_three_pods(
    tmp_path: Path,
    isp: IspSimulator,
    dns: DnsServer,
    redis: RedisServer,
    engines: list[EngineProc],
    shared: bool,
) -> None:
    cfg = fleet_config(isp, dns, redis.url if shared else None, uuid.uuid4().hex)
    start_fleet(tmp_path, engines, cfg)
    mode = "shared" if shared else "split"
    engines[0].wait_until(lambda: modes(engines) == [mode] * 3, 20, f"{mode} mode")
    times = run_under_load(isp, engines, 62, "a")
    observed = max_in_window(times)
    per_ip = isp["gmail"].per_ip()
    print(
        f"\nfleet limits ({mode}): pods 3, limit {LIMIT}/min, observed max {observed}/min, "
        f"warmup cap -, sent {len(times)} (per IP {per_ip})"
    )
    assert observed <= LIMIT + len(PODS)
    # Far above the limit, the pool sends close to it: the limit is shared, not lost.
    assert observed >= LIMIT * 0.75
    if shared:
        assert engines[0].metric("mailfleet_fleet_limits_mode", mode="shared") == 1
    assert set(per_ip) <= set(IPS)  # only from the pool's IPs, each pod from its own
    if not shared:
        # Each pod has its own share of the limit; a shared bucket goes to whoever asks first.
        assert len(per_ip) == 3


def reload(eng: EngineProc, cfg: dict[str, Any]) -> None:
    eng.write_config(cfg)
    answer = eng.post("/v1/reload", {"config": yaml.safe_dump(eng.config)})
    assert answer.get("reloaded"), answer


def with_owner(cfg: dict[str, Any], ip: str, owner: str, hold: bool) -> dict[str, Any]:
    out = yaml.safe_load(yaml.safe_dump(cfg))
    for s in out["delivery"]["sourceIPs"]:
        if s["address"] == ip:
            s["owner"], s["hold"] = owner, hold
    return out


def engine_cfg(eng: EngineProc, cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` with this engine's own listen addresses and spool."""
    return {**cfg, **{k: eng.config[k] for k in ("submission", "admin", "spool")}}


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "handover"])
def test_warming_ip_moved_between_pods_never_exceeds_its_cap(
    tmp_path: Path,
    isp: IspSimulator,
    dns: DnsServer,
    redis: RedisServer,
    engines: list[EngineProc],
    shared: bool,
) -> None:
    cap = 20
    warm, other = IPS[0], IPS[1]
    base = isp.engine_config(
        dns,
        [{"address": warm, "owner": "fl-0"}, {"address": other, "owner": "fl-1"}],
        {},
        warmup=[
            {"address": warm, "provider": "*", "day": 1, "dailyCap": cap, "dayStart": time.time()}
        ],
        warmupSlots=1,
        dayLength=3600,
        overflow="spill",
    )
    base["fleet"] = {"redisURL": redis.url if shared else None, "namespace": uuid.uuid4().hex}
    a, b = start_fleet(tmp_path, engines, base, ["fl-0", "fl-1"])
    gmail = isp["gmail"]
    load(a, isp, 15, "w-a")
    gmail.wait(lambda: gmail.count(warm) == 15, timeout=30, what="15 from the warming IP")
    # The operator's move: held on both (nobody sends from it), state handed over, released.
    held = with_owner(base, warm, "fl-1", hold=True)
    reload(a, engine_cfg(a, held))
    reload(b, engine_cfg(b, held))
    assert warm not in a.status()["sourceIPs"] and warm not in b.status()["sourceIPs"]
    if not shared:
        st = a.status()
        rows = [r for r in st["shaping"] if r["ip"] == warm]
        counts = [w for w in st["warmup"] if w["ip"] == warm]
        assert b.post("/v1/shaping/adopt", {"shaping": rows, "warmup": counts}).get("adopted")
    reload(b, engine_cfg(b, with_owner(base, warm, "fl-1", hold=False)))
    assert warm in b.status()["sourceIPs"]
    load(b, isp, 40, "w-b")  # far more than the 5 left: the rest spills to the other IP
    gmail.wait(lambda: gmail.count() == 55, timeout=60, what="all 55 delivered")
    sent = gmail.count(warm)
    print(
        f"\nfleet limits (warmup moved, {'redis' if shared else 'handover'}): pods 2, "
        f"limit -, observed max -, warmup cap {cap}, sent {sent} from the moved IP"
    )
    # Without the count from a, b would take up to a whole cap more from the IP: the load
    # spreads over both IPs and wants far more than 5 from it. How many of the 5 left b uses
    # depends on how the load races the IP's rate, so only the bound is asserted.
    assert sent <= cap
    left = [w for w in b.status()["warmup"] if w["ip"] == warm and w["provider"] == "*"]
    # b's count carries on from a's: at least all that left the IP today, on either pod (a
    # count restarted on b would hold b's sends only). It may count more: an attempt counts
    # when the IP is chosen, also one that then went out another way.
    assert left and sent <= left[0]["sent"] <= cap
