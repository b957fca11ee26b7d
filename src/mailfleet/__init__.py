"""mailfleet: a Kubernetes operator and delivery engine for a fleet of outbound mail servers."""

__version__ = "0.1.0"
