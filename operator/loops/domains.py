"""The SendingDomain controller: DKIM keys generated and rotated in a Secret it owns, and DNS
checked every spec.checkInterval, each step reported in status, events and metrics.

One asyncio task per domain: reconcile, then sleep until the next check (or the next rotation
step, if sooner), or until the spec changes. The decisions are in domainplan (pure); here we
read (the domain, its Secret, its pools), ask DNS (dnscheck), generate keys, and write.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import dns.asyncresolver
from pydantic import ValidationError

from mailfleet.operator.api import naming
from mailfleet.operator.api.conditions import merge_conditions, now_utc, timestamp
from mailfleet.operator.api.crd_models import API_VERSION, SendingDomain, SendingPool
from mailfleet.operator.api.naming import MANAGER
from mailfleet.operator.api.outcomes import EventSink
from mailfleet.operator.api.reasons import EventReason
from mailfleet.operator.clients import dnscheck, kube
from mailfleet.operator.decide import dkimrecords, dmarcreport, domainplan
from mailfleet.operator.domainmetrics import DomainMetrics

log = logging.getLogger("mailfleet.operator")

SENDINGDOMAINS = kube.Resource("mailfleet.io", "v1alpha1", "sendingdomains", "SendingDomain")
RETRY_SECONDS = 10.0
MAX_REPORT_IDS = 10_000
MIN_SLEEP = 1.0

Key = tuple[str, str]
ResolverFactory = Callable[[Sequence[str], int], dns.asyncresolver.Resolver]


class KubeApi(Protocol):
    async def get(self, res: kube.Resource, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def apply(self, res: kube.Resource, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    async def patch_status(
        self, res: kube.Resource, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...


def _selectors(domain: SendingDomain) -> list[domainplan.Selector]:
    if domain.status is None:
        return []
    return [
        domainplan.Selector(s.selector, s.algorithm, s.state, s.since)
        for s in domain.status.selectors
    ]


def _stopped(domain: SendingDomain) -> list[domainplan.Stopped]:
    if domain.status is None:
        return []
    return [
        domainplan.Stopped(str(s.address), s.pool, s.reason, s.message, s.since)
        for s in domain.status.stopped_ips
    ]


def _pool_ips(name: str, body: Mapping[str, Any]) -> list[domainplan.PoolIP]:
    pool = SendingPool.model_validate(body)
    return [
        domainplan.PoolIP(name, str(ip.address), ip.hostname, ip.standby) for ip in pool.spec.ips
    ]


def secret_body(domain: Mapping[str, Any], name: str, keys: Mapping[str, bytes]) -> dict[str, Any]:
    meta = domain["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {
                "app.kubernetes.io/managed-by": MANAGER,
                "app.kubernetes.io/part-of": "mailfleet",
                "mailfleet.io/dkim-for": meta["name"],
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "SendingDomain",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {
            domainplan.key_file(sel): base64.b64encode(pem).decode("ascii")
            for sel, pem in sorted(keys.items())
        },
    }


class DomainController:
    def __init__(
        self,
        api: KubeApi,
        post_event: EventSink,
        metrics: DomainMetrics,
        *,
        clock: Callable[[], datetime] = now_utc,
        resolver_for: ResolverFactory = dnscheck.resolver,
        default_dns: tuple[Sequence[str], int] = ((), 53),
    ) -> None:
        self.api = api
        self.post_event = post_event
        self.metrics = metrics
        self.clock = clock
        self.resolver_for = resolver_for
        # The operator's --dns-nameservers/--dns-port, for domains whose spec.dns names none.
        self.default_dns = default_dns
        self.tasks: dict[Key, asyncio.Task[None]] = {}
        self.wake: dict[Key, asyncio.Event] = {}
        self.generations: dict[Key, int | None] = {}
        # From the last reconcile, for DMARC reports: the domain's body (for events), its
        # name, its pools' IPs; and the report ids counted (duplicates are not counted twice).
        self.known: dict[Key, tuple[Mapping[str, Any], str, frozenset[str]]] = {}
        self.report_ids: dict[Key, dict[str, None]] = {}
        self.pools_of: dict[Key, tuple[str, ...]] = {}

    def on_event(
        self, event_type: str | None, namespace: str, name: str, meta: Mapping[str, Any]
    ) -> None:
        """A watch event: start the domain's loop, wake it on a spec change, stop it on
        deletion. Status writes (the loop's own) change no generation and wake nothing."""
        key = (namespace, name)
        if event_type == "DELETED":
            task = self.tasks.pop(key, None)
            if task is not None:
                task.cancel()
            self.wake.pop(key, None)
            self.generations.pop(key, None)
            self.known.pop(key, None)
            self.report_ids.pop(key, None)
            self.pools_of.pop(key, None)
            self.metrics.forget(namespace, name)
            return
        task = self.tasks.get(key)
        if task is not None and not task.done():
            if meta.get("generation") != self.generations.get(key):
                self.wake[key].set()
            return
        self.wake[key] = asyncio.Event()
        self.tasks[key] = asyncio.get_running_loop().create_task(self._run(key))

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()

    async def _run(self, key: Key) -> None:
        while True:
            try:
                delay = await self.reconcile(*key)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("SendingDomain %s/%s: reconcile failed: %s", *key, e)
                delay = RETRY_SECONDS
            if delay is None:
                return
            wake = self.wake.setdefault(key, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=max(MIN_SLEEP, delay))
            wake.clear()

    async def _check(
        self,
        domain: SendingDomain,
        selectors: Sequence[domainplan.Selector],
        txt: Mapping[str, str],
        ips: Sequence[domainplan.PoolIP],
        missing: Sequence[str],
    ) -> domainplan.Checked:
        spec = domain.spec
        servers, port = [str(a) for a in spec.dns.nameservers], spec.dns.port
        if not servers:
            servers, port = list(self.default_dns[0]), self.default_dns[1]
        res = self.resolver_for(servers, port)
        return await dnscheck.gather(
            res, lambda facts: domainplan.check(spec, selectors, txt, ips, missing, facts)
        )

    async def reconcile(self, namespace: str, name: str) -> float | None:
        """One check and rotation step; the seconds until the next (None: the domain is gone)."""
        body = await self.api.get(SENDINGDOMAINS, namespace, name)
        if body is None:
            return None
        key = (namespace, name)
        generation = body.get("metadata", {}).get("generation")
        self.generations[key] = generation
        try:
            domain = SendingDomain.model_validate(body)
        except ValidationError as e:
            log.warning("SendingDomain %s/%s does not parse: %s", namespace, name, e)
            return RETRY_SECONDS
        spec = domain.spec
        now = self.clock()
        secret = domainplan.secret_name(name)
        keys: dict[str, bytes] = {}
        live_secret = await self.api.get(kube.SECRETS, namespace, secret)
        for k, v in ((live_secret or {}).get("data") or {}).items():
            if k.endswith(".pem"):
                keys[k.removesuffix(".pem")] = base64.b64decode(v)
        txt: dict[str, str] = {}
        for sel, pem in keys.items():
            try:
                txt[sel] = dkimrecords.txt_value(pem)
            except ValueError:
                log.warning("SendingDomain %s/%s: key %s in %s is unreadable", *key, sel, secret)
        ips: list[domainplan.PoolIP] = []
        missing: list[str] = []
        pools: dict[str, Mapping[str, Any]] = {}
        for pool in spec.pools:
            pool_body = await self.api.get(kube.SENDINGPOOLS, namespace, pool)
            if pool_body is None:
                missing.append(pool)
            else:
                ips += _pool_ips(pool, pool_body)
                pools[pool] = pool_body
        current = _selectors(domain)
        checked = await self._check(domain, current, txt, ips, missing)
        plan = domainplan.plan_keys(spec, current, frozenset(txt), checked.published, now)
        for new in plan.generate:
            pem = await asyncio.to_thread(
                dkimrecords.generate_pem, new.algorithm, spec.dkim.rsa_key_size
            )
            keys[new.selector] = pem
            txt[new.selector] = dkimrecords.txt_value(pem)
        wanted = {s.selector for s in plan.selectors}
        if live_secret is None or plan.generate or set(keys) != wanted:
            keep = {k: v for k, v in keys.items() if k in wanted}
            await self.api.apply(kube.SECRETS, secret_body(body, secret, keep))
        if plan.selectors != current:
            checked = await self._check(domain, plan.selectors, txt, ips, missing)
        stopped, stop_events = domainplan.plan_stops(spec, ips, checked, _stopped(domain), now)
        for ev in [*plan.events, *stop_events]:
            self.post_event(body, ev.type, ev.reason, ev.message)
            if ev.pool is not None and ev.pool in pools:
                self.post_event(
                    pools[ev.pool], ev.type, ev.reason, f"SendingDomain {name}: {ev.message}"
                )
        old = body.get("status") or {}
        recs = domainplan.records(spec, plan.selectors, txt, ips)
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "conditions": merge_conditions(
                old.get("conditions") or [], checked.conditions, generation, now
            ),
            "secretName": secret,
            "selectors": [
                {
                    "selector": s.selector,
                    "algorithm": s.algorithm,
                    "state": s.state,
                    "since": timestamp(s.since),
                }
                for s in plan.selectors
            ],
            "activeSelectors": ",".join(s.selector for s in plan.selectors if s.state == "active"),
            "records": recs,
            "zone": domainplan.zone(recs),
            "transportSecurity": checked.notes,
            "stoppedIPs": [
                {
                    "address": s.address,
                    "pool": s.pool,
                    "reason": s.reason,
                    "message": s.message,
                    "since": timestamp(s.since),
                }
                for s in stopped
            ],
        }
        self._condition_events(body, old.get("conditions") or [], status["conditions"], pools)
        if status != {k: old.get(k) for k in status}:  # nothing new: no write
            await self.api.patch_status(SENDINGDOMAINS, namespace, name, status)
        self.metrics.set_domain(namespace, name, spec.domain, status)
        self.metrics.checked(namespace, name, spec.domain, now.timestamp())
        slim = {k: body[k] for k in ("apiVersion", "kind")} | {
            "metadata": {k: body["metadata"].get(k) for k in ("name", "namespace", "uid")}
        }
        self.known[key] = (slim, spec.domain, frozenset(i.address for i in ips))
        self.pools_of[key] = tuple(spec.pools)
        delay = spec.check_interval
        if plan.next_step is not None:
            delay = min(delay, (plan.next_step - now).total_seconds())
        return max(MIN_SLEEP, delay)

    def _condition_events(
        self,
        body: Mapping[str, Any],
        old: Sequence[Mapping[str, Any]],
        new: Sequence[Mapping[str, Any]],
        pools: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """A Warning when a check starts failing (or fails differently), Normal when it passes
        again. An SPF or reverse DNS failure that names a pool's IP is posted on that pool too."""
        before = {c.get("type"): c for c in old}
        for c in new:
            was = before.get(c["type"])
            if c["type"] == "Ready":
                continue
            if c["status"] == "False" and (
                was is None or (was.get("status"), was.get("reason")) != ("False", c["reason"])
            ):
                self.post_event(body, "Warning", c["reason"], f"{c['type']}: {c['message']}")
                if c["type"] not in ("SPFValid", "ReverseDNS"):
                    continue
                for pool, pool_body in pools.items():
                    if f"(pool {pool})" in c["message"]:
                        self.post_event(
                            pool_body,
                            "Warning",
                            c["reason"],
                            f"SendingDomain {body['metadata']['name']} ({c['type']}): "
                            f"{c['message']}",
                        )
            elif c["status"] == "True" and was is not None and was.get("status") == "False":
                self.post_event(body, "Normal", c["reason"], f"{c['type']}: {c['message']}")

    async def pool_token_ok(self, namespace: str, name: str, token: str) -> bool:
        """Whether `token` is the admin token of a pool the domain lists: engines forward the
        reports mailed to them with it (it counts for the domains they send for, no other)."""
        for pool in self.pools_of.get((namespace, name), ()):
            secret = await self.api.get(kube.SECRETS, namespace, naming.admin_secret_name(pool))
            raw = ((secret or {}).get("data") or {}).get(naming.ADMIN_TOKEN_KEY)
            if not raw:
                continue
            known = base64.b64decode(raw).strip()
            if known and hmac.compare_digest(known, token.encode()):
                return True
        return False

    def accept_report(self, namespace: str, name: str, data: bytes) -> tuple[int, str]:
        """A DMARC aggregate report for SendingDomain namespace/name: counted in the metrics,
        an event says what it found. (HTTP status, message)."""
        key = (namespace, name)
        known = self.known.get(key)
        if known is None:
            return 404, f"SendingDomain {namespace}/{name} not found (or not checked yet)"
        body, domain, ours = known
        try:
            report = dmarcreport.parse(data)
        except dmarcreport.ReportError as e:
            return 400, f"not a DMARC aggregate report: {e}"
        if report.domain != domain:
            return 422, f"the report is about {report.domain}, not {domain}"
        seen = self.report_ids.setdefault(key, {})
        rid = f"{report.org_name}/{report.report_id}"
        if report.report_id and rid in seen:
            return 200, f"report {rid} was counted already"
        seen[rid] = None
        while len(seen) > MAX_REPORT_IDS:
            del seen[next(iter(seen))]
        self.metrics.count_report(namespace, name, report, ours)
        failed = sum(r.count for r in report.rows if not r.passed)
        foreign = sorted({r.source_ip for r in report.rows if r.source_ip not in ours})
        summary = (
            f"report {rid} ({report.begin:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC): "
            f"{report.messages} messages, {failed} failing DMARC"
        )
        post = self.post_event
        post(body, "Normal", EventReason.DMARCReport, summary)
        if foreign:
            shown = ", ".join(foreign[:10]) + (" ..." if len(foreign) > 10 else "")
            post(
                body,
                "Warning",
                EventReason.DMARCForeignSources,
                f"report {rid}: {len(foreign)} source IPs that are not the pools' sent as "
                f"{domain}: {shown}",
            )
        return 200, summary
