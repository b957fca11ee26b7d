"""What the operator talks to: the Kubernetes API (kube), the engines' admin API (engine_admin),
DNS and DNSBLs (dnscheck, blocklist), Prometheus queries (promql)."""
