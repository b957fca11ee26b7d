"""Names, labels and paths shared by everything a SendingPool renders into."""

from __future__ import annotations

from typing import Any

from mailfleet.operator.api.crd_models import (
    API_VERSION,
    SendingPool,
    SendingPoolSpec,
)

MANAGER = "mailfleet-operator"


HASH_ANNOTATION = "mailfleet.io/config-hash"


APP_NAME = "mailfleet-mta"


ADMIN_PORT = 8025


CONFIG_DIR = "/etc/mailfleet"


CONFIG_FILE = f"{CONFIG_DIR}/engine.yaml"


SECRETS_DIR = "/var/run/secrets/mailfleet"


SPOOL_DIR = "/var/spool/mailfleet"
ADMIN_TOKEN_DIR = f"{SECRETS_DIR}/admin"
ADMIN_TOKEN_KEY = "token"
# Marks the Secret holding a pool's admin token; the value is the pool's name.
ADMIN_TOKEN_LABEL = "mailfleet.io/admin-token-for"


RUN_AS = 10001


# Long enough for a pod to hand its queue to the network before it goes (preStop drains).
TERMINATION_GRACE_SECONDS = 600


DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "512Mi"},
}


def pool_name(pool: SendingPool) -> str:
    return str(pool.metadata["name"])


def pool_namespace(pool: SendingPool) -> str:
    return str(pool.metadata.get("namespace", "default"))


def selector_labels(name: str) -> dict[str, str]:
    """The labels that select a pool's pods (StatefulSet, Services, PDB, scale subresource)."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def child_labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/component": "mta",
        "app.kubernetes.io/part-of": "mailfleet",
        "app.kubernetes.io/managed-by": MANAGER,
    }


def pod_name(pool: str, ordinal: int) -> str:
    return f"{pool}-{ordinal}"


def owner_reference(pool: SendingPool) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "SendingPool",
        "name": pool_name(pool),
        "uid": str(pool.metadata["uid"]),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def dkim_mount(secret: str) -> str:
    return f"{SECRETS_DIR}/dkim/{secret}"


def dkim_secrets(spec: SendingPoolSpec) -> list[str]:
    """The distinct DKIM Secrets, in the order the spec first names them."""
    return list(dict.fromkeys(k.secret_ref for k in spec.dkim))


# Managed egress (issue 22): the node annotation that lists the sending addresses a node holds
# (comma- or space-separated IPv4/IPv6), and the Secret with a pool's proxy credentials.
SENDING_ADDRESSES_ANNOTATION = "mailfleet.io/sending-addresses"
EGRESS_TOKEN_LABEL = "mailfleet.io/egress-credentials-for"
EGRESS_TOKEN_KEY = "credentials"
EGRESS_AUTH_DIR = f"{SECRETS_DIR}/egress"
# The egress proxy's config in its pod, and the label its children carry.
EGRESS_CONFIG_DIR = "/etc/mailfleet-egress"
EGRESS_COMPONENT = "egress-proxy"


def egress_secret_name(pool: str) -> str:
    return f"{pool}-egress"


def admin_secret_name(pool: str) -> str:
    return f"{pool}-admin"


_DECIMAL_SUFFIX = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_DECIMAL_SUFFIX |= {"P": 1e15, "E": 1e18}
_BINARY_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity_value(q: str) -> float:
    """A Kubernetes quantity ("500m", "2", "1.5", "1e3m", "1Ki") as a number; ValueError when it
    is not one (the CRD's pattern already refuses those)."""
    text = q.strip()
    for suffix, factor in _BINARY_SUFFIX.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    if text and text[-1] in _DECIMAL_SUFFIX:
        return float(text[:-1]) * _DECIMAL_SUFFIX[text[-1]]
    return float(text)


def engine_processes(spec: SendingPoolSpec) -> int:
    """Engine processes per pod: one per whole CPU of the pod's CPU request, at least one (an
    event loop uses about one core; a fraction of a core is better used by one process)."""
    requests = spec.resources.requests if spec.resources is not None else {}
    cpu = requests.get("cpu") or DEFAULT_RESOURCES["requests"]["cpu"]
    try:
        cores = quantity_value(str(cpu))
    except ValueError:
        return 1
    # A whole CPU written as 1999m/1000 is not one more: small float noise stays below it.
    return max(1, int(cores + 1e-9))
