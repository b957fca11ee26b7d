"""The engine's Prometheus metrics (prefix mailfleet_), on a registry of its own per engine."""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mailfleet.mta.config import EngineConfig

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
FSYNC_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
ACCEPT_BUCKETS = (*FSYNC_BUCKETS, 2.5, 5, 10, 30)
# The `domain` label of every recipient domain the config does not name.
OTHER_DOMAIN = "other"


class OpenConnections:
    """Outbound SMTP connections open in this process, over every DeliveryClient: a config
    reload replaces the client while the old one's connections finish their transactions, and
    mailfleet_outbound_connections counts both (it reads `count` when scraped)."""

    def __init__(self) -> None:
        self.count = 0

    def opened(self) -> None:
        self.count += 1

    def closed(self) -> None:
        self.count -= 1

    def __call__(self) -> float:
        return float(self.count)


OUTBOUND_CONNECTIONS = OpenConnections()


class KnownDomains(Protocol):
    """The provider table: recipient domains it names (shipped or configured)."""

    def by_domain(self, domain: str) -> str | None: ...


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.handoff = Counter(
            "mailfleet_handoff_messages",
            "Queued messages handed between pods while draining, by direction (out: sent to a"
            " peer and deleted here; in: taken from a peer)",
            ["direction"],
            registry=r,
        )
        self.draining = Gauge(
            "mailfleet_draining",
            "1 while the engine drains (takes no mail, hands its queue off or delivers it)",
            registry=r,
        )
        self.fleet_limits_mode = Gauge(
            "mailfleet_fleet_limits_mode",
            "1 for the mode pool-wide limits are in: shared (through the pool's Redis), split"
            " (this pod keeps to its share: no Redis, or Redis unreachable) or local (no pool)",
            ["mode"],
            registry=r,
        )
        self.received = Counter(
            "mailfleet_messages_received",
            "Messages accepted (250) by the submission listener",
            registry=r,
        )
        self.rejected = Counter(
            "mailfleet_submission_rejections",
            "Commands refused by the submission listener, by reason",
            ["reason"],
            registry=r,
        )
        self.attempts = Counter(
            "mailfleet_delivery_attempts",
            "Delivery attempts per recipient, by source IP, provider, recipient domain (only"
            " domains the config names: shaping providers, requireTLSDomains, routes; the rest"
            " count as other), result and reply class",
            ["source_ip", "provider", "domain", "result", "reply_class"],
            registry=r,
        )
        # Recipient domains are unbounded and say whom the fleet mails: on an open /metrics,
        # only domains the config names become label values (see domain_label).
        self._named_for: EngineConfig | None = None
        self._named: frozenset[str] = frozenset()
        self.queue_messages = Gauge(
            "mailfleet_queue_messages",
            "Messages in the spool (queued); of those, being worked on in memory (active)",
            ["state"],
            registry=r,
        )
        self.queue_recipients = Gauge(
            "mailfleet_queue_recipients",
            "Recipients waiting for delivery: active (in memory, being worked on) or deferred"
            " (on disk until due)",
            ["state"],
            registry=r,
        )
        self.queue_active_limit = Gauge(
            "mailfleet_queue_active_limit",
            "Messages that may be worked on at once (spool.activeLimit); the rest wait on disk",
            registry=r,
        )
        self.queue_oldest_age = Gauge(
            "mailfleet_queue_oldest_age_seconds",
            "Age of the oldest message in the spool",
            registry=r,
        )
        self.queue_provider_recipients = Gauge(
            "mailfleet_queue_provider_recipients",
            "Recipients queued per provider: active (in memory, being worked on) or waiting"
            " (on disk, due or deferred)",
            ["provider", "state"],
            registry=r,
        )
        self.spool_bytes = Gauge(
            "mailfleet_spool_bytes",
            "Spool size on disk: the database, its WAL, and free pages inside the database",
            ["file"],
            registry=r,
        )
        self.spool_disk_free = Gauge(
            "mailfleet_spool_disk_free_bytes",
            "Free space on the spool's filesystem (new mail is refused below spool.diskReserve)",
            registry=r,
        )
        self.delivery_latency = Histogram(
            "mailfleet_delivery_latency_seconds",
            "Time from acceptance to final delivery of a recipient",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.accept_latency = Histogram(
            "mailfleet_accept_seconds",
            "Time from the end of a message's DATA to its 250 (headers, signing, the spool's "
            "fsync): what a submitting client waits for",
            buckets=ACCEPT_BUCKETS,
            registry=r,
        )
        self.fsync = Histogram(
            "mailfleet_spool_commit_seconds",
            "Duration of one spool commit (one fsync, shared by a group of operations)",
            buckets=FSYNC_BUCKETS,
            registry=r,
        )
        self.commit_batch = Histogram(
            "mailfleet_spool_commit_batch_size",
            "Operations per spool commit (group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.spool_reads = Counter(
            "mailfleet_spool_reads",
            "Reads of the spool by the queue (page: due recipients to bring into the active set;"
            " next-due: when the next one is due; body: a message's body for an attempt that"
            " does not have it in memory)",
            ["kind"],
            registry=r,
        )
        self.dkim = Counter(
            "mailfleet_dkim_signatures",
            "DKIM signatures made, by algorithm and result",
            ["algorithm", "result"],
            registry=r,
        )
        self.dsns = Counter(
            "mailfleet_dsn_generated", "DSNs written back to senders", ["action"], registry=r
        )
        self.connections = Gauge(
            "mailfleet_outbound_connections", "Open outbound SMTP connections", registry=r
        )
        self.connections.set_function(OUTBOUND_CONNECTIONS)
        self.sessions = Gauge(
            "mailfleet_submission_sessions", "Open submission sessions", registry=r
        )
        self.config_generation = Gauge(
            "mailfleet_config_generation", "Generation of the config in use", registry=r
        )
        self.config_reloads = Counter(
            "mailfleet_config_reloads", "Config reloads, by result", ["result"], registry=r
        )
        pair = ["source_ip", "provider"]
        self.shaping_rate = Gauge(
            "mailfleet_shaping_rate",
            "Messages per second currently allowed per (source IP, provider); -1: unlimited",
            pair,
            registry=r,
        )
        self.shaping_ceiling = Gauge(
            "mailfleet_shaping_ceiling",
            "The rate (msgs/s) at which the provider last throttled a (source IP, provider): what "
            "the shaping found it accepts; -1: never throttled",
            pair,
            registry=r,
        )
        self.pair_suspended = Gauge(
            "mailfleet_shaping_suspended",
            "1 while a (source IP, provider) is suspended",
            pair,
            registry=r,
        )
        self.pair_quarantined = Gauge(
            "mailfleet_shaping_quarantined",
            "1 while a source IP is quarantined for a provider",
            pair,
            registry=r,
        )
        self.rule_hits = Counter(
            "mailfleet_reply_rule_hits",
            "Reply rules that fired, by source IP, provider and action",
            [*pair, "action"],
            registry=r,
        )
        self.shaping_waits = Counter(
            "mailfleet_shaping_waits",
            "Deliveries held back by shaping, by provider and reason",
            ["provider", "reason"],
            registry=r,
        )
        self.warmup_sent = Gauge(
            "mailfleet_warmup_sent", "Messages sent today under a warmup cap", pair, registry=r
        )
        self.warmup_cap = Gauge(
            "mailfleet_warmup_cap", "Today's warmup cap per (source IP, provider)", pair, registry=r
        )
        self.dmarc_reports = Counter(
            "mailfleet_dmarc_reports_mailed",
            "DMARC aggregate reports mailed to a report address, by the SMTP reply class given "
            "(2xx: forwarded to the operator and counted, 4xx: deferred, 5xx: refused)",
            ["result"],
            registry=r,
        )
        self.complaints = Counter(
            "mailfleet_complaints",
            "Complaints (ARF reports) per source IP and provider",
            pair,
            registry=r,
        )
        self.suppressions = Counter(
            "mailfleet_suppressions_added",
            "Recipients added to the suppression list, by reason",
            ["reason"],
            registry=r,
        )
        self.suppressed = Counter(
            "mailfleet_suppressed_recipients",
            "Recipients refused or dropped because they are suppressed",
            ["action"],
            registry=r,
        )
        self.ready = Gauge("mailfleet_ready", "1 when the engine accepts mail", registry=r)

    def domain_label(self, domain: str, cfg: EngineConfig, providers: KnownDomains) -> str:
        """`domain` when the config names it (a shaping provider's recipient domain, shipped or
        configured; delivery.requireTLSDomains; a static route), else "other": the series stay
        as many as the config makes, whatever domains the mail goes to."""
        domain = domain.lower().rstrip(".")
        if cfg is not self._named_for:
            self._named_for = cfg
            self._named = frozenset(
                [d.lower().rstrip(".") for d in cfg.delivery.require_tls_domains]
                + [d for d in cfg.routing.routes if d != "*"]
            )
        if domain in self._named or providers.by_domain(domain) is not None:
            return domain
        return OTHER_DOMAIN

    def observe_commit(self, seconds: float, batch: int) -> None:
        self.fsync.observe(seconds)
        self.commit_batch.observe(batch)


class SupervisorMetrics:
    """The supervisor's own series. Each engine process has its EngineMetrics; the supervisor
    merges their expositions and appends these (docs/operations.md lists both registries)."""

    def __init__(self, processes: int) -> None:
        self.registry = r = CollectorRegistry()
        self.restarts = Counter(
            "mailfleet_process_restarts",
            "Engine processes restarted after they died",
            ["process"],
            registry=r,
        )
        for i in range(processes):
            # Every process has a series from the start, not only after its first restart.
            self.restarts.labels(str(i))
