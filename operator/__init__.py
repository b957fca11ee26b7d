"""mailfleet.operator: the Kopf control plane."""
