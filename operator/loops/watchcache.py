"""What the operator knows of the watched objects: its own caches, filled by a LIST of every kind
before the watches start and kept current by the watch handlers.

Not Kopf indexes: while the initial listings arrive, Kopf 1.45 holds every handler behind a
readiness barrier with one toggle per indexed object, and each new toggle wakes every waiting
object worker, which re-checks every toggle: at 10,000 pools (and their StatefulSets, Secrets and
pods) no handler ran in nine minutes (docs/performance.md). A LIST per kind at startup gives the
same guarantee (a pool is never reconciled against a half-listed world: no spurious
SecretMissing, no StatefulSet taken for absent) in one round trip per 500 objects.

Each kind's entry function says under which key an object is grouped and what is kept of it
(slim bodies, LiveStatefulSets, PodRefs, token digests: never a Secret's data otherwise).
"""

from __future__ import annotations

import base64
import fnmatch
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from mailfleet.operator.api import naming
from mailfleet.operator.api.crd_models import GROUP, VERSION
from mailfleet.operator.decide import egressplan, pods
from mailfleet.operator.decide.watched import Indexes, live_statefulset, slim

log = logging.getLogger("mailfleet.operator.cache")

K = TypeVar("K")
V = TypeVar("V")
ObjKey = tuple[str, str]  # (namespace, name) of a watched object
Entry = tuple[Any, Any] | list[tuple[Any, Any]] | None  # (group key, what is kept), several, none


class Grouped(Mapping[K, Collection[V]], Generic[K, V]):
    """A live view of a cache as an index: group key -> the values grouped under it."""

    def __init__(self, groups: dict[K, dict[ObjKey, V]]) -> None:
        self._groups = groups

    def __getitem__(self, key: K) -> Collection[V]:
        return self._groups[key].values()

    def __iter__(self) -> Iterator[K]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def __contains__(self, key: object) -> bool:
        return key in self._groups


def _ns(body: Mapping[str, Any]) -> str:
    return str(body.get("metadata", {}).get("namespace") or "")


def _name(body: Mapping[str, Any]) -> str:
    return str(body.get("metadata", {}).get("name") or "")


def _labels(body: Mapping[str, Any]) -> Mapping[str, str]:
    return body.get("metadata", {}).get("labels") or {}


def _secret_value(body: Mapping[str, Any], key: str) -> str | None:
    raw = (body.get("data") or {}).get(key)
    return base64.b64decode(raw).decode(errors="replace") if raw else None


def pool_entry(body: Mapping[str, Any]) -> Entry:
    return (_ns(body), _name(body)), slim(body)


def secret_refs_entry(body: Mapping[str, Any]) -> Entry:
    """(namespace, Secret) -> the pools that mount it (their DKIM, AUTH, TLS and admin token
    Secrets): a Secret's event re-renders those pools without looking at every pool."""
    spec = body.get("spec") or {}
    sub = spec.get("submission") or {}
    name, ns = _name(body), _ns(body)
    refs = {str(k["secretRef"]) for k in spec.get("dkim") or [] if k.get("secretRef")}
    refs |= {str(sub[f]) for f in ("authSecretRef", "tlsSecretRef") if sub.get(f)}
    refs.add(naming.admin_secret_name(name))
    return [((ns, r), name) for r in sorted(refs)]


def by_namespace_entry(body: Mapping[str, Any]) -> Entry:
    return _ns(body), slim(body)


def warmup_entry(body: Mapping[str, Any]) -> Entry:
    return (_ns(body), str((body.get("spec") or {}).get("poolRef", ""))), slim(body)


def secret_name_entry(body: Mapping[str, Any]) -> Entry:
    return _ns(body), _name(body)


def admin_token_entry(body: Mapping[str, Any]) -> Entry:
    pool = _labels(body).get(naming.ADMIN_TOKEN_LABEL)
    token = _secret_value(body, naming.ADMIN_TOKEN_KEY)
    return ((_ns(body), str(pool)), token.strip()) if pool and token else None


def egress_token_entry(body: Mapping[str, Any]) -> Entry:
    # The SHA-256 of the pool's proxy password, all its proxies need: the password stays in
    # the Secret its pods mount.
    pool = _labels(body).get(naming.EGRESS_TOKEN_LABEL)
    credentials = _secret_value(body, naming.EGRESS_TOKEN_KEY)
    if not pool or credentials is None:
        return None
    return (_ns(body), str(pool)), egressplan.token_digest(credentials)


def node_entry(body: Mapping[str, Any]) -> Entry:
    annotations = body.get("metadata", {}).get("annotations") or {}
    value = annotations.get(naming.SENDING_ADDRESSES_ANNOTATION)
    # Every node, with its sending addresses or none: whether it is Ready says which pool pods
    # are stranded on it.
    conditions = (body.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    # A node never seen Ready (no status yet) counts as not Ready.
    return _name(body), egressplan.parse_node_addresses(value, ready)


def statefulset_entry(body: Mapping[str, Any]) -> Entry:
    if _labels(body).get("app.kubernetes.io/managed-by") != naming.MANAGER:
        return None
    live = live_statefulset(body.get("metadata", {}), body.get("status") or {}, body.get("spec"))
    return (_ns(body), _name(body)), live


def pod_entry(body: Mapping[str, Any]) -> Entry:
    labels = _labels(body)
    pool = labels.get("app.kubernetes.io/instance")
    if labels.get("app.kubernetes.io/managed-by") != naming.MANAGER or not pool:
        return None
    return (_ns(body), str(pool)), pods.pod_ref(body)


@dataclass(frozen=True)
class Kind:
    """A watched kind: its API path parts and the caches an object of it feeds."""

    group: str
    version: str
    plural: str
    kind: str
    caches: tuple[tuple[str, Callable[[Mapping[str, Any]], Entry]], ...]
    namespaced: bool = True
    selector: str | None = None

    def path(self, namespace: str | None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        return (
            f"{base}/namespaces/{namespace}/{self.plural}" if namespace else f"{base}/{self.plural}"
        )


MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={naming.MANAGER}"
KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind(
            GROUP,
            VERSION,
            "sendingpools",
            "SendingPool",
            (("pools", pool_entry), ("secret_refs", secret_refs_entry)),
        ),
        Kind(
            GROUP,
            VERSION,
            "deliverypolicies",
            "DeliveryPolicy",
            (("policies", by_namespace_entry),),
        ),
        Kind(GROUP, VERSION, "ipwarmups", "IPWarmup", (("warmups", warmup_entry),)),
        Kind(GROUP, VERSION, "sendingdomains", "SendingDomain", (("domains", by_namespace_entry),)),
        Kind(
            "",
            "v1",
            "secrets",
            "Secret",
            (
                ("secrets", secret_name_entry),
                ("admin_tokens", admin_token_entry),
                ("egress_tokens", egress_token_entry),
            ),
        ),
        Kind(
            "apps",
            "v1",
            "statefulsets",
            "StatefulSet",
            (("statefulsets", statefulset_entry),),
            selector=MANAGED_SELECTOR,
        ),
        Kind("", "v1", "pods", "Pod", (("pods", pod_entry),), selector=MANAGED_SELECTOR),
        Kind("", "v1", "nodes", "Node", (("nodes", node_entry),), namespaced=False),
    )
}
CACHES = ("pools", "policies", "warmups", "secrets", "statefulsets", "admin_tokens", "pods",
          "domains", "nodes", "egress_tokens", "secret_refs")  # fmt: skip


class ListApi(Protocol):
    async def request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None
    ) -> tuple[int, Any]: ...


class WatchCache:
    def __init__(self) -> None:
        self._groups: dict[str, dict[Any, dict[ObjKey, Any]]] = {c: {} for c in CACHES}
        # Where each object sits in each cache (its group keys can change: a warmup's poolRef).
        self._where: dict[str, dict[ObjKey, list[Any]]] = {c: {} for c in CACHES}
        self.indexes = Indexes(**{c: Grouped(self._groups[c]) for c in CACHES})

    def update(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event (or a listed object, event_type None) of `kind`."""
        key = (_ns(body), _name(body))
        for cache, entry_of in KINDS[kind].caches:
            groups, where = self._groups[cache], self._where[cache]
            for old in where.pop(key, []):
                group = groups.get(old)
                if group is not None:
                    group.pop(key, None)
                    if not group:
                        del groups[old]
            entry = None if event_type == "DELETED" else entry_of(body)
            entries = [] if entry is None else entry if isinstance(entry, list) else [entry]
            for group_key, value in entries:
                groups.setdefault(group_key, {})[key] = value
            if entries:
                where[key] = [g for g, _ in entries]

    def size(self, cache: str) -> int:
        return len(self._where[cache])

    async def prime(self, api: ListApi, namespaces: Sequence[str]) -> None:
        """LIST every kind (in the served namespaces; nodes cluster-wide) into the caches."""
        plain = [n for n in namespaces if not any(c in n for c in "*?[!")]
        scopes: list[str | None] = (
            list(plain) if namespaces and plain == list(namespaces) else [None]
        )
        for kind in KINDS.values():
            for ns in scopes if kind.namespaced else [None]:
                async for item in _list(api, kind, ns):
                    outside = kind.namespaced and ns is None and namespaces
                    if outside and not served(_ns(item), namespaces):
                        continue
                    item.setdefault("apiVersion", f"{kind.group}/{kind.version}".lstrip("/"))
                    item.setdefault("kind", kind.kind)
                    self.update(kind.kind, None, item)
        log.info(
            "caches primed: %s",
            ", ".join(f"{self.size(c)} {c}" for c in CACHES if self.size(c)),
        )


def served(namespace: str, patterns: Sequence[str]) -> bool:
    """Whether Kopf's --namespace patterns serve a namespace: any pattern does; within one,
    comma-separated globs, `!` excludes, the rightmost match wins and a first glob that does
    not match decides (as Kopf reads them)."""
    return any(_serves(namespace, p) for p in patterns)


def _serves(namespace: str, pattern: str) -> bool:
    parts = pattern.split(",")
    first = parts[0]
    if not first.startswith("!") and not fnmatch.fnmatchcase(namespace, first):
        return False
    result = True
    for part in parts:
        if fnmatch.fnmatchcase(namespace, part.lstrip("!")):
            result = not part.startswith("!")
    return result


async def _list(api: ListApi, kind: Kind, namespace: str | None) -> Any:
    params: dict[str, str] = {"limit": "500"}
    if kind.selector:
        params["labelSelector"] = kind.selector
    while True:
        status, payload = await api.request("GET", kind.path(namespace), params=params)
        if status == 404 or not isinstance(payload, dict):
            return
        for item in payload.get("items", []):
            yield item
        token = (payload.get("metadata") or {}).get("continue")
        if not token:
            return
        params["continue"] = token
