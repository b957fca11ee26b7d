"""Kopf wiring: indexes of what the reconciler reads, and watch events handed to it.

Watch events only (no on.create/update handlers), so Kopf stores nothing on our objects and
puts no finalizers on them; children go with their pool by ownerReference garbage collection.
All logic and memory is in reconciler.Operator, built at startup with the real clients from
the settings the command line put into Kopf's memo (settings.Memo): no module globals.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from mailfleet.operator import dmarcserver
from mailfleet.operator.api import naming
from mailfleet.operator.api.crd_models import GROUP, VERSION
from mailfleet.operator.clients import kube
from mailfleet.operator.clients.engine_admin import EngineAdmin
from mailfleet.operator.decide import pods
from mailfleet.operator.domainmetrics import DomainMetrics
from mailfleet.operator.loops.domains import DomainController
from mailfleet.operator.loops.reconciler import (
    Indexes,
    LiveStatefulSet,
    Operator,
    PoolKey,
    live_statefulset,
    slim,
)
from mailfleet.operator.settings import Memo

log = logging.getLogger("mailfleet.operator")

MANAGED = {"app.kubernetes.io/managed-by": naming.MANAGER}


def login_fn(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """In a pod: its service account; elsewhere: KUBECONFIG / ~/.kube/config."""
    info = kopf.login_with_service_account(settings=settings)
    if info is not None:
        return dataclasses.replace(info, server=in_cluster_server(os.environ, info.server))
    return kopf.login_with_kubeconfig(settings=settings)


def in_cluster_server(env: Mapping[str, str], default: str) -> str:
    """The API server as the kubelet tells every pod (as client-go's InClusterConfig reads it):
    Kopf's own guess, https://kubernetes.default.svc, needs cluster DNS, which pods with
    dnsPolicy Default or hostNetwork (and the local node of hack/cluster.py) do not have."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return default
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Memo, **_: Any) -> None:
    """Builds the operator from what the command line put into the memo (kopf.run(memo=...))."""
    conf = memo.settings
    conf.kopf_settings = settings
    settings.posting.reporting_component = naming.MANAGER
    settings.posting.reporting_instance = os.environ.get("POD_NAME") or os.uname().nodename
    conf.instance = settings.posting.reporting_instance
    # Watches end server-side after 5 minutes and are re-established; a silent connection is
    # dropped after 10.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    # Only what the operator manages comes over the StatefulSet and Pod watches.
    settings.watching.label_selectors["apps", "statefulsets"] = (
        f"app.kubernetes.io/managed-by={naming.MANAGER}"
    )
    # The CRDs are installed before the operator: no CRD or namespace watch (nor the RBAC).
    settings.scanning.disabled = True
    settings.execution.max_workers = 4
    settings.peering.mandatory = conf.peering_mandatory
    # Events are posted explicitly (post_event); Kopf's own per-object INFO logs stay logs.
    settings.posting.level = logging.WARNING

    async def login() -> kopf.ConnectionInfo | None:
        return login_fn(conf.kopf_settings or kopf.OperatorSettings())

    op = Operator(
        kube.KubeClient(login, conf.metrics),
        conf.post_event,
        engines=EngineAdmin(),
        metrics=conf.metrics,
        image=conf.image,
    )
    conf.operator = op
    op.dmarc_url = conf.dmarc_url if conf.dmarc is not None else None
    conf.domains = DomainController(
        op.api, conf.post_event, DomainMetrics(conf.metrics.registry), default_dns=conf.dns
    )
    op.start()
    if conf.dmarc is not None:
        host, port, token = conf.dmarc
        conf.dmarc_runner = await dmarcserver.start(conf.domains, host, port, token)


@kopf.on.cleanup()
async def cleanup(memo: Memo, **_: Any) -> None:
    conf = memo.settings
    op = conf.operator
    if op is None:
        return
    await op.close()
    if conf.dmarc_runner is not None:
        await conf.dmarc_runner.cleanup()
    if conf.domains is not None:
        await conf.domains.close()
    if isinstance(op.api, kube.KubeClient):
        await op.api.close()
    if isinstance(op.engines, EngineAdmin):
        await op.engines.close()


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    return login_fn(settings)


# --- indexes -----------------------------------------------------------------------------------


@kopf.index(GROUP, VERSION, "sendingpools")
def pool_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[PoolKey, Any]:
    return {(namespace or "", name): slim(body)}


@kopf.index(GROUP, VERSION, "deliverypolicies")
def policy_index(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {namespace or "": slim(body)}


@kopf.index(GROUP, VERSION, "ipwarmups")
def warmup_index(
    namespace: str | None, spec: kopf.Spec, body: kopf.Body, **_: Any
) -> dict[PoolKey, Any]:
    return {(namespace or "", str(spec.get("poolRef", ""))): slim(body)}


@kopf.index("v1", "secrets")
def secret_index(namespace: str | None, name: str, **_: Any) -> dict[str, str]:
    # Names only: Secret contents never enter the operator's memory beyond the watch itself,
    # but for the pools' admin tokens (admin_token_index).
    return {namespace or "": name}


@kopf.index("v1", "secrets", labels={naming.ADMIN_TOKEN_LABEL: kopf.PRESENT})
def admin_token_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[PoolKey, str]:
    import base64

    raw = (body.get("data") or {}).get(naming.ADMIN_TOKEN_KEY)
    if not raw:
        return {}
    token = base64.b64decode(raw).decode(errors="replace").strip()
    return {(namespace or "", str(labels[naming.ADMIN_TOKEN_LABEL])): token}


@kopf.index("apps", "v1", "statefulsets", labels=MANAGED)
def statefulset_index(
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    **_: Any,
) -> dict[PoolKey, LiveStatefulSet]:
    # What the pool's status and the apply decision need, not the object.
    return {(namespace or "", name): live_statefulset(meta, status, spec)}


@kopf.index("v1", "pods", labels=MANAGED)
def pod_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[PoolKey, pods.PodRef]:
    pool = labels.get("app.kubernetes.io/instance")
    return {(namespace or "", str(pool)): pods.pod_ref(body)} if pool else {}


@kopf.index(GROUP, VERSION, "sendingdomains")
def domain_index(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {namespace or "": slim(body)}


def _operator(memo: Memo) -> Operator:
    return memo.settings.the_operator()


def _indexes(memo: Memo, kwargs: Mapping[str, Any]) -> Indexes:
    return _operator(memo).use(
        Indexes(
            pools=kwargs["pool_index"],
            policies=kwargs["policy_index"],
            warmups=kwargs["warmup_index"],
            secrets=kwargs["secret_index"],
            statefulsets=kwargs["statefulset_index"],
            admin_tokens=kwargs["admin_token_index"],
            pods=kwargs["pod_index"],
            domains=kwargs["domain_index"],
        )
    )


# --- watch handlers ----------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "sendingpools")
async def pool_event(
    event: kopf.RawEvent, namespace: str | None, name: str, memo: Memo, **kwargs: Any
) -> None:
    idx = _indexes(memo, kwargs)
    await _operator(memo).on_pool(idx, event["type"], namespace or "", name, kwargs["meta"])


@kopf.on.event(GROUP, VERSION, "deliverypolicies")
async def policy_event(
    event: kopf.RawEvent,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    memo: Memo,
    **kwargs: Any,
) -> None:
    idx = _indexes(memo, kwargs)
    await _operator(memo).on_policy(idx, event["type"], namespace or "", name, body)


@kopf.on.event(GROUP, VERSION, "ipwarmups")
async def warmup_event(
    event: kopf.RawEvent,
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    memo: Memo,
    **kwargs: Any,
) -> None:
    idx = _indexes(memo, kwargs)
    pool = str(spec.get("poolRef", ""))
    await _operator(memo).on_warmup(idx, event["type"], namespace or "", name, pool, kwargs["meta"])


@kopf.on.event("v1", "secrets")
async def secret_event(namespace: str | None, name: str, memo: Memo, **kwargs: Any) -> None:
    idx = _indexes(memo, kwargs)
    await _operator(memo).on_secret(idx, namespace or "", name)


@kopf.on.event("apps", "v1", "statefulsets", labels=MANAGED)
async def statefulset_event(
    event: kopf.RawEvent,
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    status: kopf.Status,
    memo: Memo,
    **kwargs: Any,
) -> None:
    idx = _indexes(memo, kwargs)
    await _operator(memo).on_statefulset(idx, event["type"], namespace or "", name, meta, status)


@kopf.on.event("v1", "pods", labels=MANAGED)
async def pod_event(
    event: kopf.RawEvent,
    namespace: str | None,
    labels: kopf.Labels,
    body: kopf.Body,
    memo: Memo,
    **kwargs: Any,
) -> None:
    if event["type"] is None:
        return
    pool = labels.get("app.kubernetes.io/instance")
    if not pool:
        return
    ref = pods.pod_ref(body)
    if event["type"] == "DELETED" or ref.ready or ref.deleting:
        idx = _indexes(memo, kwargs)
        await _operator(memo).on_pod(idx, namespace or "", str(pool))


@kopf.on.event(GROUP, VERSION, "sendingdomains")
async def domain_event(
    event: kopf.RawEvent,
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    memo: Memo,
    **kwargs: Any,
) -> None:
    domains = memo.settings.domains
    assert domains is not None, "the domain controller starts in configure()"
    domains.on_event(event["type"], namespace or "", name, meta)
    # The pools sign with the domain's active keys: re-render those of the namespace (a
    # reconcile with nothing new writes nothing).
    idx = _indexes(memo, kwargs)
    op = _operator(memo)
    if event["type"] == "DELETED":
        op.on_domain_deleted(namespace or "", name)
    await op.reconcile_all(idx, op.pool_keys(idx, namespace or ""))
