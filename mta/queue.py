"""The queue runner: takes spooled messages to their destinations, records each outcome durably,
schedules retries and writes DSNs. Decisions come from mailfleet.mta.retry; I/O from the router,
the delivery client and the spool."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import random
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mailfleet.mta.classify import classify, text_rule
from mailfleet.mta.config import EngineConfig, RetryConfig
from mailfleet.mta.delivery import AttemptResult, DeliveryClient, RecipientReply, synthetic_replies
from mailfleet.mta.dsn import DSNRecipient, build_dsn, should_send_dsn
from mailfleet.mta.metrics import EngineMetrics
from mailfleet.mta.providers import DEFAULT
from mailfleet.mta.retry import next_attempt_at, outcome_for_reply
from mailfleet.mta.routing import RouteError, Router
from mailfleet.mta.shaping import CONNECTION_LIMIT, RuleHit, Shaper, Wait, day_index
from mailfleet.mta.spool import QueuedMessage, RecipientUpdate, Spool

log = logging.getLogger("mailfleet.mta.queue")
attempt_log = logging.getLogger("mailfleet.mta.delivery")

SHAPING_SAVE_INTERVAL = 2.0

# Writes a DSN into the queue like a submitted message: (sender, recipients, data) -> queue id.
Inject = Callable[[str, list[str], bytes], Awaitable[str]]
# Puts a recipient on the suppression list: (recipient, reason, source).
Suppress = Callable[[str, str, str], Awaitable[None]]


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


@dataclass(order=True)
class Job:
    """One message for the recipients of one domain (they share MX hosts)."""

    due: float
    seq: int
    message_id: str = field(compare=False)
    domain: str = field(compare=False)
    recipients: list[str] = field(compare=False)
    attempts: int = field(compare=False, default=0)


def jobs_for(msg: QueuedMessage, seq: itertools.count[int]) -> list[Job]:
    """Split a message by recipient domain and by retry time (recovered recipients may differ)."""
    groups: dict[tuple[str, float, int], list[str]] = defaultdict(list)
    for r in msg.recipients:
        groups[(domain_of(r.recipient), r.next_attempt, r.attempts)].append(r.recipient)
    return [
        Job(due, next(seq), msg.id, domain, rcpts, attempts)
        for (domain, due, attempts), rcpts in groups.items()
    ]


class QueueRunner:
    def __init__(
        self,
        cfg: EngineConfig,
        spool: Spool,
        router: Router,
        client: DeliveryClient,
        metrics: EngineMetrics,
        inject: Inject,
        suppress: Suppress | None = None,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.router = router
        self.client = client
        self.metrics = metrics
        self.inject = inject
        self.suppress = suppress
        self.shaper = Shaper(cfg, os.environ.get("POD_NAME"))
        self._class_rules = [text_rule(r.match, r.reply_class) for r in cfg.shaping.reply_classes]
        self.messages: dict[str, QueuedMessage] = {}
        self._remaining: dict[str, int] = {}
        self._seq = itertools.count()
        self._ready: asyncio.Queue[Job] = asyncio.Queue()
        self._delayed: list[Job] = []
        self._parked: defaultdict[str, deque[Job]] = defaultdict(deque)
        self._stopping = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight = 0
        self.rng = random.Random()
        self._saved_shaping: list[dict[str, Any]] = []

    # -- config --------------------------------------------------------------------------------

    def retry_config(self, provider: str) -> RetryConfig:
        """The retry schedule for a recipient at `provider`: the provider's own when its policy
        sets one, else the engine-wide `retry`."""
        own = self.shaper.settings(provider).retry
        return own if own is not None else self.cfg.retry

    def update_config(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.shaper.update_config(cfg, os.environ.get("POD_NAME"))
        self._class_rules = [text_rule(r.match, r.reply_class) for r in cfg.shaping.reply_classes]
        want = cfg.delivery.max_concurrent_deliveries
        while len(self._tasks) < want:
            self._tasks.append(asyncio.create_task(self._worker(), name="delivery-worker"))
        # Extra workers are not cancelled mid-delivery; they finish and exit when over the limit.

    # -- intake --------------------------------------------------------------------------------

    def add(self, msg: QueuedMessage) -> None:
        self.messages[msg.id] = msg
        self._remaining[msg.id] = len(msg.recipients)
        now = time.time()
        for job in jobs_for(msg, self._seq):
            self._schedule(job, now)

    def _schedule(self, job: Job, now: float) -> None:
        if job.due <= now:
            self._ready.put_nowait(job)
        else:
            heapq.heappush(self._delayed, job)
            self._wake.set()

    # -- running -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._timer(), name="queue-timer"))
        self.update_config(self.cfg)

    async def stop(self) -> None:
        # Some client libraries turn a cancellation into an error of their own, so a worker can
        # outlive one cancel(): the flag ends its loop, and the cancel is repeated until done.
        self._stopping = True
        pending = set(self._tasks)
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._tasks.clear()
        await self._save_shaping()

    def restore_shaping(self) -> None:
        rows, sent = self.spool.load_shaping()
        self.shaper.restore(rows, time.time())
        self.shaper.warmup_sent.update(sent)

    async def _save_shaping(self) -> None:
        rows = self.shaper.snapshot(time.time())
        if rows and rows != self._saved_shaping:
            await self.spool.save_shaping(rows)
            self._saved_shaping = rows

    async def _timer(self) -> None:
        last_save = 0.0
        while True:
            now = time.time()
            while self._delayed and self._delayed[0].due <= now:
                self._ready.put_nowait(heapq.heappop(self._delayed))
            self._gauges()
            if now - last_save >= SHAPING_SAVE_INTERVAL:
                last_save = now
                await self._save_shaping()
            timeout = min(self._delayed[0].due - now, 1.0) if self._delayed else 1.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.0))

    async def _worker(self) -> None:
        while not self._stopping:
            if len(self._tasks) - 1 > self.cfg.delivery.max_concurrent_deliveries:
                self._tasks.remove(asyncio.current_task())  # type: ignore[arg-type]
                return
            job = await self._ready.get()
            self._inflight += 1
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The message stays in the spool; try again later rather than lose it.
                log.exception("delivery job failed", extra={"message_id": job.message_id})
                job.due = time.time() + self.cfg.retry.initial
                self._schedule(job, time.time())
            finally:
                self._inflight -= 1

    # -- one attempt ---------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        msg = self.messages.get(job.message_id)
        if msg is None:
            return
        started = time.time()
        try:
            destinations = await self.router.resolve(job.domain)
        except RouteError as e:
            result = AttemptResult(
                replies=synthetic_replies(job.recipients, e.code, e.enhanced, e.message),
                destination=None,
                source_ip=None,
                tls=False,
                error=str(e),
            )
            provider = self.shaper.table.by_domain(job.domain) or DEFAULT
            await self._record(job, msg, result, started, provider, {})
            return
        provider = self.shaper.table.lookup(job.domain, [d.hostname for d in destinations])
        now = time.time()
        decision = self.shaper.acquire(provider, now, self.rng.random())
        if isinstance(decision, Wait):
            if now - msg.received_at < self.retry_config(provider).max_age:
                # Held by shaping: not an attempt; try again when the pair can send.
                self.metrics.shaping_waits.labels(provider, decision.reason).inc()
                if decision.reason == CONNECTION_LIMIT:
                    # Woken by the next release for this provider, not by polling.
                    self._parked[provider].append(job)
                    return
                job.due = now + decision.seconds
                self._schedule(job, now)
                return
            reason = f"not sent in time: {decision.reason}"
            result = AttemptResult(
                replies=synthetic_replies(job.recipients, 451, "4.4.7", reason),
                destination=None,
                source_ip=None,
                tls=False,
                error=reason,
            )
            await self._record(job, msg, result, started, provider, {})
            return
        grant = decision
        try:
            if grant.warmup:
                day = day_index(now, self.cfg.shaping.day_length)
                for key in self.shaper.warmup_keys(grant.ip, provider):
                    await self.spool.warmup_add(grant.ip, key, day)
            result = await self.client.deliver(
                source_ip=grant.ip or None,
                helo=grant.helo,
                destinations=destinations,
                mail_from=msg.mail_from,
                recipients=job.recipients,
                data=msg.data,
                domain=job.domain,
            )
        finally:
            self.shaper.release(grant)
            parked = self._parked.get(provider)
            if parked:
                self._ready.put_nowait(parked.popleft())
        hits: dict[str, RuleHit] = {}
        seen = time.time()
        for reply in result.replies:
            hit = self.shaper.observe(grant.ip, provider, reply.reply, seen)
            if hit is not None:
                hits[reply.recipient] = hit
                self.metrics.rule_hits.labels(grant.ip, provider, hit.action).inc()
                log.info(
                    "reply rule fired",
                    extra={
                        "source_ip": grant.ip,
                        "provider": provider,
                        "action": hit.action,
                        "rule": hit.rule,
                        "reply": reply.reply[:200],
                    },
                )
        await self._record(job, msg, result, started, provider, hits)

    async def _record(
        self,
        job: Job,
        msg: QueuedMessage,
        result: AttemptResult,
        started: float,
        provider: str,
        hits: dict[str, RuleHit],
    ) -> None:
        now = time.time()
        updates: list[RecipientUpdate] = []
        retry: list[str] = []
        bounces: list[DSNRecipient] = []
        attempts = job.attempts + 1
        retry_at = next_attempt_at(
            attempts, msg.received_at, now, self.retry_config(provider), self.rng.random()
        )
        mx = result.destination.hostname if result.destination else None
        soon: list[str] = []
        for reply in result.replies:
            outcome = outcome_for_reply(reply.code)
            line = reply.reply
            reply_class = classify(reply.code, line.partition(" ")[2], self._class_rules)
            status = reply.enhanced or f"{reply.code // 100}.0.0"
            hit = hits.get(reply.recipient)
            if hit is not None:
                if hit.action == "bounce":
                    outcome = "bounced"
                elif hit.action in ("retry", "throttle", "suspend", "quarantine"):
                    # The IP or the pace was the problem, not the message: try again, and for
                    # shaping actions at once (the shaper holds it until a pair may send).
                    outcome = "deferred"
                    if hit.action != "retry":
                        soon.append(reply.recipient)
            if outcome == "deferred" and retry_at is None:
                outcome = "bounced"
                status = "4.4.7"
                line = f"message expired after {attempts} attempts; last reply: {line}"
            self.metrics.attempts.labels(
                result.source_ip or "", provider, job.domain, outcome, reply_class
            ).inc()
            self._log_attempt(
                job, result, reply, outcome, reply_class, now - started, attempts, provider
            )
            if outcome == "delivered":
                self.metrics.delivery_latency.observe(now - msg.received_at)
                updates.append(RecipientUpdate(reply.recipient, done=True))
            elif outcome == "bounced":
                updates.append(RecipientUpdate(reply.recipient, done=True))
                if (
                    self.suppress is not None
                    and result.destination is not None
                    and reply_class in self.cfg.suppression.suppress_classes
                ):
                    await self.suppress(reply.recipient, reply_class, line)
                bounces.append(
                    DSNRecipient(
                        recipient=reply.recipient,
                        status=status if status[0] in "45" else "5.0.0",
                        diagnostic=line if result.destination else None,
                        remote_mta=mx,
                        last_attempt_date=now,
                    )
                )
            else:
                assert retry_at is not None
                retry.append(reply.recipient)
                updates.append(
                    RecipientUpdate(reply.recipient, False, attempts, retry_at, line[:500])
                )
        if bounces and should_send_dsn(msg.mail_from, msg.data):
            # The DSN is durable before the bounced recipients are forgotten.
            await self._send_dsn(msg, bounces)
        last = len(updates) >= self._remaining.get(msg.id, 0)
        gone = await self.spool.update(msg.id, updates, last=last)
        finished = len(updates) - len(retry)
        self._remaining[msg.id] = self._remaining.get(msg.id, 0) - finished
        if gone or self._remaining[msg.id] <= 0:
            self.messages.pop(msg.id, None)
            self._remaining.pop(msg.id, None)
        later = [r for r in retry if r not in soon]
        now_again = [r for r in retry if r in soon]
        if later:
            assert retry_at is not None
            self._schedule(Job(retry_at, next(self._seq), msg.id, job.domain, later, attempts), now)
        if now_again:
            self._schedule(Job(now, next(self._seq), msg.id, job.domain, now_again, attempts), now)

    async def _send_dsn(self, msg: QueuedMessage, bounces: list[DSNRecipient]) -> None:
        cfg = self.cfg
        dsn = build_dsn(
            reporting_mta=cfg.hostname,
            dsn_from=cfg.bounces.dsn_from or f"MAILER-DAEMON@{cfg.hostname}",
            original_sender=msg.mail_from,
            original_message=msg.data,
            failures=bounces,
            arrival_date=msg.received_at,
        )
        qid = await self.inject("", [msg.mail_from.strip("<>")], dsn)
        self.metrics.dsns.labels("failed").inc()
        log.info(
            "dsn queued",
            extra={"message_id": msg.id, "dsn_id": qid, "recipients": len(bounces)},
        )

    def _log_attempt(
        self,
        job: Job,
        result: AttemptResult,
        reply: RecipientReply,
        outcome: str,
        reply_class: str,
        latency: float,
        attempt: int,
        provider: str,
    ) -> None:
        if not attempt_log.isEnabledFor(logging.INFO):
            return
        attempt_log.info(
            "delivery attempt",
            extra={
                "message_id": job.message_id,
                "recipient_domain": job.domain,
                "provider": provider,
                "source_ip": result.source_ip,
                "mx": result.destination.hostname if result.destination else None,
                "mx_address": result.destination.address if result.destination else None,
                "tls": result.tls,
                "reply": reply.reply,
                "result": outcome,
                "reply_class": reply_class,
                "attempt": attempt,
                "latency_ms": round(latency * 1000, 1),
            },
        )

    # -- introspection -------------------------------------------------------------------------

    def _gauges(self) -> None:
        # Once a second from the timer: sums over the queue stay off the per-message path.
        deferred = sum(len(j.recipients) for j in self._delayed)
        total = sum(self._remaining.values())
        self.metrics.queue_recipients.labels("deferred").set(deferred)
        self.metrics.queue_recipients.labels("active").set(max(total - deferred, 0))
        self.metrics.queue_messages.labels("queued").set(len(self.messages))
        m = self.metrics
        for row in self.shaper.snapshot(time.time()):
            labels = (row["ip"], row["provider"])
            m.shaping_rate.labels(*labels).set(row["rate"] if row["rate"] is not None else -1)
            m.pair_suspended.labels(*labels).set(1 if row["suspendedUntil"] else 0)
            m.pair_quarantined.labels(*labels).set(1 if row["quarantinedUntil"] else 0)
        for (ip, provider, day), sent in list(self.shaper.warmup_sent.items()):
            if day == day_index(time.time(), self.cfg.shaping.day_length):
                m.warmup_sent.labels(ip, provider).set(sent)
        for (ip, provider), cap in self.shaper.caps.items():
            m.warmup_cap.labels(ip, provider).set(cap)

    def status(self) -> dict[str, Any]:
        return {
            "messages": len(self.messages),
            "jobsReady": self._ready.qsize(),
            "jobsInFlight": self._inflight,
            "jobsDeferred": len(self._delayed),
            "jobsWaitingForConnection": sum(len(d) for d in self._parked.values()),
            "nextRetry": self._delayed[0].due if self._delayed else None,
        }

    def shaping_status(self) -> list[dict[str, Any]]:
        return self.shaper.snapshot(time.time())

    @property
    def empty(self) -> bool:
        return not self.messages
