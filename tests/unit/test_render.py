"""render.py: what the operator wants in the cluster for a pool, computed without a cluster."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest
import yaml
from fixtures.objects import LATER, NOW, child, inputs, policy, pool, pool_doc, warmup

from mailfleet.mta.config import config_digest, parse_config
from mailfleet.operator.api import conditions, naming
from mailfleet.operator.api.crd_models import (
    Replicas,
    SendingPool,
    WarmupSchedule,
    parse_object,
)
from mailfleet.operator.decide import drift, ipplan, policy_merge, render, statuses
from mailfleet.operator.decide import warmup as wu

# --- replicas ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mn", "mx", "desired", "want"),
    [
        (2, 10, None, 2),
        (2, 10, 4, 4),
        (2, 10, 50, 10),
        (2, 10, 1, 2),
        (0, 3, None, 0),
        (0, 3, 0, 0),
    ],
)
def test_replicas_are_desired_or_min_clamped(
    mn: int, mx: int, desired: int | None, want: int
) -> None:
    assert ipplan.desired_replicas(Replicas(min=mn, max=mx, desired=desired)) == want


# --- IP ownership ------------------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 2, 3, 5, 8])
def test_sending_ips_round_robin_over_pods(replicas: int) -> None:
    addrs = [f"203.0.113.{i}" for i in range(1, 6)]
    owners = ipplan.assign_owners(addrs, replicas, "pool")
    assert list(owners) == addrs
    assert [owners[a] for a in addrs] == [f"pool-{i % replicas}" for i in range(5)]
    # Every pod up to min(replicas, IPs) gets at least one address; loads differ by at most one.
    counts = [list(owners.values()).count(f"pool-{i}") for i in range(replicas)]
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == 5


def test_no_pods_means_no_owner() -> None:
    assert ipplan.assign_owners(["203.0.113.1"], 0, "p") == {"203.0.113.1": None}


def test_standby_ips_have_no_owner_and_do_not_shift_the_others() -> None:
    ips = [
        {"address": "203.0.113.10", "hostname": "a.example.com"},
        {"address": "203.0.113.11", "hostname": "b.example.com", "standby": True},
        {"address": "203.0.113.12", "hostname": "c.example.com"},
        {"address": "203.0.113.13", "hostname": "d.example.com"},
    ]
    plans = ipplan.plan_ips(pool(ips=ips), [], 2, NOW)
    assert [(p.address, p.state, p.owner) for p in plans] == [
        ("203.0.113.10", "active", "transactional-0"),
        ("203.0.113.11", "standby", None),
        ("203.0.113.12", "active", "transactional-1"),
        ("203.0.113.13", "active", "transactional-0"),
    ]


def test_warming_ips_come_from_the_pools_active_warmups() -> None:
    plans = ipplan.plan_ips(pool(), [warmup()], 2, NOW)
    states = {p.address: (p.state, p.reason) for p in plans}
    assert states == {
        "203.0.113.10": ("active", None),
        "203.0.113.11": ("standby", None),
        "203.0.113.12": ("warming", "IPWarmup/transactional-mta3"),
    }
    # A warmup of another pool, a paused one (still capped) and a completed one.
    other = warmup(poolRef="other")
    assert {p.state for p in ipplan.plan_ips(pool(), [other], 2, NOW)} == {"active", "standby"}
    paused = warmup(paused=True)
    assert ipplan.plan_ips(pool(), [paused], 2, NOW)[2].state == "warming"
    done = warmup(status={"phase": "Complete", "day": 14})
    assert ipplan.plan_ips(pool(), [done], 2, NOW)[2].state == "active"


def test_a_warmup_never_wakes_a_standby() -> None:
    w = warmup(addresses=["203.0.113.11"])
    assert ipplan.plan_ips(pool(), [w], 1, NOW)[1].state == "standby"
    assert ipplan.warmup_caps(pool(), [w], NOW) == []


# --- warmup schedule ---------------------------------------------------------------------------


def test_cap_for_day_follows_days_and_holds_the_last() -> None:
    s = WarmupSchedule(days=[50, 100, 250])
    assert [wu.cap_for_day(s, d) for d in (0, 1, 2, 3, 4, 100)] == [50, 50, 100, 250, 250, 250]
    assert wu.final_day(s) == 3


@pytest.mark.parametrize("preset", ["conservative", "standard", "aggressive"])
def test_presets_increase_strictly(preset: str) -> None:
    days = wu.PRESETS[preset]  # type: ignore[index]
    assert all(a < b for a, b in itertools.pairwise(days))
    s = WarmupSchedule(preset=preset)  # type: ignore[arg-type]
    assert wu.cap_for_day(s, 1) == days[0]


def test_warmup_caps_per_ip_and_provider_share() -> None:
    caps = ipplan.warmup_caps(pool(), [warmup()], NOW)
    got = [(str(c.address), c.provider, c.day, c.daily_cap) for c in caps]
    first = wu.PRESETS["standard"][0]
    assert got == [
        ("203.0.113.12", "*", 1, first),
        ("203.0.113.12", "gmail", 1, first // 2),
        ("203.0.113.12", "outlook", 1, first // 2),
        ("203.0.113.12", "yahoo", 1, first // 2),
    ]
    later = warmup(
        status={"phase": "Warming", "day": 3}, schedule={"days": [10, 20, 30, 40]}, perProvider={}
    )
    assert [(c.provider, c.day, c.daily_cap) for c in ipplan.warmup_caps(pool(), [later], NOW)] == [
        ("*", 3, 30)
    ]


def test_addresses_outside_the_pool_get_no_cap() -> None:
    w = warmup(addresses=["198.51.100.1", "203.0.113.12"], perProvider={})
    assert [str(c.address) for c in ipplan.warmup_caps(pool(), [w], NOW)] == ["203.0.113.12"]


# --- policies ----------------------------------------------------------------------------------


def test_selector_semantics() -> None:
    from mailfleet.operator.api.crd_models import LabelSelector

    sel = LabelSelector.model_validate(
        {
            "matchLabels": {"tier": "t"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "stage"]},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "team", "operator": "Exists"},
                {"key": "zone", "operator": "NotIn", "values": ["eu"]},
            ],
        }
    )
    good = {"tier": "t", "env": "prod", "team": "x"}
    assert policy_merge.selector_matches(sel, good)
    assert policy_merge.selector_matches(sel, {**good, "zone": "us"})
    assert not policy_merge.selector_matches(sel, {**good, "zone": "eu"})
    assert not policy_merge.selector_matches(sel, {**good, "legacy": "1"})
    assert not policy_merge.selector_matches(sel, {k: v for k, v in good.items() if k != "team"})
    assert not policy_merge.selector_matches(sel, {**good, "env": "dev"})
    assert not policy_merge.selector_matches(sel, {**good, "tier": "u"})
    assert policy_merge.selector_matches(None, {}) and policy_merge.selector_matches(
        LabelSelector(), {"a": "b"}
    )


def test_policies_selected_by_label_in_the_pools_namespace() -> None:
    p = pool()
    chosen = policy("b", labels={"tier": "transactional"})
    other_tier = policy("a", labels={"tier": "bulk"})
    other_ns = policy("c", labels={"tier": "transactional"})
    other_ns.metadata["namespace"] = "elsewhere"
    assert [
        x.metadata["name"] for x in policy_merge.select_policies(p, [other_ns, other_tier, chosen])
    ] == ["b"]


def test_merge_by_name_first_policy_by_name_wins_and_conflicts_are_named() -> None:
    base = policy("a-base")
    gmail2 = {
        "name": "gmail",
        "match": {"mxSuffixes": ["google.com"]},
        "perIP": {"maxConnections": 1},
    }
    apple = {"name": "apple", "match": {"mxSuffixes": ["icloud.com"]}}
    extra = policy("b-extra", providers=[gmail2, apple], default={"perIP": {"maxConnections": 2}})
    for order in ([base, extra], [extra, base]):
        merged = policy_merge.merge_policies(order)
        assert merged.sources == ["a-base", "b-extra"]
        assert [p.name for p in merged.providers] == ["gmail", "outlook", "yahoo", "apple"]
        assert merged.providers[0].per_ip.max_connections == 5  # a-base's gmail
        assert merged.default.per_ip.max_connections == 10
        assert merged.conflicts == [
            "provider gmail is defined by a-base and b-extra; a-base wins",
            "default is defined by a-base and b-extra; a-base wins",
        ]
    same = policy_merge.merge_policies([base, policy("z-copy")])
    assert same.conflicts == [] and len(same.providers) == 3
    empty = policy_merge.merge_policies([])
    assert empty.providers == [] and empty.sources == []


def test_conflict_is_reported_in_status_and_event() -> None:
    gmail2 = {
        "name": "gmail",
        "match": {"mxSuffixes": ["google.com"]},
        "perIP": {"maxConnections": 1},
    }
    pols = [policy("a"), policy("b", providers=[gmail2])]
    out = render.render_pool(inputs(policies=pols))
    cond = conditions.condition(out.status, "PoliciesResolved")
    assert cond is not None and cond["reason"] == "PolicyConflict"
    assert "provider gmail is defined by a and b; a wins" in cond["message"]
    events = statuses.pool_events(None, out.status)
    assert any(e.reason == "PolicyConflict" and e.type == "Warning" for e in events)
    # The same conflict again is not a new event.
    assert not any(
        e.reason == "PolicyConflict" for e in statuses.pool_events(out.status, out.status)
    )


# --- the engine config -------------------------------------------------------------------------


def test_rendered_config_parses_and_carries_policies_ips_and_caps() -> None:
    out = render.render_pool(inputs())
    cm = child(out, "ConfigMap", "transactional-config")
    cfg = parse_config(yaml.safe_load(cm["data"]["engine.yaml"]))
    assert cfg == out.config
    assert [p.name for p in cfg.shaping.providers] == ["gmail", "outlook", "yahoo"]
    assert str(cfg.shaping.providers[0].per_ip.max_message_rate) and cfg.shaping.providers[0].rules
    assert cfg.shaping.default.per_ip.max_connections == 10
    assert [(str(s.address), s.state, s.owner) for s in cfg.delivery.source_ips] == [
        ("203.0.113.10", "active", "transactional-0"),
        ("203.0.113.11", "standby", None),
        ("203.0.113.12", "warming", "transactional-1"),
    ]
    assert {(str(w.address), w.provider) for w in cfg.shaping.warmup} >= {("203.0.113.12", "*")}
    assert cfg.shaping.overflow == "spill"
    assert cfg.submission.listen == "0.0.0.0:2525"
    assert [str(n) for n in cfg.submission.trusted_networks] == ["10.0.0.0/8"]
    assert cfg.admin.listen == f"0.0.0.0:{naming.ADMIN_PORT}"
    assert cfg.hostname == "mta1.example.com"
    defer = render.render_pool(inputs(warmups=[warmup(overflow="defer")]))
    assert defer.config is not None and defer.config.shaping.overflow == "defer"


def test_dkim_auth_and_tls_files_point_into_their_mounts() -> None:
    dkim = [
        {"domain": "example.com", "selector": "s1", "secretRef": "dkim-a"},
        {
            "domain": "example.com",
            "selector": "s2",
            "secretRef": "dkim-b",
            "algorithm": "ed25519-sha256",
        },
        {"domain": "example.org", "selector": "s1", "secretRef": "dkim-a", "secretKey": "org.key"},
    ]
    sub = {"port": 587, "authSecretRef": "users", "tlsSecretRef": "tls"}
    out = render.render_pool(inputs(pool(dkim=dkim, submission=sub)))
    assert out.config is not None
    keys = [(k.domain, k.selector, str(k.key_file), k.algorithm) for k in out.config.dkim.keys]
    assert keys == [
        ("example.com", "s1", f"{naming.SECRETS_DIR}/dkim/dkim-a/private.key", "rsa-sha256"),
        ("example.com", "s2", f"{naming.SECRETS_DIR}/dkim/dkim-b/private.key", "ed25519-sha256"),
        ("example.org", "s1", f"{naming.SECRETS_DIR}/dkim/dkim-a/org.key", "rsa-sha256"),
    ]
    assert str(out.config.submission.auth_users_file) == f"{naming.SECRETS_DIR}/auth/users"
    assert out.config.submission.tls is not None
    sts = child(out, "StatefulSet", "transactional")
    pod = sts["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {
        "dkim-0": "dkim-a",
        "dkim-1": "dkim-b",
        "auth": "users",
        "tls": "tls",
        "admin": "transactional-admin",
    }
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["dkim-0"]["mountPath"] == f"{naming.SECRETS_DIR}/dkim/dkim-a"
    assert all(mounts[n]["readOnly"] for n in secrets)
    assert pod["containers"][0]["ports"][0]["containerPort"] == 587


# --- children ----------------------------------------------------------------------------------


def test_every_child_is_owned_by_the_pool_and_labelled() -> None:
    out = render.render_pool(inputs())
    kinds = sorted((c["kind"], c["metadata"]["name"]) for c in out.children)
    assert kinds == [
        ("ConfigMap", "transactional-config"),
        ("NetworkPolicy", "transactional-admin"),
        ("PodDisruptionBudget", "transactional"),
        ("Service", "transactional"),
        ("Service", "transactional-headless"),
        ("ServiceAccount", "transactional-mta"),
        ("StatefulSet", "transactional"),
    ]
    for c in out.children:
        meta = c["metadata"]
        assert meta["namespace"] == "ns1"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "mailfleet.io/v1alpha1",
                "kind": "SendingPool",
                "name": "transactional",
                "uid": "uid-transactional",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == naming.MANAGER
        assert meta["annotations"][naming.HASH_ANNOTATION] == drift.object_hash(c)


def test_statefulset_shape() -> None:
    out = render.render_pool(inputs(pool(replicas={"min": 2, "max": 10, "desired": 3})))
    sts = child(out, "StatefulSet", "transactional")
    spec = sts["spec"]
    assert spec["replicas"] == 3 and spec["serviceName"] == "transactional-headless"
    assert spec["selector"]["matchLabels"] == naming.selector_labels("transactional")
    tmpl = spec["template"]
    assert naming.selector_labels("transactional").items() <= tmpl["metadata"]["labels"].items()
    pod = tmpl["spec"]
    assert pod["serviceAccountName"] == "transactional-mta"
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] >= 300
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    # Each pod listens on its own address; the kubelet expands $(POD_IP) from the env below.
    assert c["command"] == [
        "mailfleet",
        "mta",
        "--config",
        "/etc/mailfleet/engine.yaml",
        "--listen-address",
        "$(POD_IP)",
    ]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in c["env"]
    assert c["image"] == "mailfleet:test"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert {"name": "admin", "containerPort": naming.ADMIN_PORT, "protocol": "TCP"} in c["ports"]
    assert c["env"][0] == {
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # Hooks get no $(VAR) expansion: the engine reads POD_IP itself (no shell in the hook).
    prestop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[:3] == ["mailfleet", "mta", "drain"]
    assert prestop[prestop.index("--listen-address-env") + 1] == "POD_IP"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {
        "/etc/mailfleet": "config",
        "/var/spool/mailfleet": "spool",
        "/tmp": "tmp",
        naming.ADMIN_TOKEN_DIR: "admin",
    }
    assert {
        "name": "admin",
        "secret": {"secretName": "transactional-admin", "defaultMode": 0o440},
    } in pod["volumes"]
    assert {"name": "config", "configMap": {"name": "transactional-config"}} in pod["volumes"]
    assert c["resources"] == naming.DEFAULT_RESOURCES
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    own = pool(resources={"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}}, image="img:2",
               storage={"size": "5Gi", "storageClassName": "fast"})  # fmt: skip
    sts2 = child(render.render_pool(inputs(own)), "StatefulSet", "transactional")
    c2 = sts2["spec"]["template"]["spec"]["containers"][0]
    assert c2["resources"] == {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}}
    assert c2["image"] == "img:2"
    assert sts2["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"


def test_services_pdb_and_service_account_shapes() -> None:
    out = render.render_pool(inputs())
    headless = child(out, "Service", "transactional-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == naming.selector_labels("transactional")
    sub = child(out, "Service", "transactional")
    assert sub["spec"]["ports"] == [
        {"name": "submission", "port": 2525, "targetPort": "submission", "protocol": "TCP"}
    ]
    pdb = child(out, "PodDisruptionBudget", "transactional")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": naming.selector_labels("transactional")},
    }
    sa = child(out, "ServiceAccount", "transactional-mta")
    assert sa["automountServiceAccountToken"] is False


# --- hashing and comparing ---------------------------------------------------------------------


def _shuffled(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _shuffled(obj[k]) for k in reversed(list(obj))}
    if isinstance(obj, list):
        return [_shuffled(x) for x in obj]
    return obj


def test_hash_is_stable_across_dict_order_and_renders() -> None:
    a = render.render_pool(inputs())
    b = render.render_pool(inputs(now=LATER))
    for x, y in zip(a.children, b.children, strict=True):
        assert x == y
        assert drift.object_hash(_shuffled(x)) == drift.object_hash(x)
    changed = render.render_pool(inputs(pool(replicas={"min": 3, "max": 10})))
    assert drift.object_hash(child(changed, "StatefulSet", "transactional")) != drift.object_hash(
        child(a, "StatefulSet", "transactional")
    )
    # Policy order in the namespace does not matter.
    pols = [policy("x"), policy("y", providers=[])]
    assert (
        render.render_pool(inputs(policies=pols)).config_text
        == render.render_pool(inputs(policies=list(reversed(pols)))).config_text
    )


def _as_server_would_store(obj: dict[str, Any]) -> dict[str, Any]:
    live = copy.deepcopy(obj)
    live["metadata"]["resourceVersion"] = "42"
    live["metadata"]["uid"] = "abc"
    live.setdefault("spec", {})["extra"] = "defaulted"
    return live


def test_needs_apply_only_when_missing_changed_or_drifted() -> None:
    out = render.render_pool(inputs())
    for c in out.children:
        assert drift.needs_apply(c, None)
        live = _as_server_would_store(c)
        assert not drift.needs_apply(c, live), c["kind"]
        stale = copy.deepcopy(live)
        stale["metadata"]["annotations"][naming.HASH_ANNOTATION] = "old"
        assert drift.needs_apply(c, stale)
    sts = child(out, "StatefulSet", "transactional")
    scaled = _as_server_would_store(sts)
    scaled["spec"]["replicas"] = 7  # someone scaled the StatefulSet by hand
    assert drift.needs_apply(sts, scaled)
    # Quantities the server normalises are the same quantity.
    own = pool(resources={"requests": {"cpu": "0.5", "memory": "1Gi"}})
    sts2 = child(render.render_pool(inputs(own)), "StatefulSet", "transactional")
    live2 = _as_server_would_store(sts2)
    live2["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "500m"
    assert not drift.needs_apply(sts2, live2)


def test_immutable_statefulset_fields_are_kept_and_reported() -> None:
    sts = child(render.render_pool(inputs()), "StatefulSet", "transactional")
    live = _as_server_would_store(sts)
    bigger = child(
        render.render_pool(inputs(pool(storage={"size": "20Gi"}))), "StatefulSet", "transactional"
    )
    applied, ignored = drift.keep_immutable(bigger, live)
    assert ignored == ["spec.volumeClaimTemplates"]
    assert (
        applied["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        == "10Gi"
    )
    same, none = drift.keep_immutable(sts, live)
    assert none == [] and same == sts


# --- status ------------------------------------------------------------------------------------


def test_status_without_pods_says_why_it_is_not_ready() -> None:
    out = render.render_pool(inputs())
    s = out.status
    assert s["observedGeneration"] == 1
    assert (
        s["selector"]
        == "app.kubernetes.io/instance=transactional,app.kubernetes.io/name=mailfleet-mta"
    )
    assert (s["replicas"], s["readyReplicas"], s["desiredReplicas"]) == (0, 0, 2)
    assert s["activeIPs"] == 2
    # Quarantines and queue depth come from the pods' own reports, not from the render.
    assert "quarantinedIPs" not in s and "queueDepth" not in s
    assert s["configHash"] == config_digest(out.config_text)
    ready = conditions.condition(s, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "PodsNotReady")
    assert ready["lastTransitionTime"] == "2026-03-04T05:06:07Z"
    types = [c["type"] for c in s["conditions"]]
    # The example policy sets a pool-wide gmail limit; the pool has no Redis: split.
    assert types == [
        "Ready", "ConfigRendered", "PoliciesResolved", "FleetLimits", "SecretsFound", "IPsHealthy"
    ]  # fmt: skip
    fleet = conditions.condition(s, "FleetLimits")
    assert fleet is not None and fleet["reason"] == "Split"
    assert all(c["observedGeneration"] == 1 for c in s["conditions"])
    assert [ip["state"] for ip in s["ips"]] == ["active", "standby", "warming"]
    assert s["ips"][0]["pod"] == "transactional-0" and "pod" not in s["ips"][1]
    all_ready = render.render_pool(inputs(statefulset_status={"replicas": 2, "readyReplicas": 2}))
    rc = conditions.condition(all_ready.status, "Ready")
    assert rc is not None and (rc["status"], rc["reason"]) == ("True", "PodsReady")
    # The status validates against the CRD model.
    from mailfleet.operator.api.crd_models import SendingPoolStatus

    SendingPoolStatus.model_validate(json.loads(json.dumps(s)))


def _with_status(p: SendingPool, status: dict[str, Any]) -> SendingPool:
    doc = pool_doc(**p.spec.model_dump(mode="json", by_alias=True))
    doc["status"] = status
    obj = parse_object(doc)
    assert isinstance(obj, SendingPool)
    return obj


def test_transition_times_move_only_when_status_flips() -> None:
    first = render.render_pool(inputs()).status
    p2 = _with_status(pool(), first)
    again = render.render_pool(inputs(p2, now=LATER)).status
    assert again == first  # nothing changed: identical status, nothing to write
    assert not drift.status_changed(first, again)
    ready = render.render_pool(
        inputs(p2, now=LATER, statefulset_status={"replicas": 2, "readyReplicas": 2})
    )
    cond = conditions.condition(ready.status, "Ready")
    assert cond is not None and cond["lastTransitionTime"] == "2026-03-05T00:00:00Z"
    other = conditions.condition(ready.status, "ConfigRendered")
    assert other is not None and other["lastTransitionTime"] == "2026-03-04T05:06:07Z"
    assert drift.status_changed(first, ready.status)
    # IP since is kept while the state holds.
    assert ready.status["ips"] == first["ips"]


def test_missing_dkim_secret_and_recovery() -> None:
    dkim = [{"domain": "example.com", "selector": "s1", "secretRef": "dkim-example"}]
    p = pool(dkim=dkim)
    missing = render.render_pool(inputs(p)).status
    ready = conditions.condition(missing, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == (
        "False",
        "DKIMSecretMissing",
    )
    assert "dkim-example" in ready["message"]
    events = statuses.pool_events(None, missing)
    assert [(e.type, e.reason) for e in events] == [("Warning", "DKIMSecretMissing")]
    assert statuses.pool_events(missing, missing) == []  # no event storm on re-reconcile
    found = render.render_pool(
        inputs(_with_status(p, missing), secrets=frozenset({"dkim-example"}), now=LATER)
    ).status
    ready2 = conditions.condition(found, "Ready")
    assert ready2 is not None and ready2["reason"] == "PodsNotReady"
    assert [(e.type, e.reason) for e in statuses.pool_events(missing, found)] == [
        ("Normal", "SecretsFound")
    ]


def test_missing_tls_secret_is_not_ready() -> None:
    p = pool(submission={"port": 2525, "tlsSecretRef": "mta-tls"})
    s = render.render_pool(inputs(p)).status
    ready = conditions.condition(s, "Ready")
    assert (
        ready is not None and ready["reason"] == "SecretMissing" and "mta-tls" in ready["message"]
    )


def test_policy_status_counts_providers_and_pools() -> None:
    pol = policy()
    s = statuses.policy_status(pol, [pool()], NOW)
    assert (s["providerCount"], s["poolCount"], s["pools"]) == (3, 1, ["transactional"])
    unused = statuses.policy_status(policy(labels={"tier": "bulk"}), [pool()], NOW)
    assert unused["poolCount"] == 0
    assert conditions.condition(unused, "Ready") is not None


def test_warmup_status_phase_day_and_cap() -> None:
    s = statuses.warmup_status(warmup(), pool(), NOW)
    assert (s["phase"], s["day"], s["todayCap"]) == ("Warming", 1, wu.PRESETS["standard"][0])
    assert s["startTime"] == "2026-03-04T05:06:07Z"
    gone = statuses.warmup_status(warmup(), None, NOW)
    assert gone["phase"] == "Pending"
    cond = conditions.condition(gone, "Ready")
    assert cond is not None and cond["reason"] == "PoolNotFound"
    assert statuses.warmup_status(warmup(paused=True), pool(), NOW)["phase"] == "Paused"
    outside = statuses.warmup_status(warmup(addresses=["198.51.100.7"]), pool(), NOW)
    c2 = conditions.condition(outside, "Ready")
    assert c2 is not None and c2["reason"] == "AddressesNotInPool"


# --- what a reconcile does about a child it already knows --------------------------------------


def test_config_text_is_what_the_engine_config_writes() -> None:
    rendered = render.render_pool(inputs(secrets=frozenset({"dkim-transactional"})))
    assert rendered.config is not None
    assert rendered.config_text == rendered.config.to_yaml()


def live(
    hash_: str | None = "h1", marker: int | None = 5, foreign: bool = False
) -> drift.LiveChild:
    return drift.LiveChild("StatefulSet", "p", hash_, marker, foreign)


def test_a_child_the_operator_applied_is_left_alone_while_the_watch_lags() -> None:
    # Applied generation 5; the watch still shows 4, or nothing yet.
    assert drift.child_action("h1", live("h0", 4), ("h1", 5)) == "skip"
    assert drift.child_action("h1", None, ("h1", 5)) == "skip"
    assert drift.child_action("h1", live("h1", 5), ("h1", 5)) == "skip"
    # A controller moved it on without touching what the operator sets.
    assert drift.child_action("h1", live("h1", 6), ("h1", 5)) == "skip"


def test_a_child_someone_else_wrote_is_read_or_reapplied() -> None:
    assert drift.child_action("h1", live("h1", 6, foreign=True), ("h1", 5)) == "check"
    assert drift.child_action("h1", live("h9", 6), ("h1", 5)) == "apply"


def test_after_a_restart_the_hash_decides() -> None:
    assert drift.child_action("h1", None, None) == "apply"
    assert drift.child_action("h1", live("h0"), None) == "apply"
    assert drift.child_action("h1", live("h1"), None) == "skip"
    assert drift.child_action("h1", live("h1", foreign=True), None) == "check"
    # New inputs: the known version is not the desired one.
    assert drift.child_action("h2", live("h1"), ("h1", 5)) == "apply"


def test_live_child_keeps_hash_marker_and_whether_others_manage_it() -> None:
    meta = {
        "name": "p",
        "generation": 3,
        "resourceVersion": "812",
        "annotations": {naming.HASH_ANNOTATION: "abc"},
        "managedFields": [
            {"manager": naming.MANAGER, "operation": "Apply"},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status"},
        ],
    }
    assert drift.live_child("StatefulSet", meta) == drift.LiveChild(
        "StatefulSet", "p", "abc", 3, False
    )
    assert drift.live_child("ConfigMap", meta).marker == 812
    meta["managedFields"].append(
        {"manager": "kubectl", "operation": "Update", "subresource": "scale"}
    )
    assert drift.live_child("StatefulSet", meta).foreign


def test_network_policy_keeps_the_admin_port_to_the_operator_prometheus_and_peers() -> None:
    out = render.render_pool(inputs())
    np = child(out, "NetworkPolicy", "transactional-admin")
    spec = np["spec"]
    assert spec["podSelector"] == {"matchLabels": naming.selector_labels("transactional")}
    assert spec["policyTypes"] == ["Ingress"]
    submission, admin = spec["ingress"]
    assert submission == {"ports": [{"port": 2525, "protocol": "TCP"}]}  # the engine decides
    assert admin["ports"] == [{"port": naming.ADMIN_PORT, "protocol": "TCP"}]
    peers, clients, operator_pods = admin["from"]
    assert peers == {"podSelector": {"matchLabels": naming.selector_labels("transactional")}}
    (expr,) = clients["podSelector"]["matchExpressions"]
    assert expr["values"] == ["mailfleet-operator", "prometheus"]
    assert clients["namespaceSelector"] == {}
    # Matched by labels a chart's nameOverride does not change.
    assert operator_pods == {
        "namespaceSelector": {},
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/part-of": "mailfleet",
                "app.kubernetes.io/component": "operator",
            }
        },
    }
