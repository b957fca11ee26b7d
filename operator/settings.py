"""What the command line sets and the startup handlers build, handed to every Kopf handler as its
`memo` (kopf.run(memo=Memo(settings))) instead of module globals: nothing is read from or
written to a module after import, so the handlers and the webhook can be configured (and
tested) in any order."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from mailfleet.operator.api import naming
from mailfleet.operator.api.conditions import now_utc
from mailfleet.operator.api.reasons import EventType, PostedReason
from mailfleet.operator.clients import kube
from mailfleet.operator.decide.events import event_object
from mailfleet.operator.loops.domains import DomainController
from mailfleet.operator.loops.reconciler import Operator
from mailfleet.operator.loops.watchcache import WatchCache
from mailfleet.operator.metrics import OperatorMetrics

log = logging.getLogger("mailfleet.operator")

DEFAULT_IMAGE = "ghcr.io/mailfleet/mailfleet:0.1.0"


@dataclass
class WebhookOptions:
    host: str
    port: int
    # Provided certificate (cert-manager): a directory with tls.crt, tls.key and ca.crt.
    cert_dir: Path | None = None
    # Managed certificate: the Secret (in `namespace`) shared by the replicas, the names it is
    # issued for, and where its files are written for the TLS server.
    tls_secret: str | None = None
    namespace: str = "default"
    names: list[str] = field(default_factory=list)
    work_dir: Path = Path("/tmp/mailfleet-webhook")
    # The ValidatingWebhookConfiguration whose caBundle the operator keeps (managed mode).
    configuration: str | None = None


@dataclass
class WebhookRuntime:
    """What the webhook's startup made: its API client and the certificate renewal task."""

    api: kube.KubeClient
    tasks: list[Any] = field(default_factory=list)


@dataclass
class Settings:
    """What the command line sets before Kopf starts, and what the startup handler builds."""

    image: str = DEFAULT_IMAGE
    # Managed egress: where the per-node proxies run and their ports.
    egress_namespace: str = "default"
    egress_port: int = 1080
    egress_admin_port: int = 9481
    peering_mandatory: bool = False
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    operator: Operator | None = None
    domains: DomainController | None = None
    # (host, port, token) of the DMARC report upload endpoint; None: off.
    dmarc: tuple[str, int, str] | None = None
    dmarc_runner: Any = None
    # The URL engines reach that endpoint at (--dmarc-url): they forward reports mailed to them.
    dmarc_url: str | None = None
    # --dns-nameservers/--dns-port: for SendingDomains whose spec.dns names none.
    dns: tuple[tuple[str, ...], int] = ((), 53)
    kopf_settings: kopf.OperatorSettings | None = None
    instance: str = ""
    # --webhook-listen and friends; None: no admission webhook is served.
    webhook: WebhookOptions | None = None
    webhook_runtime: WebhookRuntime | None = None

    # What the watches hold (loops/watchcache.py), and the namespaces served (--namespace).
    cache: WatchCache = field(default_factory=WatchCache)
    namespaces: list[str] = field(default_factory=list)

    def the_cache(self) -> WatchCache:
        return self.cache

    def the_operator(self) -> Operator:
        assert self.operator is not None, "the operator starts in handlers.configure()"
        return self.operator

    def post_event(
        self, body: Mapping[str, Any], type_: EventType, reason: PostedReason, message: str
    ) -> None:
        """Posted in the background through the operator's own client: events come from watch
        handlers and from the pods' poll loop alike (Kopf's own poster only serves its
        handlers)."""
        self.metrics.events.labels(type_, reason).inc()
        op = self.operator
        if op is not None:
            obj = event_object(
                body, type_, reason, message, now_utc(), naming.MANAGER, self.instance
            )
            op.spawn(op.guarded("Event", _create_event(op, obj)))
        level = logging.WARNING if type_ == "Warning" else logging.INFO
        meta = body.get("metadata", {})
        log.log(
            level,
            "%s %s/%s: %s: %s",
            body.get("kind"),
            meta.get("namespace"),
            meta.get("name"),
            reason,
            message,
        )


@dataclass(slots=True)
class Memo:
    """Kopf's memo: Kopf keeps a shallow copy of it per watched object, so it is one slot
    pointing at the settings all handlers share (no bigger than an empty kopf.Memo)."""

    settings: Settings


async def _create_event(op: Operator, obj: dict[str, Any]) -> None:
    await op.api.create(kube.EVENTS, obj)
