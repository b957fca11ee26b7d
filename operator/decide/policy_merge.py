"""Which DeliveryPolicies a pool selects, and how they merge into one set of providers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mailfleet.mta.config import (
    ProviderConfig,
    ProviderSettingsConfig,
)
from mailfleet.operator.api.crd_models import (
    DeliveryPolicy,
    LabelSelector,
    SendingPool,
)
from mailfleet.operator.api.naming import pool_namespace


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
