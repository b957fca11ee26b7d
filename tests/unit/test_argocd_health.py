"""Argo CD health checks (deploy/argocd/health/*.lua) run by Debian's lua5.1 (Argo CD runs them
in gopher-lua, Lua 5.1 semantics) against statuses of each kind: Progressing while the operator
has not caught up, while IPs warm or pods drain; Degraded when something needs a human; Suspended
when paused; Healthy otherwise. The warmup and policy statuses are the operator's own (its pure
status functions), so a reason the operator starts writing differently shows up here.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailfleet.operator.api.conditions import Cond
from mailfleet.operator.api.crd_models import DeliveryPolicy, IPWarmup, SendingPool
from mailfleet.operator.decide import statuses

REPO = Path(__file__).resolve().parents[2]
HEALTH = REPO / "deploy" / "argocd" / "health"
KINDS = ("SendingPool", "DeliveryPolicy", "IPWarmup", "SendingDomain")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def lua_literal(value: Any) -> str:
    """A Python value as a Lua table constructor, as Argo CD hands the object to the script."""
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def health(lua: str, kind: str, obj: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    runner = tmp_path / "run.lua"
    runner.write_text(
        f"obj = {lua_literal(obj)}\n"
        f"local check = assert(loadfile({json.dumps(str(HEALTH / f'{kind}.lua'))}))\n"
        # Argo CD's sandbox: no os, io or require.
        "setfenv(check, {obj = obj, ipairs = ipairs, pairs = pairs, string = string,"
        " table = table, math = math, tostring = tostring, tonumber = tonumber})\n"
        "local hs = check()\n"
        'io.write(hs.status, "\\t", hs.message or "")\n'
    )
    proc = subprocess.run([lua, str(runner)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    status, _, message = proc.stdout.partition("\t")
    return status, message


def obj(kind: str, status: dict[str, Any] | None, generation: int = 2) -> dict[str, Any]:
    o: dict[str, Any] = {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "mail", "generation": generation},
        "spec": {},
    }
    if status is not None:
        o["status"] = status
    return o


def cond(status: str, reason: str, message: str = "", type_: str = "Ready") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def ips(*states: str) -> list[dict[str, Any]]:
    return [{"address": f"192.0.2.{i + 1}", "state": s} for i, s in enumerate(states)]


POOL_CASES = [
    ("no status yet", None, "Progressing"),
    (
        "an older generation",
        {"observedGeneration": 1, "conditions": [cond("True", "PodsReady")], "ips": ips("active")},
        "Progressing",
    ),
    (
        "ready",
        {
            "observedGeneration": 2,
            "conditions": [cond("True", "PodsReady", "3/3 pods ready")],
            "ips": ips("active", "standby"),
        },
        "Healthy",
    ),
    (
        "scaled to zero",
        {
            "observedGeneration": 2,
            "conditions": [cond("True", "ScaledToZero")],
            "ips": ips("active"),
        },
        "Healthy",
    ),
    (
        "pods starting",
        {
            "observedGeneration": 2,
            "conditions": [cond("False", "PodsNotReady", "1/3 pods ready")],
            "ips": ips("active"),
        },
        "Progressing",
    ),
    (
        "warming an IP",
        {
            "observedGeneration": 2,
            "conditions": [cond("True", "PodsReady")],
            "ips": ips("active", "warming"),
        },
        "Progressing",
    ),
    (
        "draining before a scale-down",
        {
            "observedGeneration": 2,
            "conditions": [cond("True", "PodsReady")],
            "ips": ips("active"),
            "drainingPods": ["x-2"],
            "handoffLeft": 120,
        },
        "Progressing",
    ),
    (
        "a DKIM Secret missing",
        {
            "observedGeneration": 2,
            "conditions": [cond("False", "DKIMSecretMissing", "dkim-x")],
            "ips": ips("active"),
        },
        "Degraded",
    ),
    (
        "a config that does not render",
        {"observedGeneration": 2, "conditions": [cond("False", "RenderFailed", "x")]},
        "Degraded",
    ),
    (
        "every IP quarantined or standby",
        {
            "observedGeneration": 2,
            "conditions": [cond("True", "PodsReady")],
            "ips": ips("quarantined", "standby"),
        },
        "Degraded",
    ),
    (
        "NoHealthyIP said by the operator",
        {
            "observedGeneration": 2,
            "conditions": [
                cond("True", "PodsReady"),
                cond("False", "NoHealthyIP", "all quarantined", type_="IPsHealthy"),
            ],
        },
        "Degraded",
    ),
]


@pytest.mark.parametrize(
    ("status", "expected"), [(s, e) for _, s, e in POOL_CASES], ids=[i for i, _, _ in POOL_CASES]
)
def test_sending_pool(
    lua: str, tmp_path: Path, status: dict[str, Any] | None, expected: str
) -> None:
    got, message = health(lua, "SendingPool", obj("SendingPool", status), tmp_path)
    assert got == expected, message
    assert message


DOMAIN_CASES = [
    ("checked and signing", cond("True", "Ready", "signing with mf1r"), "Healthy"),
    ("waiting for DNS to serve the key", cond("False", "AwaitingPublication"), "Progressing"),
    ("a lookup failed", cond("Unknown", "DNSError", "timeout"), "Progressing"),
    ("SPF does not authorise an IP", cond("False", "IPNotAuthorized", "192.0.2.1"), "Degraded"),
    ("no pool", cond("False", "PoolNotFound"), "Degraded"),
]


@pytest.mark.parametrize(
    ("ready", "expected"), [(c, e) for _, c, e in DOMAIN_CASES], ids=[i for i, _, _ in DOMAIN_CASES]
)
def test_sending_domain(lua: str, tmp_path: Path, ready: dict[str, Any], expected: str) -> None:
    status = {"observedGeneration": 2, "conditions": [ready]}
    got, message = health(lua, "SendingDomain", obj("SendingDomain", status), tmp_path)
    assert got == expected, message


def pool_model() -> SendingPool:
    return SendingPool.model_validate(
        {
            "apiVersion": "mailfleet.io/v1alpha1",
            "kind": "SendingPool",
            "metadata": {"name": "transactional", "namespace": "mail", "generation": 1},
            "spec": {
                "ips": [
                    {"address": "192.0.2.1", "hostname": "mta1.example.com"},
                    {"address": "192.0.2.2", "hostname": "mta2.example.com"},
                ],
                "policySelector": {"matchLabels": {"tier": "transactional"}},
            },
        }
    )


def warmup_model(address: str, *, paused: bool = False, started: bool = True) -> IPWarmup:
    status: dict[str, Any] = {}
    if started:
        # Within its first day: a later day would need the previous day's figures (the gates
        # hold a day whose cap was not used).
        start = NOW - timedelta(hours=1)
        status = {"phase": "Warming", "startTime": start.strftime("%Y-%m-%dT%H:%M:%SZ")}
    return IPWarmup.model_validate(
        {
            "apiVersion": "mailfleet.io/v1alpha1",
            "kind": "IPWarmup",
            "metadata": {"name": "w", "namespace": "mail", "generation": 1},
            "spec": {
                "poolRef": "transactional",
                "addresses": [address],
                "schedule": {"days": [50, 100, 200, 400]},
                "paused": paused,
            },
            "status": status,
        }
    )


def warmup_obj(warmup: IPWarmup, pool: SendingPool | None) -> dict[str, Any]:
    o = warmup.model_dump(mode="json", by_alias=True, exclude_none=True)
    o["status"] = statuses.warmup_status(warmup, pool, NOW)
    return o


def test_ip_warmup_from_the_operators_own_statuses(lua: str, tmp_path: Path) -> None:
    pool = pool_model()
    warming = warmup_obj(warmup_model("192.0.2.2"), pool)
    assert warming["status"]["phase"] == "Warming"
    assert health(lua, "IPWarmup", warming, tmp_path) == (
        "Progressing",
        f"Warming: day {warming['status']['day']}, cap {warming['status']['todayCap']} a day",
    )
    paused = warmup_obj(warmup_model("192.0.2.2", paused=True), pool)
    assert health(lua, "IPWarmup", paused, tmp_path)[0] == "Suspended"
    no_pool = warmup_obj(warmup_model("192.0.2.2"), None)
    assert health(lua, "IPWarmup", no_pool, tmp_path)[0] == "Degraded"
    outside = warmup_obj(warmup_model("198.51.100.7"), pool)
    got = health(lua, "IPWarmup", outside, tmp_path)
    assert got[0] == "Degraded" and "AddressesNotInPool" in got[1]
    done = IPWarmup.model_validate(
        {
            **warmup_model("192.0.2.2").model_dump(mode="json", by_alias=True, exclude_none=True),
            # On the schedule's last day for more than a day.
            "status": {
                "phase": "Warming",
                "day": 4,
                "startTime": "2026-11-20T00:00:00Z",
                "lastAdvanceTime": "2026-11-28T00:00:00Z",
                # The last day's cap was used: the gates let it end.
                "today": {
                    "since": "2026-11-28T00:00:00Z",
                    "providers": {"*": {"attempts": 400, "delivered": 400}},
                },
            },
        }
    )
    complete = warmup_obj(done, pool)
    assert complete["status"]["phase"] == "Complete"
    assert health(lua, "IPWarmup", complete, tmp_path)[0] == "Healthy"
    held = {**warming, "status": {**warming["status"], "phase": "Holding"}}
    assert health(lua, "IPWarmup", held, tmp_path)[0] == "Degraded"
    stale = {**warming, "metadata": {**warming["metadata"], "generation": 5}}
    assert health(lua, "IPWarmup", stale, tmp_path)[0] == "Progressing"


def test_delivery_policy_from_the_operators_own_statuses(lua: str, tmp_path: Path) -> None:
    policy = DeliveryPolicy.model_validate(
        {
            "apiVersion": "mailfleet.io/v1alpha1",
            "kind": "DeliveryPolicy",
            "metadata": {
                "name": "p",
                "namespace": "mail",
                "generation": 1,
                "labels": {"tier": "transactional"},
            },
            "spec": {"providers": [{"name": "gmail", "match": {"mxSuffixes": ["google.com"]}}]},
        }
    )
    for pools in ([pool_model()], []):
        o = policy.model_dump(mode="json", by_alias=True, exclude_none=True)
        o["status"] = statuses.policy_status(policy, pools, NOW)
        status, message = health(lua, "DeliveryPolicy", o, tmp_path)
        assert status == "Healthy"
        assert ("InUse" if pools else "Unused") in message
    o["status"]["conditions"][0].update(status="False", reason="Invalid")
    assert health(lua, "DeliveryPolicy", o, tmp_path)[0] == "Degraded"


def test_the_argocd_cm_patch_carries_every_kinds_check() -> None:
    patch = yaml.safe_load((REPO / "deploy" / "argocd" / "argocd-cm-health.yaml").read_text())
    expected = {
        f"resource.customizations.health.mailfleet.io_{k}": (HEALTH / f"{k}.lua").read_text()
        for k in KINDS
    }
    assert patch["data"] == expected


def test_the_checks_use_only_what_argocds_sandbox_offers() -> None:
    for kind in KINDS:
        src = (HEALTH / f"{kind}.lua").read_text()
        for banned in ("os.", "io.", "require", "dofile", "loadstring"):
            assert banned not in src, f"{kind}.lua uses {banned}"


def test_no_healthy_ip_as_the_operator_posts_it_is_degraded(lua: str, tmp_path: Path) -> None:
    """The operator says NoHealthyIP on IPsHealthy (render.ips_healthy), not on Ready: with
    noHealthyIP keepSending the last IP stays active and the pods stay Ready."""
    from mailfleet.operator.decide.quarantine import NO_HEALTHY, Verdicts
    from mailfleet.operator.decide.render import ips_healthy

    c = ips_healthy(Verdicts({}, no_healthy_ip="every IP crossed a threshold", checked_at=NOW))
    assert (c.type, c.status, c.reason) == ("IPsHealthy", "False", NO_HEALTHY)
    status = {
        "observedGeneration": 2,
        "conditions": [
            cond("True", "PodsReady", "2/2 pods ready"),
            cond(c.status, c.reason, c.message, type_=c.type),
        ],
        "ips": ips("active", "quarantined"),
    }
    got, message = health(lua, "SendingPool", obj("SendingPool", status), tmp_path)
    assert (got, message.split(":")[0]) == ("Degraded", "NoHealthyIP")


def test_a_pending_dkim_rotation_is_progressing(lua: str, tmp_path: Path) -> None:
    """RotationPending is DKIMPublished's reason (True: the old key still signs), and Ready is
    True meanwhile (domainplan.ready), so the check reads DKIMPublished too."""
    from mailfleet.operator.decide.domainplan import Selector, ready

    published = Cond(
        "DKIMPublished", "True", "RotationPending", "new selector mf2 waits for its record"
    )
    selectors = [
        Selector("mf1", "rsa-sha256", "active", NOW),
        Selector("mf2", "rsa-sha256", "pending", NOW),
    ]
    r = ready([published], selectors, [])
    assert r.status == "True"
    status = {
        "observedGeneration": 2,
        "conditions": [
            cond(r.status, r.reason, r.message),
            cond(published.status, published.reason, published.message, type_=published.type),
        ],
    }
    got, message = health(lua, "SendingDomain", obj("SendingDomain", status), tmp_path)
    assert (got, message.split(":")[0]) == ("Progressing", "RotationPending")
