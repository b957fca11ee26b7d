"""The queue runner: takes spooled messages to their destinations, records each outcome durably,
schedules retries and writes DSNs. Decisions come from mailfleet.mta.retry and plan_admission;
I/O from the router, the delivery client and the spool.

Only the active set (spool.activeLimit messages: ready, in flight, held by shaping) is in memory,
as scheduling records without bodies; a deferred recipient goes back to the spool, and the loader
pages what is due back in, oldest first, through the spool's due index."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailfleet.mta.classify import classify, text_rule
from mailfleet.mta.config import EngineConfig, RetryConfig
from mailfleet.mta.delivery import AttemptResult, DeliveryClient, RecipientReply, synthetic_replies
from mailfleet.mta.dsn import DSNRecipient, build_dsn, should_send_dsn
from mailfleet.mta.metrics import EngineMetrics
from mailfleet.mta.providers import DEFAULT
from mailfleet.mta.retry import decide_outcome, next_attempt_at
from mailfleet.mta.routing import RouteError, Router
from mailfleet.mta.senderips import SENDER_RESTRICTED, SenderRestrictions, sender_domain
from mailfleet.mta.shaping import CONNECTION_LIMIT, RuleHit, Shaper, Wait
from mailfleet.mta.sharedlimits import FleetLimiter
from mailfleet.mta.spool import (
    DiskUsage,
    DueRow,
    QueuedMessage,
    RecipientUpdate,
    Spool,
    SpoolReader,
    disk_usage,
    domain_of,
)

log = logging.getLogger("mailfleet.mta.queue")
attempt_log = logging.getLogger("mailfleet.mta.delivery")

SHAPING_SAVE_INTERVAL = 2.0

# Writes a DSN into the queue like a submitted message: (sender, recipients, data) -> queue id.
Inject = Callable[[str, list[str], bytes], Awaitable[str]]
# Puts a recipient on the suppression list: (recipient, reason, source).
Suppress = Callable[[str, str, str], Awaitable[None]]


@dataclass(order=True, slots=True)
class Job:
    """One message for the recipients of one domain (they share MX hosts)."""

    due: float
    seq: int
    message_id: str = field(compare=False)
    domain: str = field(compare=False)
    recipients: list[str] = field(compare=False)
    attempts: int = field(compare=False, default=0)


@dataclass(slots=True)
class Active:
    """A message being worked on: what scheduling needs of it. Its body stays in the spool."""

    received_at: float
    size: int
    admitted: float  # when it entered the active set
    jobs: int = 0  # its jobs in memory (ready, in flight, held by shaping)
    remaining: int = -1  # recipients left in the spool, -1: not known (loaded from the spool)
    sender: str | None = None  # the envelope sender's domain, once known


@dataclass(slots=True)
class Body:
    mail_from: str
    data: bytes
    # Every line end is CRLF: known for a message accepted this run, checked again otherwise.
    crlf: bool = False


# Rows read from the spool per page: enough to fill the active set quickly, small enough that
# one page never holds the event loop (the read itself is on the spool reader's thread).
PAGE = 1000
# How often a pass over what is due starts again from the oldest (rows skipped while their
# message was active are found again then).
SWEEP_INTERVAL = 30.0
STATS_INTERVAL = 5.0
# Bodies of just-accepted messages kept in memory for their attempts while they are active, so
# the first attempt needs no read back from the spool (a thread hop and a copy of the body).
# Past this many bytes a message is read from the spool as any other.
FRESH_BODIES_BYTES = 32 * 1024 * 1024


@dataclass
class Counts:
    """What the queue holds, kept up to date on every change (no scan per status call)."""

    messages: int = 0
    by_domain: dict[str, int] = field(default_factory=dict)  # recipients queued, by domain
    active_by_domain: dict[str, int] = field(default_factory=dict)  # of those, in memory
    jobs_by_domain: dict[str, int] = field(default_factory=dict)

    def add(self, table: dict[str, int], key: str, n: int) -> None:
        v = table.get(key, 0) + n
        if v > 0:
            table[key] = v
        else:
            table.pop(key, None)


def group_due(rows: list[DueRow]) -> list[tuple[str, list[DueRow]]]:
    """Consecutive rows of one message together, in page order."""
    out: list[tuple[str, list[DueRow]]] = []
    for row in rows:
        if out and out[-1][0] == row.message_id:
            out[-1][1].append(row)
        else:
            out.append((row.message_id, [row]))
    return out


@dataclass
class Planned:
    """A message to bring into the active set, with its jobs: (domain, attempts) -> recipients."""

    message_id: str
    received_at: float
    size: int
    jobs: dict[tuple[str, int], list[str]] = field(default_factory=dict)


@dataclass
class Admission:
    admit: list[Planned] = field(default_factory=list)
    capped: set[str] = field(default_factory=set)  # domains at their limit, rows left behind
    cursor: tuple[float, str] | None = None  # after the last row dealt with
    more: bool = False  # the page was full: read on from the cursor at once
    sweep: bool = False  # rows were skipped that only a pass from the start finds again


def plan_admission(
    rows: list[DueRow],
    limit: int,
    admitted_at: Callable[[str], float | None],
    jobs_by_domain: Mapping[str, int],
    domain_limit: int,
    room: int,
    waiting: Collection[str] = (),
) -> Admission:
    """Which messages of a page of due rows (ordered by next attempt, message id) enter the
    active set. `admitted_at`: when a message already in it entered (None: not in it); `room`:
    how many more may; a domain with `domain_limit` jobs takes no more (its rows wait), nor does
    one in `waiting` (rows of it were left behind already: they go first, loaded by domain).

    A page cut short by its `limit` may end inside a message: that message is left for the next
    page (read again whole), unless it is the only one (the caller reads a bigger page)."""
    groups = group_due(rows)
    plan = Admission(more=len(rows) >= limit)
    if plan.more and len(groups) > 1:
        groups.pop()
    jobs = dict(jobs_by_domain)
    planned: dict[str, Planned] = {}
    for mid, group in groups:
        admitted = admitted_at(mid)
        if admitted is not None:
            if group[-1].next_attempt > admitted:
                # Deferred while the message stayed active (another domain's job holds it):
                # found again by the next sweep, once the message has left.
                plan.sweep = True
            plan.cursor = (group[-1].next_attempt, mid)
            continue
        msg = planned.get(mid)
        if msg is None:
            if len(planned) >= room:
                plan.more = True
                break
            msg = Planned(mid, group[0].received_at, group[0].size)
        for row in group:
            key = (row.domain, row.attempts)
            if key not in msg.jobs:
                if row.domain in waiting or jobs.get(row.domain, 0) >= domain_limit:
                    plan.capped.add(row.domain)
                    continue
                jobs[row.domain] = jobs.get(row.domain, 0) + 1
                msg.jobs[key] = []
            msg.jobs[key].append(row.recipient)
        if msg.jobs and mid not in planned:
            planned[mid] = msg
            plan.admit.append(msg)
        plan.cursor = (group[-1].next_attempt, mid)
    return plan


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
        *,
        pod_name: str | None = None,
    ) -> None:
        self.cfg = cfg
        # This engine's pod (the CLI reads POD_NAME once): IPs assigned to another pod are not
        # used, and fleet-wide limits are kept per pod. None: not in a pod, any IP is ours.
        self.pod_name = pod_name
        self.spool = spool
        self.router = router
        self.client = client
        self.metrics = metrics
        self.inject = inject
        self.suppress = suppress
        self.shaper = Shaper(cfg, pod_name)
        self.fleet = FleetLimiter(cfg.fleet, pod_name, on_mode=self._fleet_mode)
        self.shaper.pool_gate = self.fleet
        self._fleet_mode(self.fleet.mode)
        self._fleet_ips: set[str] = set()
        self.senders = SenderRestrictions(cfg.delivery.sender_restrictions)
        # Jobs waiting because every source IP is excluded for their sender domain (by seq):
        # a reload that changes the restrictions makes them due at once.
        self._sender_held: dict[int, Job] = {}
        self._class_rules = [text_rule(r.match, r.reply_class) for r in cfg.shaping.reply_classes]
        self.active: dict[str, Active] = {}
        self._fresh: dict[str, Body] = {}
        self._fresh_bytes = 0
        self.counts = Counts()
        self._reader: SpoolReader | None = None
        self._seq = itertools.count()
        self._ready: asyncio.Queue[Job] = asyncio.Queue()
        self._delayed: list[Job] = []
        self._parked: defaultdict[str, deque[Job]] = defaultdict(deque)
        self._stopping = False
        self._wake = asyncio.Event()
        self._load = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._inflight = 0
        self.rng = random.Random()
        self._saved_shaping: list[dict[str, Any]] = []
        # The pass over what is due: where it is, and domains skipped at their active limit.
        self._cursor: tuple[float, str] | None = None
        self._capped: dict[str, tuple[float, str] | None] = {}
        self._need_sweep = False
        self._last_sweep = 0.0
        # When the loader last read a page, and whether mail was left in the spool since.
        self._last_pass = 0.0
        self._behind = True
        self._spool_next_due: float | None = None
        self._bounce_before: dict[str, float] = {}
        self._domain_provider: dict[str, str] = {}
        self.oldest: float | None = None
        self.disk: DiskUsage | None = None
        self._gauged_providers: set[str] = set()
        # Messages an attempt is running for now, and messages being handed to another pod
        # (no attempt may start for those).
        self._busy: dict[str, int] = {}
        self._handing_off: set[str] = set()

    def retry_config(self, provider: str) -> RetryConfig:
        """The retry schedule for a recipient at `provider`: the provider's own when its policy
        sets one, else the engine-wide `retry`."""
        own = self.shaper.settings(provider).retry
        return own if own is not None else self.cfg.retry

    # -- config --------------------------------------------------------------------------------

    def update_config(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.shaper.update_config(cfg, self.pod_name)
        self._fleet_config(cfg)
        senders = SenderRestrictions(cfg.delivery.sender_restrictions)
        if senders != self.senders:
            self.senders = senders
            self._wake_sender_held()
        self._class_rules = [text_rule(r.match, r.reply_class) for r in cfg.shaping.reply_classes]
        want = cfg.delivery.max_concurrent_deliveries
        while len(self._workers) < want:
            self._workers.append(asyncio.create_task(self._worker(), name="delivery-worker"))
        # Extra workers are not cancelled mid-delivery; they finish and exit when over the limit.

    def _wake_sender_held(self) -> None:
        now = time.time()
        for job in self._sender_held.values():
            job.due = min(job.due, now)
        self._sender_held.clear()
        heapq.heapify(self._delayed)
        self._wake.set()

    # -- intake --------------------------------------------------------------------------------

    @property
    def active_limit(self) -> int:
        return self.cfg.spool.active_limit

    @property
    def domain_limit(self) -> int:
        return self.cfg.spool.domain_limit

    def add(self, msg: QueuedMessage, crlf: bool = False) -> None:
        """A message just accepted: counted, and worked on at once if the active set has room
        (else it waits in the spool, found by the loader in arrival order). `crlf`: its line
        ends are known to be CRLF (delivery then frames it without scanning for bare LFs)."""
        c = self.counts
        c.messages += 1
        for r in msg.recipients:
            c.add(c.by_domain, domain_of(r.recipient), 1)
        if msg.id in self.active:
            # The loader read it from the spool between its commit and this call: it is being
            # worked on already; scheduling it again would deliver it twice.
            return
        jobs: list[Job] = []
        left: set[str] = set()
        for j in jobs_for(msg, self._seq):
            if (
                len(self.active) < self.active_limit
                and j.domain not in self._capped
                and c.jobs_by_domain.get(j.domain, 0) < self.domain_limit
            ):
                jobs.append(j)
            else:
                left.add(j.domain)
        if left:
            self._left_behind(msg.received_at, left)
        if not jobs:
            return
        now = time.time()
        self.active[msg.id] = Active(
            msg.received_at,
            len(msg.data),
            now,
            remaining=len(msg.recipients),
            sender=sender_domain(msg.mail_from),
        )
        if msg.data and self._fresh_bytes + len(msg.data) <= FRESH_BODIES_BYTES:
            self._fresh[msg.id] = Body(msg.mail_from, msg.data, crlf)
            self._fresh_bytes += len(msg.data)
        for job in jobs:
            self._add_job(job, now)

    def _left_behind(self, due: float, domains: set[str]) -> None:
        """Rows due at `due` wait in the spool: make sure the loader's passes have not gone
        beyond that time already (a commit can land behind a page just read)."""
        self._behind = True
        at = (due, "")
        if self._cursor is not None and at < self._cursor:
            self._cursor = at
        for d in domains:
            if d in self._capped:  # loaded by domain: its own pass
                after = self._capped[d]
                if after is not None and at < after:
                    self._capped[d] = at
        self._load.set()

    def _cap(self, domain: str) -> bool:
        """Note a domain at its active limit: its due mail is loaded by domain once it has room."""
        self._capped.setdefault(domain, None)
        return False

    def _add_job(self, job: Job, now: float) -> None:
        c = self.counts
        self.active[job.message_id].jobs += 1
        c.add(c.jobs_by_domain, job.domain, 1)
        c.add(c.active_by_domain, job.domain, len(job.recipients))
        self._schedule(job, now)

    def _release(self, job: Job) -> None:
        """A job is over (recorded, or its message gone): the message leaves the active set with
        its last job, and the loader may take the next one from the spool."""
        c = self.counts
        c.add(c.jobs_by_domain, job.domain, -1)
        c.add(c.active_by_domain, job.domain, -len(job.recipients))
        a = self.active.get(job.message_id)
        if a is not None:
            a.jobs -= 1
            if a.jobs <= 0:
                del self.active[job.message_id]
                self._forget_body(job.message_id)
                self._load.set()

    def _forget_body(self, message_id: str) -> None:
        body = self._fresh.pop(message_id, None)
        if body is not None:
            self._fresh_bytes -= len(body.data)

    def _schedule(self, job: Job, now: float) -> None:
        if job.due <= now:
            self._ready.put_nowait(job)
        else:
            heapq.heappush(self._delayed, job)
            self._wake.set()

    def _due_later(self, at: float) -> None:
        self._behind = True
        if self._spool_next_due is None or at < self._spool_next_due:
            self._spool_next_due = at
            self._load.set()

    # -- the loader: from the spool into the active set, oldest due first ----------------------

    async def recover(self, reader: SpoolReader) -> None:
        """At start: count what the spool holds (index-only, no bodies). Loading is lazy."""
        self._reader = reader
        counts = await reader.counts()
        self.counts.messages = counts.messages
        self.counts.by_domain = dict(counts.recipients_by_domain)
        self.oldest = await reader.oldest()

    @property
    def _load_batch(self) -> int:
        """Free slots worth a page: read for a batch of them, not for each one."""
        return min(max(self.active_limit // 20, 1), PAGE)

    async def _loader(self) -> None:
        while True:
            progressed = False
            if self._reader is not None:
                progressed = await self._load_once(self._reader)
            if progressed:
                await asyncio.sleep(0)
                continue
            self._load.clear()
            timeout = 1.0
            room = self.active_limit - len(self.active)
            if self._spool_next_due is not None and room >= self._load_batch:
                timeout = min(max(self._spool_next_due - time.time(), 0.01), 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._load.wait(), timeout=timeout)

    async def _load_once(self, reader: SpoolReader) -> bool:
        """One page into the active set; True if there may be more to load right away."""
        now = time.time()
        # Domains that were at their limit first: their backlog is older than what follows.
        for domain, after in list(self._capped.items()):
            free = self.domain_limit - self.counts.jobs_by_domain.get(domain, 0)
            room = self.active_limit - len(self.active)
            if free < max(self.domain_limit // 2, 1) or room <= 0:
                continue
            rows, limit = await self._page(reader, now, after, min(free, room, PAGE), domain)
            plan = self._admit(rows, limit, now, by_domain=True)
            if plan.more:
                self._capped[domain] = plan.cursor if plan.cursor is not None else after
                return True
            self._capped.pop(domain, None)
        room = self.active_limit - len(self.active)
        if room < self._load_batch and self.active:
            return False
        if self._nothing_to_load(now):
            return False
        self._last_pass = now
        self._behind = False
        if self._need_sweep and now - self._last_sweep >= SWEEP_INTERVAL:
            self._need_sweep = False
            self._last_sweep = now
            self._cursor = None
        rows, limit = await self._page(reader, now, self._cursor, min(room, PAGE))
        plan = self._admit(rows, limit, now)
        if plan.cursor is not None:
            self._cursor = plan.cursor
        if not plan.more:
            self.metrics.spool_reads.labels("next-due").inc()
            self._spool_next_due = await reader.next_due(now)
        return plan.more

    def _nothing_to_load(self, now: float) -> bool:
        """Every message the spool holds is in the active set already, so a page would only
        show rows the admission skips. Mail flowing through (accepted, delivered at once, gone)
        then costs no spool reads: the loader used to read a page and the next due time each
        time a message left the active set. A message left behind in the spool (`_behind`) and
        a pass at least every SWEEP_INTERVAL keep a miscount from stranding anything."""
        if self._behind or now - self._last_pass >= SWEEP_INTERVAL:
            return False
        if self.counts.messages > len(self.active):
            return False
        self._spool_next_due = None  # found again by the next pass that reads the spool
        return True

    def _admit(
        self, rows: list[DueRow], limit: int, now: float, by_domain: bool = False
    ) -> Admission:
        plan = plan_admission(
            rows,
            limit,
            self._admitted_at,
            self.counts.jobs_by_domain,
            self.domain_limit,
            self.active_limit - len(self.active),
            () if by_domain else self._capped,
        )
        self._need_sweep = self._need_sweep or plan.sweep
        for domain in plan.capped:
            self._cap(domain)
        for p in plan.admit:
            self.active[p.message_id] = Active(p.received_at, p.size, now)
            for (domain, attempts), rcpts in p.jobs.items():
                job = Job(now, next(self._seq), p.message_id, domain, rcpts, attempts)
                self._add_job(job, now)
        return plan

    def _admitted_at(self, message_id: str) -> float | None:
        a = self.active.get(message_id)
        return a.admitted if a is not None else None

    async def _page(
        self,
        reader: SpoolReader,
        now: float,
        after: tuple[float, str] | None,
        limit: int,
        domain: str | None = None,
    ) -> tuple[list[DueRow], int]:
        """A page of due rows that holds at least one whole message (a message with more due
        recipients than the page takes a bigger page)."""
        while True:
            self.metrics.spool_reads.labels("page").inc()
            rows = await reader.due(now, after, limit, domain)
            if len(rows) < limit or rows[0].message_id != rows[-1].message_id:
                return rows, limit
            limit *= 2

    # -- running -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._timer(), name="queue-timer"))
        self._tasks.append(asyncio.create_task(self._loader(), name="queue-loader"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="spool-housekeeping"))
        self._tasks.append(asyncio.create_task(self.fleet.run(self.shaper), name="fleet-limits"))
        self.update_config(self.cfg)

    async def stop(self) -> None:
        # Some client libraries turn a cancellation into an error of their own, so a worker can
        # outlive one cancel(): the flag ends its loop, and the cancel is repeated until done.
        self._stopping = True
        pending = set(self._tasks) | set(self._workers)
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._tasks.clear()
        self._workers.clear()
        await self._save_shaping()
        await self.fleet.close()

    # -- fleet-wide limits and IPs moving between pods -----------------------------------------

    def _fleet_mode(self, mode: str) -> None:
        for m in ("local", "split", "shared"):
            self.metrics.fleet_limits_mode.labels(m).set(1 if m == mode else 0)

    def _fleet_config(self, cfg: EngineConfig) -> None:
        self.fleet.configure(cfg.fleet, self.pod_name)
        now = time.time()
        owned = {ip for ip, _, state in self.shaper.ips if state in ("active", "warming")}
        for ip in sorted(owned - self._fleet_ips):
            keys = [k for (a, k) in self.shaper.caps if a == ip]
            self.fleet.gained(ip, [(k, self.shaper.warmup_day(ip, k, now)[0]) for k in keys])
        self._fleet_ips = owned

    def sending_ips(self) -> list[str]:
        """The addresses this engine sends from now (its own, not held)."""
        return sorted(self._fleet_ips)

    async def adopt_shaping(self, pairs: list[dict[str, Any]], warmup: list[dict[str, Any]]) -> int:
        """Shaping state (rates, suspensions, quarantines) and today's warmup counts of IPs that
        move here from another pod. Counts only ever grow: the larger of ours and theirs."""
        now = time.time()
        self.shaper.restore(pairs, now)
        for row in warmup:
            ip, key, sent = str(row["ip"]), str(row["provider"]), int(row["sent"])
            day = self.shaper.warmup_day(ip, key, now)[0]
            mine = self.shaper.warmup_sent.get((ip, key, day), 0)
            if sent > mine:
                await self.spool.warmup_add(ip, key, day, sent - mine)
                self.shaper.warmup_sent[(ip, key, day)] = sent
        await self._save_shaping()
        return len(pairs) + len(warmup)

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
        last_stats = 0.0
        while True:
            now = time.time()
            while self._delayed and self._delayed[0].due <= now:
                self._ready.put_nowait(heapq.heappop(self._delayed))
            self.disk = disk_usage(self.spool.path / "spool.db", self._free_pages())
            if now - last_stats >= STATS_INTERVAL and self._reader is not None:
                last_stats = now
                self.oldest = await self._reader.oldest()
                self._provider_gauges()
            self._gauges()
            if now - last_save >= SHAPING_SAVE_INTERVAL:
                last_save = now
                try:
                    await self._save_shaping()
                except Exception as e:
                    # E.g. the spool's disk full: saved next time. This task must not die, or
                    # every deferred message would wait forever.
                    log.warning("shaping state not saved", extra={"error": str(e)})
            timeout = min(self._delayed[0].due - now, 1.0) if self._delayed else 1.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.0))

    def _free_pages(self) -> int:
        return self.disk.free_pages_bytes if self.disk is not None else 0

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.spool.housekeeping_interval)
            try:
                await self.spool.maintain()
                if self._reader is not None:
                    self.disk = await self._reader.disk()
            except Exception:
                log.exception("spool housekeeping failed")

    def low_on_disk(self) -> bool:
        """True while the spool's filesystem is below the reserve: new mail gets 452 4.3.1."""
        return self.disk is not None and self.disk.disk_free_bytes < self.cfg.spool.disk_reserve

    async def _worker(self) -> None:
        while not self._stopping:
            if len(self._workers) > self.cfg.delivery.max_concurrent_deliveries:
                self._workers.remove(asyncio.current_task())  # type: ignore[arg-type]
                return
            job = await self._ready.get()
            self._inflight += 1
            mid = job.message_id
            self._busy[mid] = self._busy.get(mid, 0) + 1
            try:
                if mid in self._handing_off or not await self._run(job):
                    self._release(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The message stays in the spool; try again later rather than lose it.
                log.exception("delivery job failed", extra={"message_id": job.message_id})
                job.due = time.time() + self.cfg.retry.initial
                self._schedule(job, time.time())
            finally:
                self._inflight -= 1
                left = self._busy.get(mid, 1) - 1
                if left > 0:
                    self._busy[mid] = left
                else:
                    self._busy.pop(mid, None)

    # -- handing mail to another pod (drain) -------------------------------------------------------

    def begin_handoff(self, message_id: str) -> bool:
        """Take a message away from delivery to hand it to another pod; False while an attempt
        for it runs (it is delivered here, or handed off on a later pass)."""
        if message_id in self._busy:
            return False
        self._handing_off.add(message_id)
        self._forget_body(message_id)
        # Its jobs in memory are dropped as they come up; the loader skips nothing: a job it
        # loads meanwhile is dropped the same way.
        self.active.pop(message_id, None)
        return True

    def end_handoff(self, msg: QueuedMessage, handed: bool) -> None:
        """The handoff is over: gone from this pod (counted out), or kept to deliver here (found
        again by the loader's next pass over the spool)."""
        self._handing_off.discard(msg.id)
        if handed:
            c = self.counts
            c.messages -= 1
            for r in msg.recipients:
                c.add(c.by_domain, domain_of(r.recipient), -1)
            return
        self._need_sweep = True
        self._behind = True
        self._cursor = None
        self._load.set()

    def adopt(self, msg: QueuedMessage) -> None:
        """A message another pod handed over (already in this spool): counted and scheduled at
        its recipients' own retry times."""
        self.add(msg)

    # -- one attempt ---------------------------------------------------------------------------

    async def _body(self, message_id: str) -> Body | None:
        """The message as accepted (DKIM signature included): kept since it was accepted, or
        read from the spool now."""
        fresh = self._fresh.get(message_id)
        if fresh is not None and message_id in self.active:
            return fresh
        assert self._reader is not None
        self.metrics.spool_reads.labels("body").inc()
        got = await self._reader.message(message_id)
        return Body(*got) if got is not None else None

    async def _run(self, job: Job) -> bool:
        """One attempt for a job; True if the job is still held in memory (waiting to send)."""
        msg = self.active.get(job.message_id)
        if msg is None:
            return False
        started = time.time()
        cutoff = self._bounce_before.get(job.domain)
        if cutoff is not None and msg.received_at <= cutoff:
            reason = "bounced by the administrator"
            result = AttemptResult(
                replies=synthetic_replies(job.recipients, 550, "5.0.0", reason),
                destination=None,
                source_ip=None,
                tls=False,
                error=reason,
            )
            provider = self.shaper.table.by_domain(job.domain) or DEFAULT
            await self._record(job, msg, None, result, started, provider, {})
            return False
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
            await self._record(job, msg, None, result, started, provider, {})
            return False
        provider = self.shaper.table.lookup(job.domain, [d.hostname for d in destinations])
        self._domain_provider[job.domain] = provider
        body: Body | None = None
        exclude: frozenset[str] = frozenset()
        self._sender_held.pop(job.seq, None)
        if self.senders:
            if msg.sender is None:  # loaded from the spool: the sender is in the message row
                body = await self._body(job.message_id)
                if body is None:
                    return False
                msg.sender = sender_domain(body.mail_from)
            exclude = self.senders.excluded(msg.sender)
        now = time.time()
        decision = self.shaper.acquire(provider, now, self.rng.random(), exclude)
        if isinstance(decision, Wait):
            if now - msg.received_at < self.retry_config(provider).max_age:
                # Held by shaping: not an attempt; try again when the pair can send.
                self.metrics.shaping_waits.labels(provider, decision.reason).inc()
                if decision.reason == CONNECTION_LIMIT:
                    # Woken by the next release for this provider, not by polling.
                    self._parked[provider].append(job)
                    return True
                if decision.reason == SENDER_RESTRICTED:
                    self._sender_held[job.seq] = job
                job.due = now + decision.seconds
                self._schedule(job, now)
                return True
            reason = f"not sent in time: {decision.reason}"
            result = AttemptResult(
                replies=synthetic_replies(job.recipients, 451, "4.4.7", reason),
                destination=None,
                source_ip=None,
                tls=False,
                error=reason,
            )
            await self._record(job, msg, None, result, started, provider, {})
            return False
        grant = decision
        try:
            if body is None:
                body = await self._body(job.message_id)
            if body is None:
                return False  # gone from the spool meanwhile
            if grant.warmup:
                for key in self.shaper.warmup_keys(grant.ip, provider):
                    day = self.shaper.warmup_day(grant.ip, key, now)[0]
                    await self.spool.warmup_add(grant.ip, key, day)
            result = await self.client.deliver(
                source_ip=grant.ip or None,
                helo=grant.helo,
                destinations=destinations,
                mail_from=body.mail_from,
                recipients=job.recipients,
                data=body.data,
                domain=job.domain,
                crlf=body.crlf,
                max_messages=self.shaper.settings(provider).per_ip.max_messages_per_connection,
            )
        finally:
            self.shaper.release(grant)
            parked = self._parked.get(provider)
            if parked:
                self._ready.put_nowait(parked.popleft())
        hits: dict[str, RuleHit] = {}
        seen = time.time()
        for reply in result.replies:
            hit = self.shaper.observe(grant.ip, provider, reply.reply, seen, grant.at)
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
        await self._record(job, msg, body, result, started, provider, hits)
        return False

    async def _record(
        self,
        job: Job,
        msg: Active,
        body: Body | None,
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
            hit = hits.get(reply.recipient)
            decided = decide_outcome(
                reply.code,
                reply.enhanced,
                reply.reply,
                hit.action if hit is not None else None,
                retry_at,
                attempts,
            )
            outcome, line = decided.outcome, decided.reason
            reply_class = classify(reply.code, reply.reply.partition(" ")[2], self._class_rules)
            if decided.at_once:
                soon.append(reply.recipient)
            self.metrics.attempts.labels(
                result.source_ip or "",
                provider,
                self.metrics.domain_label(job.domain, self.cfg, self.shaper.table),
                outcome,
                reply_class,
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
                        status=decided.status,
                        diagnostic=line if result.destination else None,
                        local_reason=None if result.destination else line,
                        remote_mta=mx,
                        last_attempt_date=now,
                    )
                )
            else:
                assert decided.retry_at is not None
                retry.append(reply.recipient)
                updates.append(
                    RecipientUpdate(reply.recipient, False, attempts, decided.retry_at, line[:500])
                )
        if bounces:
            if body is None:
                body = await self._body(job.message_id)
            if body is not None and should_send_dsn(body.mail_from, body.data):
                # The DSN is durable before the bounced recipients are forgotten.
                await self._send_dsn(job.message_id, msg.received_at, body, bounces)
        finished = len(updates) - len(retry)
        last = 0 <= msg.remaining <= finished
        gone = await self.spool.update(job.message_id, updates, last=last)
        c = self.counts
        c.add(c.by_domain, job.domain, -finished)
        if msg.remaining >= 0:
            msg.remaining -= finished
        if gone:
            c.messages -= 1
        later = [r for r in retry if r not in soon]
        now_again = [r for r in retry if r in soon]
        if later:
            # Back to the spool only: the loader brings it back when it is due.
            assert retry_at is not None
            self._due_later(retry_at)
        if now_again and not gone:
            self._add_job(
                Job(now, next(self._seq), job.message_id, job.domain, now_again, attempts), now
            )

    async def _send_dsn(
        self, message_id: str, received_at: float, body: Body, bounces: list[DSNRecipient]
    ) -> None:
        cfg = self.cfg
        dsn = build_dsn(
            reporting_mta=cfg.hostname,
            dsn_from=cfg.bounces.dsn_from or f"MAILER-DAEMON@{cfg.hostname}",
            original_sender=body.mail_from,
            original_message=body.data,
            failures=bounces,
            arrival_date=received_at,
        )
        qid = await self.inject("", [body.mail_from.strip("<>")], dsn)
        self.metrics.dsns.labels("failed").inc()
        log.info(
            "dsn queued",
            extra={"message_id": message_id, "dsn_id": qid, "recipients": len(bounces)},
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

    # -- admin: by domain -----------------------------------------------------------------------

    async def retry_now(self, domain: str) -> dict[str, Any]:
        """Every recipient at `domain` waiting for a retry becomes due now (shaping still
        applies), oldest first."""
        domain = domain_of(domain)
        now = time.time()
        n = await self.spool.retry_now(domain, now)
        self._due_later(now)
        return {"domain": domain, "recipients": n}

    async def bounce(self, domain: str) -> dict[str, Any]:
        """Everything queued for `domain` until now is bounced (a DSN to each sender), at the
        loader's pace; mail accepted afterwards is delivered as usual."""
        domain = domain_of(domain)
        now = time.time()
        self._bounce_before[domain] = now
        await self.spool.retry_now(domain, now)
        self._due_later(now)
        return {"domain": domain, "recipients": self.counts.by_domain.get(domain, 0)}

    # -- introspection -------------------------------------------------------------------------

    def provider_of(self, domain: str) -> str:
        """The provider a domain was last routed to (or is known as); "default" otherwise."""
        return self._domain_provider.get(domain) or self.shaper.table.by_domain(domain) or DEFAULT

    def by_provider(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        active = self.counts.active_by_domain
        for domain, n in self.counts.by_domain.items():
            row = out.setdefault(self.provider_of(domain), {"queued": 0, "active": 0})
            row["queued"] += n
            row["active"] += active.get(domain, 0)
        return out

    def _provider_gauges(self) -> None:
        m = self.metrics
        rows = self.by_provider()
        for provider in self._gauged_providers - set(rows):
            for state in ("active", "waiting"):
                m.queue_provider_recipients.labels(provider, state).set(0)
        for provider, row in rows.items():
            m.queue_provider_recipients.labels(provider, "active").set(row["active"])
            m.queue_provider_recipients.labels(provider, "waiting").set(
                row["queued"] - row["active"]
            )
        self._gauged_providers = set(rows)

    def _gauges(self) -> None:
        # Once a second from the timer: sums over domains, never over messages.
        c = self.counts
        total = sum(c.by_domain.values())
        active = sum(c.active_by_domain.values())
        m = self.metrics
        m.queue_recipients.labels("deferred").set(max(total - active, 0))
        m.queue_recipients.labels("active").set(active)
        m.queue_messages.labels("queued").set(c.messages)
        m.queue_messages.labels("active").set(len(self.active))
        m.queue_active_limit.set(self.active_limit)
        m.queue_oldest_age.set(time.time() - self.oldest if self.oldest is not None else 0)
        if self.disk is not None:
            m.spool_bytes.labels("db").set(self.disk.db_bytes)
            m.spool_bytes.labels("wal").set(self.disk.wal_bytes)
            m.spool_bytes.labels("free-pages").set(self.disk.free_pages_bytes)
            m.spool_disk_free.set(self.disk.disk_free_bytes)
        for row in self.shaper.snapshot(time.time()):
            labels = (row["ip"], row["provider"])
            m.shaping_rate.labels(*labels).set(row["rate"] if row["rate"] is not None else -1)
            ceiling = row["ceiling"]
            m.shaping_ceiling.labels(*labels).set(ceiling if ceiling is not None else -1)
            m.pair_suspended.labels(*labels).set(1 if row["suspendedUntil"] else 0)
            m.pair_quarantined.labels(*labels).set(1 if row["quarantinedUntil"] else 0)
        now = time.time()
        for (ip, provider, day), sent in list(self.shaper.warmup_sent.items()):
            if day == self.shaper.warmup_day(ip, provider, now)[0]:
                m.warmup_sent.labels(ip, provider).set(sent)
        for (ip, provider), cap in self.shaper.caps.items():
            m.warmup_cap.labels(ip, provider).set(cap)

    def status(self, top: int = 20) -> dict[str, Any]:
        c = self.counts
        now = time.time()
        nxt = [self._delayed[0].due] if self._delayed else []
        if self._spool_next_due is not None and self._spool_next_due > now:
            nxt.append(self._spool_next_due)
        biggest = heapq.nlargest(top, c.by_domain.items(), key=lambda kv: kv[1])
        disk = self.disk
        return {
            "messages": c.messages,
            "recipients": sum(c.by_domain.values()),
            "activeMessages": len(self.active),
            "activeLimit": self.active_limit,
            "activeLimitPerDomain": self.domain_limit,
            "oldestAgeSeconds": round(now - self.oldest, 1) if self.oldest is not None else None,
            "jobsReady": self._ready.qsize(),
            "jobsInFlight": self._inflight,
            "jobsDeferred": len(self._delayed),
            "jobsWaitingForConnection": sum(len(d) for d in self._parked.values()),
            # Every source IP is excluded for their sender domain (delivery.senderRestrictions).
            "jobsHeldBySenderRestriction": len(self._sender_held),
            "senderRestrictions": self.senders.describe(),
            "nextRetry": min(nxt) if nxt else None,
            "domains": len(c.by_domain),
            "byDomain": {
                d: {
                    "queued": n,
                    "active": c.active_by_domain.get(d, 0),
                    "provider": self.provider_of(d),
                }
                for d, n in biggest
            },
            "byProvider": self.by_provider(),
            "spool": {
                "dbBytes": disk.db_bytes,
                "walBytes": disk.wal_bytes,
                "freePagesBytes": disk.free_pages_bytes,
                "diskFreeBytes": disk.disk_free_bytes,
                "diskReserveBytes": self.cfg.spool.disk_reserve,
                "refusingNewMail": self.low_on_disk(),
            }
            if disk is not None
            else None,
        }

    def shaping_status(self) -> list[dict[str, Any]]:
        return self.shaper.snapshot(time.time())

    @property
    def empty(self) -> bool:
        return self.counts.messages <= 0
