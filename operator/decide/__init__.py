"""The operator's decisions, pure: rendering, merging, warmup and health verdicts, status, drift,
admission checks, keys and certificates. No Kubernetes, HTTP, DNS or clock of their own: what
they need is passed in (.importlinter: decisions-are-pure)."""
