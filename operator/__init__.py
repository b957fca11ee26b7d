"""mailfleet.operator: the Kopf control plane, in layers (.importlinter: operator-layers).

- here: the entry points and Kopf wiring (main, handlers, webhook, settings, dmarcserver), the
  generators of crds/ and the guide's tables (crdgen, docgen), the Prometheus registries
  (metrics, domainmetrics);
- loops: the coordinator (reconciler.Operator) and the loops it runs, with their memory;
- clients: the Kubernetes API, the engines' admin API, DNS, Prometheus queries;
- decide: the pure decisions (no I/O, no clock);
- api: the mailfleet.io models, names, conditions and reasons, and what the loops hand back.
"""
