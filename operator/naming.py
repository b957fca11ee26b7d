"""Names, labels and paths shared by everything a SendingPool renders into."""

from __future__ import annotations

from typing import Any

from mailfleet.operator.crd_models import (
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


def admin_secret_name(pool: str) -> str:
    return f"{pool}-admin"
