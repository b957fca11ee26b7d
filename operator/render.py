"""What a SendingPool should look like in the cluster: pure functions, no I/O.

From a pool, the DeliveryPolicies of its namespace, the IPWarmups that name it and which Secrets
exist, `render_pool` computes the children (StatefulSet, headless and submission Services,
ConfigMap with the rendered EngineConfig, PodDisruptionBudget, ServiceAccount), each stamped with
a hash of itself, and the pool's status. The handlers only compare and write.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from mailfleet.mta.config import (
    EngineConfig,
    ProviderConfig,
    ProviderSettingsConfig,
    WarmupCapConfig,
)
from mailfleet.operator import warmup as wu
from mailfleet.operator.crd_models import (
    API_VERSION,
    DeliveryPolicy,
    IPWarmup,
    LabelSelector,
    Replicas,
    SendingPool,
    SendingPoolSpec,
)

MANAGER = "mailfleet-operator"
HASH_ANNOTATION = "mailfleet.io/config-hash"
APP_NAME = "mailfleet-mta"
ADMIN_PORT = 8025
CONFIG_DIR = "/etc/mailfleet"
CONFIG_FILE = f"{CONFIG_DIR}/engine.yaml"
SECRETS_DIR = "/var/run/secrets/mailfleet"
SPOOL_DIR = "/var/spool/mailfleet"
RUN_AS = 10001
# Long enough for a pod to hand its queue to the network before it goes (preStop drains).
TERMINATION_GRACE_SECONDS = 600
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "512Mi"},
}

IPStateName = Literal["active", "warming", "standby", "quarantined"]

# --- names and labels --------------------------------------------------------------------------


def pool_name(pool: SendingPool) -> str:
    return str(pool.metadata["name"])


def pool_namespace(pool: SendingPool) -> str:
    return str(pool.metadata.get("namespace", "default"))


def selector_labels(name: str) -> dict[str, str]:
    """The labels that select a pool's pods (StatefulSet, Services, PDB, scale subresource)."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def child_labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/component": "mta",
        "app.kubernetes.io/part-of": "mailfleet",
        "app.kubernetes.io/managed-by": MANAGER,
    }


def pod_name(pool: str, ordinal: int) -> str:
    return f"{pool}-{ordinal}"


def owner_reference(pool: SendingPool) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "SendingPool",
        "name": pool_name(pool),
        "uid": str(pool.metadata["uid"]),
        "controller": True,
        "blockOwnerDeletion": True,
    }


# --- hashing -----------------------------------------------------------------------------------


def object_hash(obj: Mapping[str, Any]) -> str:
    """A digest of an object as rendered, independent of dict order and of its own hash."""
    clean = copy.deepcopy(dict(obj))
    meta = clean.get("metadata", {})
    annotations = meta.get("annotations", {})
    annotations.pop(HASH_ANNOTATION, None)
    if not annotations:
        meta.pop("annotations", None)
    text = json.dumps(clean, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """The object with its hash in the mailfleet.io/config-hash annotation."""
    digest = object_hash(obj)
    obj.setdefault("metadata", {}).setdefault("annotations", {})[HASH_ANNOTATION] = digest
    return obj


# --- label selectors ---------------------------------------------------------------------------


def selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; None or empty selects everything."""
    if selector is None:
        return True
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in req.values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def select_policies(pool: SendingPool, policies: Sequence[DeliveryPolicy]) -> list[DeliveryPolicy]:
    """The policies of the pool's namespace its policySelector picks, ordered by name."""
    ns = pool_namespace(pool)
    chosen = [
        p
        for p in policies
        if p.metadata.get("namespace", ns) == ns
        and selector_matches(pool.spec.policy_selector, p.metadata.get("labels") or {})
    ]
    return sorted(chosen, key=lambda p: str(p.metadata["name"]))


@dataclass(frozen=True)
class MergedPolicies:
    providers: list[ProviderConfig]
    default: ProviderSettingsConfig
    sources: list[str]  # policy names, in merge order
    conflicts: list[str] = field(default_factory=list)  # one sentence per conflict


def merge_policies(policies: Sequence[DeliveryPolicy]) -> MergedPolicies:
    """Providers merged by name over policies ordered by name: the first policy (by name) that
    defines a provider wins, and so does its `default`; every overridden definition is a
    conflict. Provider order is the order of first appearance (the engine's match order)."""
    ordered = sorted(policies, key=lambda p: str(p.metadata["name"]))
    providers: dict[str, ProviderConfig] = {}
    owner: dict[str, str] = {}
    conflicts: list[str] = []
    default: ProviderSettingsConfig | None = None
    default_from = ""
    for policy in ordered:
        name = str(policy.metadata["name"])
        for prov in policy.spec.providers:
            rendered = ProviderConfig.model_validate(prov.model_dump(mode="json", by_alias=True))
            if prov.name in providers:
                if providers[prov.name] != rendered:
                    conflicts.append(
                        f"provider {prov.name} is defined by {owner[prov.name]} and {name}; "
                        f"{owner[prov.name]} wins"
                    )
                continue
            providers[prov.name] = rendered
            owner[prov.name] = name
        settings = ProviderSettingsConfig.model_validate(
            policy.spec.default.model_dump(mode="json", by_alias=True)
        )
        if default is None:
            default, default_from = settings, name
        elif settings != default:
            conflicts.append(
                f"default is defined by {default_from} and {name}; {default_from} wins"
            )
    return MergedPolicies(
        providers=list(providers.values()),
        default=default if default is not None else ProviderSettingsConfig(),
        sources=[str(p.metadata["name"]) for p in ordered],
        conflicts=conflicts,
    )


# --- replicas and IPs --------------------------------------------------------------------------


def desired_replicas(replicas: Replicas) -> int:
    """spec.replicas.desired (the scale subresource) if set, else min; clamped to [min, max]."""
    want = replicas.desired if replicas.desired is not None else replicas.min
    return int(max(replicas.min, min(replicas.max, want)))


@dataclass(frozen=True)
class IPPlan:
    address: str
    hostname: str
    state: IPStateName
    reason: str | None
    owner: str | None  # the pod name that sends from it


def warmup_phase(warmup: IPWarmup, pool: SendingPool | None) -> str:
    """Pending (no such pool, or none of its addresses in the pool), Paused, Complete (past the
    schedule's last day), else what the day-advance logic set (Holding) or Warming."""
    if pool is None:
        return "Pending"
    pool_addresses = {ip.address for ip in pool.spec.ips}
    if not any(a in pool_addresses for a in warmup.spec.addresses):
        return "Pending"
    if warmup.spec.paused:
        return "Paused"
    status = warmup.status
    if status is not None and status.phase in ("Holding", "Complete"):
        return str(status.phase)
    return "Warming"


def warmup_day(warmup: IPWarmup) -> int:
    status = warmup.status
    return int(status.day) if status is not None and status.day else 1


def active_warmups(pool: SendingPool, warmups: Sequence[IPWarmup]) -> list[IPWarmup]:
    """The pool's warmups that still cap their addresses, ordered by name."""
    return sorted(
        (
            w
            for w in warmups
            if w.spec.pool_ref == pool_name(pool)
            and warmup_phase(w, pool) in ("Warming", "Holding", "Paused")
        ),
        key=lambda w: str(w.metadata["name"]),
    )


def assign_owners(addresses: Sequence[str], replicas: int, pool: str) -> dict[str, str | None]:
    """Sending addresses round-robin over pods 0..replicas-1 in the order given; no pods, no
    owner. Stable: the same spec always gives the same pod the same addresses."""
    if replicas <= 0:
        return {a: None for a in addresses}
    return {a: pod_name(pool, i % replicas) for i, a in enumerate(addresses)}


def plan_ips(pool: SendingPool, warmups: Sequence[IPWarmup], replicas: int) -> list[IPPlan]:
    """Each pool IP's state (standby from the spec; warming while an IPWarmup covers it; else
    active) and its owner pod (standby IPs have none)."""
    warming: dict[str, str] = {}
    for w in active_warmups(pool, warmups):
        for a in w.spec.addresses:
            warming.setdefault(str(a), f"IPWarmup/{w.metadata['name']}")
    sending = [str(ip.address) for ip in pool.spec.ips if not ip.standby]
    owners = assign_owners(sending, replicas, pool_name(pool))
    plans = []
    for ip in pool.spec.ips:
        addr = str(ip.address)
        if ip.standby:
            plans.append(IPPlan(addr, ip.hostname, "standby", None, None))
        elif addr in warming:
            plans.append(IPPlan(addr, ip.hostname, "warming", warming[addr], owners[addr]))
        else:
            plans.append(IPPlan(addr, ip.hostname, "active", None, owners[addr]))
    return plans


def warmup_caps(pool: SendingPool, warmups: Sequence[IPWarmup]) -> list[WarmupCapConfig]:
    """Today's caps for the pool's warming IPs: "*" carries the IP's whole daily cap, and each
    provider in perProvider its share of it. The first warmup (by name) naming an IP wins."""
    pool_ips = {str(ip.address) for ip in pool.spec.ips if not ip.standby}
    caps: list[WarmupCapConfig] = []
    seen: set[str] = set()
    for w in active_warmups(pool, warmups):
        day = warmup_day(w)
        cap = wu.cap_for_day(w.spec.schedule, day)
        for a in w.spec.addresses:
            addr = str(a)
            if addr not in pool_ips or addr in seen:
                continue
            seen.add(addr)
            caps.append(WarmupCapConfig(address=a, provider="*", day=day, daily_cap=cap))
            for provider, share_cap in wu.provider_caps(cap, w.spec.per_provider).items():
                caps.append(
                    WarmupCapConfig(address=a, provider=provider, day=day, daily_cap=share_cap)
                )
    return caps


# --- the engine config -------------------------------------------------------------------------


def dkim_mount(secret: str) -> str:
    return f"{SECRETS_DIR}/dkim/{secret}"


def render_engine_config(
    pool: SendingPool,
    merged: MergedPolicies,
    plans: Sequence[IPPlan],
    caps: Sequence[WarmupCapConfig],
    overflow: Literal["spill", "defer"],
) -> EngineConfig:
    spec = pool.spec
    sub = spec.submission
    submission: dict[str, Any] = {
        "listen": f"0.0.0.0:{sub.port}",
        "maxMessageSize": sub.max_message_size,
        "maxRecipients": sub.max_recipients,
        "trustedNetworks": [str(n) for n in sub.trusted_cidrs],
    }
    if sub.tls_secret_ref:
        submission["tls"] = {
            "certFile": f"{SECRETS_DIR}/tls/tls.crt",
            "keyFile": f"{SECRETS_DIR}/tls/tls.key",
        }
    if sub.auth_secret_ref:
        submission["authUsersFile"] = f"{SECRETS_DIR}/auth/users"
    sending = [p for p in plans if p.state != "standby"]
    hostname = (sending or list(plans))[0].hostname
    data: dict[str, Any] = {
        "hostname": hostname,
        "submission": submission,
        "admin": {"listen": f"0.0.0.0:{ADMIN_PORT}"},
        "spool": {"path": SPOOL_DIR},
        "delivery": {
            "sourceIPs": [
                {"address": p.address, "hostname": p.hostname, "state": p.state, "owner": p.owner}
                for p in plans
            ]
        },
        "dkim": {
            "keys": [
                {
                    "domain": k.domain,
                    "selector": k.selector,
                    "keyFile": f"{dkim_mount(k.secret_ref)}/{k.secret_key}",
                    "algorithm": k.algorithm,
                }
                for k in spec.dkim
            ]
        },
        "shaping": {
            "providers": [p.model_dump(mode="json", by_alias=True) for p in merged.providers],
            "default": merged.default.model_dump(mode="json", by_alias=True),
            "warmup": [c.model_dump(mode="json", by_alias=True) for c in caps],
            "overflow": overflow,
        },
        "logging": {"level": "info", "format": "json"},
    }
    return EngineConfig.model_validate(data)


# libyaml when present: the same text as EngineConfig.to_yaml() at a fifth of the cost, which a
# thousand pools re-rendered on every StatefulSet status change notice.
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def config_yaml(config: EngineConfig) -> str:
    """engine.yaml as EngineConfig.to_yaml() writes it."""
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    text: str = yaml.dump(data, Dumper=_DUMPER, sort_keys=False)
    return text


# --- children ----------------------------------------------------------------------------------


def _meta(pool: SendingPool, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": pool_namespace(pool),
        "labels": child_labels(pool_name(pool)),
        "ownerReferences": [owner_reference(pool)],
    }


# The preStop hook: stop taking mail and deliver what is queued, bounded by the grace period.
_DRAIN_SCRIPT = f"""
import json, time, urllib.request
deadline = time.monotonic() + {TERMINATION_GRACE_SECONDS - 30}
while time.monotonic() < deadline:
    try:
        req = urllib.request.Request("http://127.0.0.1:{ADMIN_PORT}/v1/drain", method="POST")
        with urllib.request.urlopen(req, timeout=10) as rsp:
            if json.load(rsp).get("empty"):
                break
    except Exception:
        pass
    time.sleep(2)
""".strip()


def _resources(spec: SendingPoolSpec) -> dict[str, dict[str, str]]:
    if spec.resources is None:
        return copy.deepcopy(DEFAULT_RESOURCES)
    out: dict[str, dict[str, str]] = {}
    if spec.resources.requests:
        out["requests"] = dict(sorted(spec.resources.requests.items()))
    if spec.resources.limits:
        out["limits"] = dict(sorted(spec.resources.limits.items()))
    return out


def dkim_secrets(spec: SendingPoolSpec) -> list[str]:
    """The distinct DKIM Secrets, in the order the spec first names them."""
    return list(dict.fromkeys(k.secret_ref for k in spec.dkim))


def render_statefulset(pool: SendingPool, replicas: int, image: str) -> dict[str, Any]:
    name = pool_name(pool)
    spec = pool.spec
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{name}-config"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "spool", "mountPath": SPOOL_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    for i, secret in enumerate(dkim_secrets(spec)):
        volumes.append(
            {"name": f"dkim-{i}", "secret": {"secretName": secret, "defaultMode": 0o440}}
        )
        mounts.append({"name": f"dkim-{i}", "mountPath": dkim_mount(secret), "readOnly": True})
    if spec.submission.auth_secret_ref:
        volumes.append(
            {
                "name": "auth",
                "secret": {"secretName": spec.submission.auth_secret_ref, "defaultMode": 0o440},
            }
        )
        mounts.append({"name": "auth", "mountPath": f"{SECRETS_DIR}/auth", "readOnly": True})
    if spec.submission.tls_secret_ref:
        volumes.append(
            {
                "name": "tls",
                "secret": {"secretName": spec.submission.tls_secret_ref, "defaultMode": 0o440},
            }
        )
        mounts.append({"name": "tls", "mountPath": f"{SECRETS_DIR}/tls", "readOnly": True})
    container: dict[str, Any] = {
        "name": "mta",
        "image": spec.image or image,
        "command": ["mailfleet", "mta", "--config", CONFIG_FILE],
        "ports": [
            {"name": "submission", "containerPort": spec.submission.port, "protocol": "TCP"},
            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        "volumeMounts": mounts,
        "resources": _resources(spec),
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "admin"},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "admin"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "lifecycle": {"preStop": {"exec": {"command": ["python3", "-c", _DRAIN_SCRIPT]}}},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    claim: dict[str, Any] = {
        "metadata": {"name": "spool", "labels": selector_labels(name)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.storage.size}},
        },
    }
    if spec.storage.storage_class_name:
        claim["spec"]["storageClassName"] = spec.storage.storage_class_name
    return stamp(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": _meta(pool, name),
            "spec": {
                "replicas": replicas,
                "serviceName": f"{name}-headless",
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": selector_labels(name)},
                "template": {
                    "metadata": {"labels": child_labels(name)},
                    "spec": {
                        "serviceAccountName": f"{name}-mta",
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": RUN_AS,
                            "runAsGroup": RUN_AS,
                            "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [container],
                        "volumes": volumes,
                    },
                },
                "volumeClaimTemplates": [claim],
            },
        }
    )


def render_headless_service(pool: SendingPool) -> dict[str, Any]:
    name = pool_name(pool)
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(pool, f"{name}-headless"),
            "spec": {
                "clusterIP": "None",
                # Pods get their DNS names while still starting, as StatefulSets expect.
                "publishNotReadyAddresses": True,
                "selector": selector_labels(name),
                "ports": [
                    {
                        "name": "submission",
                        "port": pool.spec.submission.port,
                        "targetPort": "submission",
                        "protocol": "TCP",
                    },
                    {
                        "name": "admin",
                        "port": ADMIN_PORT,
                        "targetPort": "admin",
                        "protocol": "TCP",
                    },
                ],
            },
        }
    )


def render_submission_service(pool: SendingPool) -> dict[str, Any]:
    name = pool_name(pool)
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(pool, name),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(name),
                "ports": [
                    {
                        "name": "submission",
                        "port": pool.spec.submission.port,
                        "targetPort": "submission",
                        "protocol": "TCP",
                    }
                ],
            },
        }
    )


def render_configmap(pool: SendingPool, config_text: str) -> dict[str, Any]:
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(pool, f"{pool_name(pool)}-config"),
            "data": {"engine.yaml": config_text},
        }
    )


def render_pdb(pool: SendingPool) -> dict[str, Any]:
    name = pool_name(pool)
    return stamp(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta(pool, name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(name)}},
        }
    )


def render_service_account(pool: SendingPool) -> dict[str, Any]:
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(pool, f"{pool_name(pool)}-mta"),
            "automountServiceAccountToken": False,
        }
    )


# StatefulSet fields the API server refuses to change: a new value is kept out of the update
# (and reported) instead of failing every reconcile.
IMMUTABLE_STATEFULSET_FIELDS = ("volumeClaimTemplates", "selector", "serviceName")


def keep_immutable(
    desired: dict[str, Any], existing: Mapping[str, Any] | None
) -> tuple[dict[str, Any], list[str]]:
    """The StatefulSet to apply given the live one: immutable fields that differ come from the
    live object. Returns it and the names of the fields whose change cannot be applied."""
    if existing is None or desired.get("kind") != "StatefulSet":
        return desired, []
    out = copy.deepcopy(desired)
    live_spec = existing.get("spec", {})
    ignored = []
    for key in IMMUTABLE_STATEFULSET_FIELDS:
        if key in live_spec and not semantically_contains(live_spec[key], out["spec"].get(key)):
            out["spec"][key] = _strip_volume_claim_status(key, live_spec[key])
            ignored.append(f"spec.{key}")
    return out, ignored


def _strip_volume_claim_status(key: str, value: Any) -> Any:
    if key != "volumeClaimTemplates":
        return copy.deepcopy(value)
    claims = copy.deepcopy(value)
    for claim in claims:
        claim.pop("status", None)
        claim.pop("apiVersion", None)
        claim.pop("kind", None)
    return claims


# --- comparing with what exists ----------------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
}


def _quantity(value: object) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if not isinstance(value, str):
        return None
    m = _QUANTITY.match(value)
    if not m or m.group(2) not in _SUFFIX:
        return None
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2)]
    except InvalidOperation:
        return None


def semantically_contains(live: Any, desired: Any) -> bool:
    """Whether the live value holds everything desired sets (fields the server defaulted are
    ignored; lists must match item by item; "0.5" and "500m" are one quantity)."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(k in live and semantically_contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(semantically_contains(a, b) for a, b in zip(live, desired, strict=True))
    if live == desired:
        return True
    if isinstance(desired, str) and isinstance(live, str | int):
        a, b = _quantity(live), _quantity(desired)
        return a is not None and a == b
    return False


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Whether a child must be written: missing, stamped with another hash, or drifted."""
    if live is None:
        return True
    live_meta = live.get("metadata", {})
    want_hash = desired["metadata"]["annotations"][HASH_ANNOTATION]
    if (live_meta.get("annotations") or {}).get(HASH_ANNOTATION) != want_hash:
        return True
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata")}
    meta = {k: desired["metadata"][k] for k in ("labels", "ownerReferences")}
    if desired.get("kind") == "StatefulSet":
        body = {"spec": {k: v for k, v in body["spec"].items() if k != "volumeClaimTemplates"}}
    return not (semantically_contains(live, body) and semantically_contains(live_meta, meta))


@dataclass(frozen=True)
class LiveChild:
    """What the operator keeps of a child it watches: enough to know whether it is the one it
    applied, not the object itself."""

    kind: str
    name: str
    hash: str | None  # the mailfleet.io/config-hash annotation
    # metadata.generation where a controller writes the status (StatefulSet, PDB), else the
    # resourceVersion: it moves only when someone writes the object itself.
    marker: int | None
    # Someone other than the operator (or a controller writing status) manages fields of it:
    # kubectl edit/scale/label, another controller. Only then can the content have drifted
    # away from what its hash says.
    foreign: bool


# The version of a child the operator applied or checked itself: its hash and marker.
Known = tuple[str, int | None]

ChildAction = Literal["skip", "apply", "check"]

STATUS_WRITERS = ("StatefulSet", "PodDisruptionBudget")


def child_marker(kind: str, meta: Mapping[str, Any]) -> int | None:
    raw = meta.get("generation") if kind in STATUS_WRITERS else meta.get("resourceVersion")
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def live_child(kind: str, meta: Mapping[str, Any]) -> LiveChild:
    """A watched child reduced to a LiveChild."""
    foreign = any(
        entry.get("manager") != MANAGER and entry.get("subresource") != "status"
        for entry in meta.get("managedFields") or []
    )
    return LiveChild(
        kind=kind,
        name=str(meta.get("name", "")),
        hash=(meta.get("annotations") or {}).get(HASH_ANNOTATION),
        marker=child_marker(kind, meta),
        foreign=foreign,
    )


def child_action(desired_hash: str, live: LiveChild | None, known: Known | None) -> ChildAction:
    """What to do about one child: nothing, apply it, or read it and compare (check).

    `live` is what the watch last showed (it may lag behind the operator's own writes);
    `known` is the hash and marker of the version the operator last applied or checked, None
    after a restart or once the child was deleted. A child that carries the desired hash and
    that no one else edited is left alone without a request.
    """
    if known is not None and known[0] == desired_hash:
        if live is None or live.marker is None or known[1] is None or live.marker <= known[1]:
            # The watch shows that version or has not caught up with it yet.
            return "skip"
        if live.hash != desired_hash:
            return "apply"
        return "check" if live.foreign else "skip"
    if live is None or live.hash != desired_hash:
        return "apply"
    return "check" if live.foreign else "skip"


# --- status ------------------------------------------------------------------------------------


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def timestamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Cond:
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str


def merge_conditions(
    old: Sequence[Mapping[str, Any]], new: Sequence[Cond], generation: int | None, now: datetime
) -> list[dict[str, Any]]:
    """Conditions in API-convention form; lastTransitionTime moves only when status flips."""
    previous = {c.get("type"): c for c in old}
    out = []
    for c in new:
        before = previous.get(c.type)
        since = (
            before["lastTransitionTime"]
            if before is not None
            and before.get("status") == c.status
            and before.get("lastTransitionTime")
            else timestamp(now)
        )
        item: dict[str, Any] = {
            "type": c.type,
            "status": c.status,
            "reason": c.reason,
            "message": c.message,
            "lastTransitionTime": since,
        }
        if generation is not None:
            item["observedGeneration"] = generation
        out.append(item)
    return out


def condition(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for c in (status or {}).get("conditions", []) or []:
        if c.get("type") == type_:
            return c  # type: ignore[no-any-return]
    return None


@dataclass(frozen=True)
class PoolInputs:
    pool: SendingPool
    policies: Sequence[DeliveryPolicy]  # the namespace's; render selects
    warmups: Sequence[IPWarmup]  # those whose poolRef names the pool
    secrets: frozenset[str]  # names of the Secrets that exist in the namespace
    statefulset_status: Mapping[str, Any] | None  # the live StatefulSet's status
    image: str
    now: datetime


@dataclass(frozen=True)
class RenderedPool:
    children: list[dict[str, Any]]
    config: EngineConfig | None
    config_text: str
    status: dict[str, Any]
    policies: list[str]
    missing_secrets: list[str]
    conflicts: list[str]


def missing_secrets(spec: SendingPoolSpec, secrets: frozenset[str]) -> dict[str, list[str]]:
    """The referenced Secrets that do not exist, by role (dkim, auth, tls)."""
    out: dict[str, list[str]] = {}
    dkim = [s for s in dkim_secrets(spec) if s not in secrets]
    if dkim:
        out["dkim"] = dkim
    for role, ref in (
        ("auth", spec.submission.auth_secret_ref),
        ("tls", spec.submission.tls_secret_ref),
    ):
        if ref and ref not in secrets:
            out[role] = [ref]
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def render_pool(inp: PoolInputs) -> RenderedPool:
    pool = inp.pool
    name = pool_name(pool)
    generation = pool.metadata.get("generation")
    old_status = pool.status.model_dump(mode="json", by_alias=True) if pool.status else {}
    replicas = desired_replicas(pool.spec.replicas)
    selected = select_policies(pool, inp.policies)
    merged = merge_policies(selected)
    plans = plan_ips(pool, inp.warmups, replicas)
    caps = warmup_caps(pool, inp.warmups)
    actives = active_warmups(pool, inp.warmups)
    overflow: Literal["spill", "defer"] = (
        "defer" if any(w.spec.overflow == "defer" for w in actives) else "spill"
    )
    conds: list[Cond] = []
    config: EngineConfig | None
    try:
        config = render_engine_config(pool, merged, plans, caps, overflow)
        config_text = config_yaml(config)
        conds.append(
            Cond(
                "ConfigRendered",
                "True",
                "Rendered",
                f"engine.yaml for generation {generation}: "
                f"{_plural(len(merged.providers), 'provider')}, "
                f"{_plural(len(caps), 'warmup cap')}, {_plural(len(plans), 'source IP')}",
            )
        )
    except ValidationError as e:
        config, config_text = None, ""
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        conds.append(Cond("ConfigRendered", "False", "RenderFailed", f"{where}: {first['msg']}"))

    if not selected:
        conds.append(
            Cond(
                "PoliciesResolved",
                "False",
                "NoPolicySelected",
                "no DeliveryPolicy in the namespace matches spec.policySelector; "
                "the engine's default shaping applies",
            )
        )
    elif merged.conflicts:
        conds.append(
            Cond(
                "PoliciesResolved",
                "True",
                "PolicyConflict",
                f"merged {', '.join(merged.sources)} by name: " + "; ".join(merged.conflicts),
            )
        )
    else:
        conds.append(
            Cond(
                "PoliciesResolved",
                "True",
                "Resolved",
                f"{', '.join(merged.sources)}: {_plural(len(merged.providers), 'provider')}",
            )
        )

    missing = missing_secrets(pool.spec, inp.secrets)
    sts = inp.statefulset_status or {}
    ready_pods = int(sts.get("readyReplicas") or 0)
    pods = int(sts.get("replicas") or 0)
    if missing:
        parts = [f"{role} Secret {', '.join(names)}" for role, names in missing.items()]
        conds.append(
            Cond("SecretsFound", "False", "SecretMissing", "not found: " + "; ".join(parts))
        )
    else:
        conds.append(Cond("SecretsFound", "True", "Found", "every referenced Secret exists"))

    if "dkim" in missing:
        ready = Cond(
            "Ready",
            "False",
            "DKIMSecretMissing",
            f"DKIM Secret {', '.join(missing['dkim'])} not found in namespace "
            f"{pool_namespace(pool)}",
        )
    elif missing:
        role, names = next(iter(missing.items()))
        ready = Cond(
            "Ready",
            "False",
            "SecretMissing",
            f"{role} Secret {', '.join(names)} not found in namespace {pool_namespace(pool)}",
        )
    elif config is None:
        ready = Cond("Ready", "False", "RenderFailed", conds[0].message)
    elif replicas == 0:
        ready = Cond("Ready", "True", "ScaledToZero", "spec.replicas asks for no pods")
    elif ready_pods < replicas:
        ready = Cond(
            "Ready", "False", "PodsNotReady", f"{ready_pods}/{replicas} pods ready ({pods} exist)"
        )
    else:
        ready = Cond("Ready", "True", "PodsReady", f"{ready_pods}/{replicas} pods ready")
    conds.insert(0, ready)

    old_ips = {ip["address"]: ip for ip in old_status.get("ips", [])}
    ips = []
    for p in plans:
        item: dict[str, Any] = {"address": p.address, "state": p.state}
        if p.reason:
            item["reason"] = p.reason
        before = old_ips.get(p.address)
        item["since"] = (
            before["since"]
            if before and before.get("state") == p.state and before.get("since")
            else timestamp(inp.now)
        )
        if p.owner:
            item["pod"] = p.owner
        ips.append(item)

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            old_status.get("conditions", []), conds, generation, inp.now
        ),
        "replicas": pods,
        "readyReplicas": ready_pods,
        "desiredReplicas": replicas,
        "selector": selector_string(name),
        "activeIPs": sum(1 for p in plans if p.state in ("active", "warming")),
        "quarantinedIPs": sum(1 for p in plans if p.state == "quarantined"),
        "ips": ips,
    }
    children: list[dict[str, Any]] = [render_service_account(pool)]
    if config is not None:
        children.append(render_configmap(pool, config_text))
    children += [
        render_headless_service(pool),
        render_submission_service(pool),
        render_pdb(pool),
        render_statefulset(pool, replicas, inp.image),
    ]
    return RenderedPool(
        children=children,
        config=config,
        config_text=config_text,
        status=status,
        policies=merged.sources,
        missing_secrets=[s for names in missing.values() for s in names],
        conflicts=merged.conflicts,
    )


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change any field of the live status it sets."""
    return not semantically_contains(old or {}, dict(new)) or _has_extra_conditions(old, new)


def _has_extra_conditions(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    if "conditions" not in new:
        return False
    return len((old or {}).get("conditions") or []) != len(new["conditions"])


@dataclass(frozen=True)
class EventSpec:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def pool_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[EventSpec]:
    """Events for condition changes an SRE needs to see: Secrets missing and found again,
    policy conflicts, becoming Ready."""
    events: list[EventSpec] = []
    before_ready = condition(old, "Ready")
    after_ready = condition(new, "Ready")
    before_secrets = condition(old, "SecretsFound")
    after_secrets = condition(new, "SecretsFound")
    assert after_ready is not None and after_secrets is not None
    if after_ready["reason"] == "DKIMSecretMissing" and (
        before_ready is None or before_ready.get("message") != after_ready["message"]
    ):
        events.append(EventSpec("Warning", "DKIMSecretMissing", after_ready["message"]))
    elif after_secrets["status"] == "False" and (
        before_secrets is None or before_secrets.get("message") != after_secrets["message"]
    ):
        events.append(EventSpec("Warning", "SecretMissing", after_secrets["message"]))
    if (
        after_secrets["status"] == "True"
        and before_secrets is not None
        and before_secrets.get("status") == "False"
    ):
        events.append(EventSpec("Normal", "SecretsFound", "every referenced Secret exists now"))
    before_pol = condition(old, "PoliciesResolved")
    after_pol = condition(new, "PoliciesResolved")
    if (
        after_pol is not None
        and after_pol["reason"] == "PolicyConflict"
        and (before_pol is None or before_pol.get("message") != after_pol["message"])
    ):
        events.append(EventSpec("Warning", "PolicyConflict", after_pol["message"]))
    if after_ready["reason"] == "RenderFailed" and (
        before_ready is None or before_ready.get("message") != after_ready["message"]
    ):
        events.append(EventSpec("Warning", "RenderFailed", after_ready["message"]))
    return events


# --- DeliveryPolicy and IPWarmup status --------------------------------------------------------


def policy_status(
    policy: DeliveryPolicy, pools: Sequence[SendingPool], now: datetime
) -> dict[str, Any]:
    """providerCount, the pools that select the policy (same namespace), and Ready."""
    ns = str(policy.metadata.get("namespace", "default"))
    labels = policy.metadata.get("labels") or {}
    using = sorted(
        pool_name(p)
        for p in pools
        if pool_namespace(p) == ns and selector_matches(p.spec.policy_selector, labels)
    )
    generation = policy.metadata.get("generation")
    old = policy.status.model_dump(mode="json", by_alias=True) if policy.status else {}
    ready = (
        Cond("Ready", "True", "InUse", f"selected by {_plural(len(using), 'pool')}")
        if using
        else Cond("Ready", "True", "Unused", "no SendingPool selects this policy")
    )
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(old.get("conditions", []), [ready], generation, now),
        "pools": using,
        "poolCount": len(using),
        "providerCount": len(policy.spec.providers),
    }


def warmup_status(warmup: IPWarmup, pool: SendingPool | None, now: datetime) -> dict[str, Any]:
    """phase, day and today's cap; Ready says whether the warmup applies to its pool."""
    generation = warmup.metadata.get("generation")
    old = warmup.status.model_dump(mode="json", by_alias=True) if warmup.status else {}
    phase = warmup_phase(warmup, pool)
    day = warmup_day(warmup)
    ns = str(warmup.metadata.get("namespace", "default"))
    if pool is None:
        ready = Cond(
            "Ready",
            "False",
            "PoolNotFound",
            f"SendingPool {warmup.spec.pool_ref} not found in {ns}",
        )
    else:
        pool_ips = {ip.address for ip in pool.spec.ips}
        outside = [str(a) for a in warmup.spec.addresses if a not in pool_ips]
        if len(outside) == len(warmup.spec.addresses):
            ready = Cond(
                "Ready",
                "False",
                "AddressesNotInPool",
                f"none of the addresses is in SendingPool {warmup.spec.pool_ref}",
            )
        elif outside:
            ready = Cond(
                "Ready",
                "True",
                phase,
                f"not in SendingPool {warmup.spec.pool_ref}: {', '.join(outside)}",
            )
        else:
            ready = Cond(
                "Ready", "True", phase, f"day {day} of {wu.final_day(warmup.spec.schedule)}"
            )
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(old.get("conditions", []), [ready], generation, now),
        "phase": phase,
        "day": day,
        "todayCap": wu.cap_for_day(warmup.spec.schedule, day),
    }
    if phase != "Pending":
        status["startTime"] = old.get("startTime") or timestamp(now)
    return status
