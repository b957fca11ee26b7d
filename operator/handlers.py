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
from mailfleet.operator.loops.egress import EgressSettings
from mailfleet.operator.loops.reconciler import (
    Indexes,
    Operator,
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
        egress=EgressSettings(
            conf.egress_namespace, conf.image, conf.egress_port, conf.egress_admin_port
        ),
    )
    conf.operator = op
    op.dmarc_url = conf.dmarc_url if conf.dmarc is not None else None
    conf.domains = DomainController(
        op.api, conf.post_event, DomainMetrics(conf.metrics.registry), default_dns=conf.dns
    )
    # Every kind listed before the watches start (Kopf runs them once startup is done): no
    # pool is reconciled against a half-listed world.
    if isinstance(op.api, kube.KubeClient):
        await conf.the_cache().prime(op.api, conf.namespaces)
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


# --- the caches ---------------------------------------------------------------------------------
# Filled by a LIST per kind in configure(), kept current by the watch handlers below, each of which
# feeds its event to the cache before it acts (loops/watchcache.py says why not Kopf indexes).


def _cache(memo: Memo, kind: str, event: kopf.RawEvent | None, body: kopf.Body) -> None:
    memo.settings.the_cache().update(kind, event["type"] if event else None, body)


def _operator(memo: Memo) -> Operator:
    return memo.settings.the_operator()


def _indexes(memo: Memo) -> Indexes:
    return _operator(memo).use(memo.settings.the_cache().indexes)


# --- watch handlers ----------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "sendingpools")
async def pool_event(
    event: kopf.RawEvent, namespace: str | None, name: str, body: kopf.Body, memo: Memo, **kw: Any
) -> None:
    _cache(memo, "SendingPool", event, body)
    await _operator(memo).on_pool(_indexes(memo), event["type"], namespace or "", name, kw["meta"])


@kopf.on.event(GROUP, VERSION, "deliverypolicies")
async def policy_event(
    event: kopf.RawEvent,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    memo: Memo,
    **_: Any,
) -> None:
    _cache(memo, "DeliveryPolicy", event, body)
    await _operator(memo).on_policy(_indexes(memo), event["type"], namespace or "", name, body)


@kopf.on.event(GROUP, VERSION, "ipwarmups")
async def warmup_event(
    event: kopf.RawEvent,
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    body: kopf.Body,
    memo: Memo,
    **kw: Any,
) -> None:
    _cache(memo, "IPWarmup", event, body)
    pool = str(spec.get("poolRef", ""))
    await _operator(memo).on_warmup(
        _indexes(memo), event["type"], namespace or "", name, pool, kw["meta"]
    )


@kopf.on.event("v1", "secrets")
async def secret_event(
    event: kopf.RawEvent, namespace: str | None, name: str, body: kopf.Body, memo: Memo, **_: Any
) -> None:
    _cache(memo, "Secret", event, body)
    await _operator(memo).on_secret(_indexes(memo), namespace or "", name)


@kopf.on.event("v1", "nodes")
async def node_event(event: kopf.RawEvent, body: kopf.Body, memo: Memo, **_: Any) -> None:
    # Every node change comes (heartbeats too): on_node acts only when addresses changed,
    # which also catches an annotation removed.
    _cache(memo, "Node", event, body)
    await _operator(memo).on_node(_indexes(memo))


@kopf.on.event("apps", "v1", "statefulsets", labels=MANAGED)
async def statefulset_event(
    event: kopf.RawEvent,
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    status: kopf.Status,
    body: kopf.Body,
    memo: Memo,
    **_: Any,
) -> None:
    _cache(memo, "StatefulSet", event, body)
    await _operator(memo).on_statefulset(
        _indexes(memo), event["type"], namespace or "", name, meta, status
    )


@kopf.on.event("v1", "pods", labels=MANAGED)
async def pod_event(
    event: kopf.RawEvent,
    namespace: str | None,
    labels: kopf.Labels,
    body: kopf.Body,
    memo: Memo,
    **_: Any,
) -> None:
    _cache(memo, "Pod", event, body)
    if event["type"] is None:
        return
    pool = labels.get("app.kubernetes.io/instance")
    if not pool:
        return
    ref = pods.pod_ref(body)
    if event["type"] == "DELETED" or ref.ready or ref.deleting:
        await _operator(memo).on_pod(_indexes(memo), namespace or "", str(pool))


@kopf.on.event(GROUP, VERSION, "sendingdomains")
async def domain_event(
    event: kopf.RawEvent,
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    body: kopf.Body,
    memo: Memo,
    **_: Any,
) -> None:
    _cache(memo, "SendingDomain", event, body)
    domains = memo.settings.domains
    assert domains is not None, "the domain controller starts in configure()"
    domains.on_event(event["type"], namespace or "", name, meta)
    # The pools sign with the domain's active keys: re-render those of the namespace (a
    # reconcile with nothing new writes nothing).
    idx = _indexes(memo)
    op = _operator(memo)
    if event["type"] == "DELETED":
        op.on_domain_deleted(namespace or "", name)
    await op.reconcile_all(idx, op.pool_keys(idx, namespace or ""))
