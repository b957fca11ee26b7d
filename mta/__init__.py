"""mailfleet.mta: the delivery engine (data plane)."""
