"""The engine's Prometheus metrics (prefix mailfleet_), on a registry of its own per engine."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
FSYNC_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
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
            "Delivery attempts per recipient, by source IP, destination domain, result and class",
            ["source_ip", "domain", "result", "reply_class"],
            registry=r,
        )
        self.queue_messages = Gauge(
            "mailfleet_queue_messages", "Messages in the spool", ["state"], registry=r
        )
        self.queue_recipients = Gauge(
            "mailfleet_queue_recipients",
            "Recipients waiting for delivery: active (due now) or deferred (waiting to retry)",
            ["state"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "mailfleet_delivery_latency_seconds",
            "Time from acceptance to final delivery of a recipient",
            buckets=LATENCY_BUCKETS,
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
        self.sessions = Gauge(
            "mailfleet_submission_sessions", "Open submission sessions", registry=r
        )
        self.config_generation = Gauge(
            "mailfleet_config_generation", "Generation of the config in use", registry=r
        )
        self.config_reloads = Counter(
            "mailfleet_config_reloads", "Config reloads, by result", ["result"], registry=r
        )
        self.ready = Gauge("mailfleet_ready", "1 when the engine accepts mail", registry=r)

    def observe_commit(self, seconds: float, batch: int) -> None:
        self.fsync.observe(seconds)
        self.commit_batch.observe(batch)
