"""Cross-object checks the CRD schemas and CEL cannot make (they see one object at a time):
what the admission webhook (mailfleet.operator.webhook) refuses or warns about.

Pure: each check takes the object under admission and the objects it relates to (as the
API server returns them) and returns a Verdict; messages name the field at fault.

- An address claimed by two SendingPools (in any namespace): refused, since
  both pools would send from it, each pacing and warming it as if it were alone.
- An IPWarmup address that is not in its pool: refused (nothing would warm it). A pool that does
  not exist yet is a warning: GitOps tools apply in any order.
- A SendingPool whose spec.policySelector matches no DeliveryPolicy, and a DeliveryPolicy no
  pool selects: warnings (the engine's default shaping applies; the policy does nothing).
- A DKIM (or submission) Secret a pool names that does not exist, a pool a SendingDomain lists
  that does not exist: warnings (the pool is not Ready until it does).

On UPDATE, an error the old object had already is a warning: an object admitted before the
webhook existed can still be edited (to fix it, among other things).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailfleet.operator.api.crd_models import LabelSelector
from mailfleet.operator.decide.policy_merge import selector_matches

Body = Mapping[str, Any]


@dataclass
class Verdict:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _canonical(address: object) -> str:
    """2001:db8::10 and 2001:db8:0:0::10 are one address."""
    try:
        return str(ipaddress.ip_address(str(address)))
    except ValueError:
        return str(address)


def _ns(body: Body) -> str:
    return str(body.get("metadata", {}).get("namespace") or "")


def _name(body: Body) -> str:
    return str(body.get("metadata", {}).get("name") or "")


def _spec(body: Body) -> Mapping[str, Any]:
    spec = body.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _same(a: Body, b: Body) -> bool:
    return _ns(a) == _ns(b) and _name(a) == _name(b)


def _selector(raw: object) -> LabelSelector | None:
    if not isinstance(raw, Mapping):
        return None
    try:
        return LabelSelector.model_validate(raw)
    except ValueError:
        return None  # the schema refuses it with its own message


def ip_claims(pool: Body, others: Iterable[Body]) -> list[str]:
    """spec.ips[i].address that another pool lists too."""
    owners: dict[str, str] = {}
    for other in others:
        if _same(other, pool):
            continue
        for ip in _spec(other).get("ips") or []:
            owners.setdefault(_canonical(ip.get("address")), f"{_ns(other)}/{_name(other)}")
    out = []
    for i, ip in enumerate(_spec(pool).get("ips") or []):
        owner = owners.get(_canonical(ip.get("address")))
        if owner is not None:
            out.append(
                f"spec.ips[{i}].address: {ip.get('address')} is already claimed by "
                f"SendingPool {owner}; an address belongs to one pool"
            )
    return out


def check_pool(
    pool: Body,
    all_pools: Iterable[Body],
    policies: Sequence[Body],
    secrets: Iterable[str],
) -> Verdict:
    """`all_pools`: every pool the operator serves; `policies`, `secrets`: the pool's namespace."""
    v = Verdict(errors=ip_claims(pool, all_pools))
    spec = _spec(pool)
    ns = _ns(pool)
    selector = _selector(spec.get("policySelector"))
    if policies and not any(
        selector_matches(selector, p.get("metadata", {}).get("labels") or {}) for p in policies
    ):
        v.warnings.append(
            f"spec.policySelector matches none of the {len(policies)} DeliveryPolicies in "
            f"namespace {ns}: the engine's default shaping applies"
        )
    elif not policies:
        v.warnings.append(
            f"spec.policySelector: namespace {ns} has no DeliveryPolicy: the engine's default "
            "shaping applies"
        )
    present = set(secrets)
    for i, key in enumerate(spec.get("dkim") or []):
        ref = key.get("secretRef")
        if ref and ref not in present:
            v.warnings.append(
                f"spec.dkim[{i}].secretRef: Secret {ref} does not exist in namespace {ns}; "
                "the pool is not Ready until it does"
            )
    sub = spec.get("submission") or {}
    for fld in ("authSecretRef", "tlsSecretRef"):
        ref = sub.get(fld)
        if ref and ref not in present:
            v.warnings.append(
                f"spec.submission.{fld}: Secret {ref} does not exist in namespace {ns}; "
                "the pool is not Ready until it does"
            )
    return v


def check_warmup(warmup: Body, pool: Body | None) -> Verdict:
    """`pool`: the SendingPool spec.poolRef names (same namespace), None if there is none."""
    spec = _spec(warmup)
    ref = spec.get("poolRef")
    if pool is None:
        return Verdict(
            warnings=[
                f"spec.poolRef: SendingPool {ref} does not exist in namespace {_ns(warmup)} "
                "(yet): the warmup waits for it"
            ]
        )
    in_pool = {_canonical(ip.get("address")) for ip in _spec(pool).get("ips") or []}
    errors = [
        f"spec.addresses[{i}]: {a} is not an address of SendingPool {ref} (its spec.ips)"
        for i, a in enumerate(spec.get("addresses") or [])
        if _canonical(a) not in in_pool
    ]
    return Verdict(errors=errors)


def check_policy(policy: Body, pools: Iterable[Body]) -> Verdict:
    """`pools`: the SendingPools of the policy's namespace."""
    labels = policy.get("metadata", {}).get("labels") or {}
    if any(selector_matches(_selector(_spec(p).get("policySelector")), labels) for p in pools):
        return Verdict()
    return Verdict(
        warnings=[
            f"metadata.labels: no SendingPool in namespace {_ns(policy)} selects this policy "
            "(spec.policySelector): it applies to no mail"
        ]
    )


def check_domain(domain: Body, pool_names: Iterable[str]) -> Verdict:
    """`pool_names`: the SendingPools of the domain's namespace."""
    present = set(pool_names)
    return Verdict(
        warnings=[
            f"spec.pools[{i}]: SendingPool {p} does not exist in namespace {_ns(domain)}"
            for i, p in enumerate(_spec(domain).get("pools") or [])
            if p not in present
        ]
    )


def on_update(new: Verdict, old: Verdict | None) -> Verdict:
    """An error the old object had already is only a warning (it was admitted before)."""
    if old is None:
        return new
    known = set(old.errors)
    return Verdict(
        errors=[e for e in new.errors if e not in known],
        warnings=[*[e for e in new.errors if e in known], *new.warnings],
    )
