"""The shapes the operator's parts agree on: the mailfleet.io kinds (crd_models), the names and
labels of what a pool renders into (naming), status conditions and the reasons they and events
carry (conditions, reasons), and what the loops hand back to the coordinator (outcomes).
Imports nothing else of the operator."""
