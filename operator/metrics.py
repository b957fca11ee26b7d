"""The operator's own Prometheus metrics: reconciles, errors, durations, API writes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server


class OperatorMetrics:
    """In their own registry, so tests and several operators in one process do not clash."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = Counter(
            "mailfleet_operator_reconciles_total",
            "Reconciles run, by kind and result (unchanged, changed, error)",
            ["kind", "result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "mailfleet_operator_reconcile_errors_total",
            "Reconciles that failed, by kind and error",
            ["kind", "error"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "mailfleet_operator_reconcile_duration_seconds",
            "Time one reconcile took, by kind",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.api_writes = Counter(
            "mailfleet_operator_api_writes_total",
            "Write requests sent to the API server, by kind and verb (apply, patch-status)",
            ["kind", "verb"],
            registry=self.registry,
        )
        self.events = Counter(
            "mailfleet_operator_events_total",
            "Kubernetes Events posted, by type and reason",
            ["type", "reason"],
            registry=self.registry,
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """/metrics on a background thread (prometheus_client's own server)."""
        start_http_server(port, addr=addr, registry=self.registry)
