"""Shared fixtures: every real peer a test needs is started on loopback and stopped by PID."""

import importlib.util

# Fixture modules register here as they land; each module is a pytest plugin.
_PLUGINS = [
    "fixtures.kube",
    "fixtures.realnode",
    "fixtures.peers",
    "fixtures.engine",
    "fixtures.operator",
    "fixtures.fleet",
    "fixtures.tools",
]
pytest_plugins = [p for p in _PLUGINS if importlib.util.find_spec(p) is not None]
