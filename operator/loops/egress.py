"""The egress proxies of `egress: managed` pools: one per node that holds an address such a
pool sends from, in the operator's namespace, re-synced whenever a node's addresses, a managed
pool or a pool's credentials change (a burst of changes is one sync)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import yaml

from mailfleet.mta.config import EgressProxyConfig
from mailfleet.operator.api.crd_models import SendingPool
from mailfleet.operator.api.naming import HASH_ANNOTATION
from mailfleet.operator.clients import kube
from mailfleet.operator.decide import egressplan
from mailfleet.operator.decide.drift import stamp
from mailfleet.operator.decide.watched import Indexes

log = logging.getLogger("mailfleet.operator.egress")

# A burst of watch events (a hundred pools created, a node relabelled) is one sync.
DEBOUNCE_SECONDS = 1.0


@runtime_checkable
class EgressApi(Protocol):
    async def apply(self, res: kube.Resource, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    async def list_names(self, res: kube.Resource, namespace: str, selector: str) -> list[str]: ...
    async def delete(self, res: kube.Resource, namespace: str, name: str) -> bool: ...


@dataclass(frozen=True)
class EgressSettings:
    namespace: str  # where the proxies run (the operator's own)
    image: str
    port: int = egressplan.EGRESS_PORT
    admin_port: int = egressplan.EGRESS_ADMIN_PORT


def egress_users(
    pools: list[tuple[tuple[str, str], SendingPool]], idx: Indexes
) -> list[egressplan.EgressUser]:
    """The managed pools whose credentials exist, with where their addresses are."""
    nodes = idx.node_addresses()
    users = []
    for key, pool in pools:
        if pool.spec.egress.mode != "managed":
            continue
        token = idx.egress_token(key)
        if token is None:
            continue  # its Secret is created by its reconcile; the index event syncs again
        placement = egressplan.place((str(ip.address) for ip in pool.spec.ips), nodes)
        users.append(egressplan.egress_user(pool, placement, token))
    return users


def render_proxies(
    users: list[egressplan.EgressUser], conf: EgressSettings
) -> dict[str, list[dict[str, Any]]]:
    """Node -> its proxy's ConfigMap and Deployment, stamped with their hash."""
    out: dict[str, list[dict[str, Any]]] = {}
    for node, data in egressplan.proxy_configs(users, conf.port, conf.admin_port).items():
        config = EgressProxyConfig.model_validate(data)
        text = yaml.safe_dump(
            config.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False
        )
        cm = stamp(egressplan.render_proxy_configmap(node, conf.namespace, text))
        deploy = stamp(
            egressplan.render_proxy_deployment(
                node, conf.namespace, conf.image, conf.port, conf.admin_port
            )
        )
        out[node] = [cm, deploy]
    return out


class EgressProxies:
    def __init__(
        self,
        api: EgressApi,
        conf: EgressSettings,
        pools: Callable[[Indexes], list[tuple[tuple[str, str], SendingPool]]],
    ) -> None:
        self.api = api
        self.conf = conf
        self.pools = pools
        self.applied: dict[tuple[str, str], str] = {}  # (kind, name) -> hash applied
        self.known: set[str] | None = None  # proxy names that exist (None: not listed yet)
        self._wake = asyncio.Event()
        self._idx: Indexes | None = None

    def schedule(self, idx: Indexes) -> None:
        self._idx = idx
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(DEBOUNCE_SECONDS)
            self._wake.clear()
            if self._idx is None:
                continue
            try:
                await self.sync(self._idx)
            except Exception:
                log.exception("egress proxies: sync failed; retrying in 10 s")
                await asyncio.sleep(10)
                self._wake.set()

    async def sync(self, idx: Indexes) -> None:
        pools = self.pools(idx)
        if self.known is None and not any(p.spec.egress.mode == "managed" for _, p in pools):
            # No managed pool since the operator started: nothing to run, nothing read. (Proxies
            # left from before are found and removed once a managed pool appears.)
            return
        users = egress_users(pools, idx)
        wanted = render_proxies(users, self.conf)
        selector = f"app.kubernetes.io/name={egressplan.EGRESS_APP}"
        if self.known is None:
            self.known = set(
                await self.api.list_names(kube.DEPLOYMENTS, self.conf.namespace, selector)
            ) | set(await self.api.list_names(kube.CONFIGMAPS, self.conf.namespace, selector))
        names = set()
        for children in wanted.values():
            for child in children:
                name = child["metadata"]["name"]
                names.add(name)
                want = child["metadata"]["annotations"][HASH_ANNOTATION]
                if self.applied.get((child["kind"], name)) == want:
                    continue
                await self.api.apply(kube.BY_KIND[child["kind"]], child)
                self.applied[(child["kind"], name)] = want
                log.info("egress proxy %s: applied %s", name, child["kind"])
        for name in sorted(self.known - names):
            for res in (kube.DEPLOYMENTS, kube.CONFIGMAPS):
                await self.api.delete(res, self.conf.namespace, name)
                self.applied.pop((res.kind, name), None)
            log.info("egress proxy %s: deleted (its node holds no managed pool's address)", name)
        self.known = names
