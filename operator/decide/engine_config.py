"""The EngineConfig a pool renders into its ConfigMap (the contract with the engine)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import yaml

from mailfleet.mta.config import (
    EngineConfig,
    PodShareConfig,
    WarmupCapConfig,
)
from mailfleet.operator.api.crd_models import (
    SendingPool,
)
from mailfleet.operator.api.naming import (
    ADMIN_PORT,
    ADMIN_TOKEN_DIR,
    ADMIN_TOKEN_KEY,
    EGRESS_AUTH_DIR,
    EGRESS_TOKEN_KEY,
    SECRETS_DIR,
    SPOOL_DIR,
    dkim_mount,
    engine_processes,
)
from mailfleet.operator.decide.ipplan import IPPlan
from mailfleet.operator.decide.policy_merge import MergedPolicies


def render_engine_config(
    pool: SendingPool,
    merged: MergedPolicies,
    plans: Sequence[IPPlan],
    caps: Sequence[WarmupCapConfig],
    overflow: Literal["spill", "defer"],
    day_length: float = 86400.0,
    sender_restrictions: Sequence[Mapping[str, Any]] = (),
    dmarc_addresses: Sequence[Mapping[str, Any]] = (),
    shares: Sequence[PodShareConfig] = (),
    held: frozenset[str] = frozenset(),
    proxies: Mapping[str, str] | None = None,
) -> EngineConfig:
    """`proxies`: with egress managed, the proxy URL of each placed address (egressplan)."""
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
    if engine_processes(spec) > 1:
        # The pod's engine processes share the port (the command says how many).
        submission["reusePort"] = True
    egress: dict[str, Any] = {"mode": spec.egress.mode, "proxy": spec.egress.proxy}
    if spec.egress.mode == "managed":
        # Each placed address names its proxy; an unplaced one is held (render.py).
        egress = {"mode": "bind", "authFile": f"{EGRESS_AUTH_DIR}/{EGRESS_TOKEN_KEY}"}
    elif spec.egress.mode == "hostNetwork":
        egress = {"mode": "bind"}  # the pod is in its node's network: it binds them
    sending = [p for p in plans if p.state != "standby"]
    hostname = (sending or list(plans))[0].hostname
    data: dict[str, Any] = {
        "hostname": hostname,
        "submission": submission,
        # Pods pass --listen-address $(POD_IP): the host part here is for the file alone.
        "admin": {
            "listen": f"0.0.0.0:{ADMIN_PORT}",
            "tokenFile": f"{ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}",
        },
        "routing": {
            "routes": dict(spec.routing.routes),
            "mxPort": spec.routing.mx_port,
            "dns": {
                "nameservers": [str(a) for a in spec.routing.dns.nameservers],
                "port": spec.routing.dns.port,
            },
            "allowPrivateMX": spec.routing.allow_private_mx,
        },
        "spool": {"path": SPOOL_DIR},
        "delivery": {
            "sourceIPs": [
                {
                    "address": p.address,
                    "hostname": p.hostname,
                    "state": p.state,
                    "owner": p.owner,
                    **({"hold": True} if p.address in held else {}),
                    **({"proxy": proxies[p.address]} if proxies and p.address in proxies else {}),
                }
                for p in plans
            ],
            "egress": egress,
            # SendingDomains with onFailingIP: StopSending (domainplan.sender_restrictions).
            "senderRestrictions": list(sender_restrictions),
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
            "dayLength": day_length,
        },
        "logging": {"level": "info", "format": "json"},
    }
    if shares or spec.fleet_limits.redis_url:
        data["fleet"] = {
            "redisURL": spec.fleet_limits.redis_url,
            "namespace": f"{pool.metadata.get('namespace', 'default')}/{pool.metadata['name']}",
            "shares": [s.model_dump(mode="json", by_alias=True) for s in shares],
        }
    if dmarc_addresses:
        # Forwarded to the operator with the pool's admin token, which it knows.
        data["dmarcReports"] = {
            "addresses": list(dmarc_addresses),
            "tokenFile": f"{ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}",
        }
    return EngineConfig.model_validate(data)


# libyaml when present: the same text as EngineConfig.to_yaml() at a fifth of the cost, which a
# thousand pools re-rendered on every StatefulSet status change notice.
_BASE_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_BASE_DUMPER):  # type: ignore[misc]
    """Never anchors and aliases: the engine refuses aliases in its config (billion laughs)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_DUMPER: Any = _Dumper


def config_yaml(config: EngineConfig) -> str:
    """engine.yaml as EngineConfig.to_yaml() writes it."""
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    text: str = yaml.dump(data, Dumper=_DUMPER, sort_keys=False)
    return text
