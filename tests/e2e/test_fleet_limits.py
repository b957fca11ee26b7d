"""Fleet-wide limits on the local fleet: the operator runs the pods, the ISP simulator records
every message with its source IP and time.

- Three pods, a pool-wide gmail limit, load far above it, the pool's Redis stopped and started
  in the middle: no 60 s window sees more than the limit (plus a message of bucket per pod),
  the pool's FleetLimits condition follows Redis, and nothing accepted is lost.
- A warming IP moved to another pod by a scale-down (no Redis): the operator holds it, hands its
  count to the new owner (event IPOwnerChanged), and the IP never sends past its cap.

Figures (`pytest -s`): `fleet limits: pods P, limit L/min, observed max M/min, warmup cap C,
sent S`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fixtures.fleet import (
    SUBMISSION_PORT,
    apply,
    engine_status,
    pool_manifest,
    pool_status,
    wait_pods,
)
from fixtures.isp import IspSimulator, max_in_window
from fixtures.operator import OperatorProcess, kget, wait_for
from fixtures.procs import RedisServer
from fixtures.smtppeers import RecordingMX

from mailfleet.mta.shaping import warmup_allowance

pytestmark = [pytest.mark.kube, pytest.mark.slow]

LIMIT = 120  # a minute, to gmail, from the whole pool
LOAD = 150  # per pod


@pytest.fixture
def isp() -> Iterator[IspSimulator]:
    with IspSimulator(("gmail",)) as sim:
        sim["gmail"].set_limit(None)  # it counts; the limit is the pool's
        yield sim


def gmail_policy(ns: str, pool_rate: str | None) -> dict[str, Any]:
    gmail: dict[str, Any] = {
        "name": "gmail",
        "match": {"recipientDomains": ["gmail.sim.test"]},
        "retry": {"initial": "2s", "max": "5s", "maxAge": "1h"},
    }
    if pool_rate is not None:
        gmail["pool"] = {"maxMessageRate": pool_rate}
    return {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "DeliveryPolicy",
        "metadata": {"name": "fleet", "namespace": ns, "labels": {"tier": "e2e"}},
        "spec": {"providers": [gmail]},
    }


def to_isp(isp: IspSimulator) -> dict[str, Any]:
    gmail = isp["gmail"]
    return {"routes": {"*": f"{gmail.address}:{gmail.port}"}}


def submit_gmail(ip: str, n: int, tag: str) -> list[str]:
    import smtplib

    rcpts = []
    with smtplib.SMTP(ip, SUBMISSION_PORT, local_hostname="app.test", timeout=30) as s:
        for i in range(n):
            r = f"{tag}{i}@gmail.sim.test"
            body = f"From: <app@example.test>\r\nTo: <{r}>\r\nSubject: {tag} {i}\r\n\r\nhi\r\n"
            s.sendmail("app@example.test", [r], body.encode())
            rcpts.append(r)
    return rcpts


def condition(kube: Any, ns: str, pool: str, kind: str) -> dict[str, Any]:
    for c in pool_status(kube, ns, pool).get("conditions", []):
        if c["type"] == kind:
            return dict(c)
    return {}


def test_pool_wide_limit_holds_over_three_pods_with_redis_stopped_and_started(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess], isp: IspSimulator, tmp_path: Path
) -> None:
    kube, ns, mx, _ = fleet
    with RedisServer(workdir=tmp_path / "redis") as redis:
        apply(kube, gmail_policy(ns, f"{LIMIT}/min"))
        apply(
            kube,
            pool_manifest(
                ns,
                "limits",
                mx,
                ["127.0.7.1", "127.0.7.2", "127.0.7.3"],
                replicas={"min": 1, "max": 3, "desired": 3},
                routing=to_isp(isp),
                fleetLimits={"redisURL": redis.url},
            ),
        )
        pods = wait_pods(kube, ns, "limits", 3)
        wait_for(
            "FleetLimits Shared",
            lambda: condition(kube, ns, "limits", "FleetLimits").get("reason") == "Shared",
            60,
        )
        rcpts: list[str] = []
        for k, pod in enumerate(pods):
            rcpts += submit_gmail(pod["status"]["podIP"], LOAD, f"p{k}-")
        gmail = isp["gmail"]
        time.sleep(30)
        redis.stop()
        down = wait_for(
            "FleetLimits RedisUnreachable",
            lambda: (
                (c := condition(kube, ns, "limits", "FleetLimits")).get("reason")
                == "RedisUnreachable"
                and c
            ),
            60,
        )
        assert down["status"] == "False"
        before = gmail.count()
        time.sleep(25)
        sent_while_down = gmail.count() - before
        redis.start()
        wait_for(
            "FleetLimits Shared again",
            lambda: condition(kube, ns, "limits", "FleetLimits").get("reason") == "Shared",
            60,
        )
        time.sleep(25)
        times = [a.at for a in gmail.accepted()]
        observed = max_in_window(times)
        print(
            f"\nfleet limits: pods 3, limit {LIMIT}/min, observed max {observed}/min, warmup cap "
            f"-, sent {len(times)} ({sent_while_down} while Redis was down; per IP "
            f"{gmail.per_ip()})"
        )
        assert sent_while_down > 0
        assert observed <= LIMIT + 3
        assert observed >= LIMIT * 0.75
        # Nothing lost: without the pool limit, everything accepted arrives.
        apply(kube, gmail_policy(ns, None))
        wait_for(
            "every message delivered",
            lambda: {a.recipient for a in gmail.accepted()} >= set(rcpts),
            120,
            every=1,
        )


def test_a_warming_ip_moved_by_a_scale_down_keeps_its_count(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess], isp: IspSimulator
) -> None:
    kube, ns, mx, _ = fleet
    warm, other = "127.0.9.2", "127.0.9.1"
    cap, day_length, slots = 48, 3600.0, 24  # the engine releases a day's cap in 24 slots
    apply(kube, gmail_policy(ns, None))
    apply(
        kube,
        pool_manifest(
            ns,
            "moves",
            mx,
            [other, warm],
            replicas={"min": 1, "max": 2, "desired": 2},
            routing=to_isp(isp),
        ),
    )
    apply(
        kube,
        {
            "apiVersion": "mailfleet.io/v1alpha1",
            "kind": "IPWarmup",
            "metadata": {"name": "moves", "namespace": ns},
            "spec": {
                "poolRef": "moves",
                "addresses": [warm],
                "schedule": {"days": [cap, cap * 2], "dayLength": "1h"},
            },
        },
    )
    pods = wait_pods(kube, ns, "moves", 2)
    # The engines count the day from the warmup's startTime once a render carries it.
    wait_for(
        "the warmup started",
        lambda: (kget(kube, ns, "ipwarmup", "moves").get("status") or {}).get("startTime"),
        60,
    )
    time.sleep(8)
    wait_for(
        "both pods on the current config",
        lambda: pool_status(kube, ns, "moves").get("updatedPods") == 2,
        60,
    )
    owner = wait_for(
        f"{warm} owned and counted from the warmup's start",
        lambda: next(
            (
                p
                for p in pods
                if warm in (s := engine_status(p)).get("sourceIPs", [])
                and any(w["ip"] == warm for w in s.get("warmup", []))
            ),
            None,
        ),
        60,
    )
    assert owner["metadata"]["name"] == "moves-1"
    gmail = isp["gmail"]
    rcpts = submit_gmail(owner["status"]["podIP"], 30, "w")
    wait_for(f"{warm} at its allowance", lambda: gmail.count(warm) >= 1, 60)
    time.sleep(3)
    first = gmail.count(warm)
    kube.kubectl("scale", "sendingpool", "moves", "-n", ns, "--replicas=1")
    moved = wait_for(
        "IPOwnerChanged",
        lambda: [
            e
            for e in kget(kube, ns, "events")["items"]
            if e["reason"] == "IPOwnerChanged" and warm in e["message"]
        ],
        180,
        every=1,
    )
    assert "from moves-1 to moves-0" in moved[0]["message"]
    (pod0,) = wait_pods(kube, ns, "moves", 1)
    wait_for(f"moves-0 sends from {warm}", lambda: warm in engine_status(pod0)["sourceIPs"], 30)
    rcpts += submit_gmail(pod0["status"]["podIP"], 30, "x")
    wait_for(
        "every message delivered",
        lambda: {a.recipient for a in gmail.accepted()} >= set(rcpts),
        120,
        every=1,
    )
    status = kget(kube, ns, "ipwarmup", "moves")["status"]
    start = datetime.fromisoformat(status["startTime"].replace("Z", "+00:00")).timestamp()
    allowed = warmup_allowance(cap, time.time() - start, day_length, slots)
    sent = gmail.count(warm)
    print(
        f"\nfleet limits: pods 2 -> 1, limit -, observed max -, warmup cap {cap} "
        f"({allowed} released so far), sent {sent} from {warm} ({first} before the move)"
    )
    assert first >= 1
    assert sent <= allowed
    # The count came along: the new owner's today is the whole IP's.
    counts = [w for w in engine_status(pod0)["warmup"] if w["ip"] == warm and w["provider"] == "*"]
    assert counts and counts[0]["sent"] == sent
