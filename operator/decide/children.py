"""The pool's children: StatefulSet, Services, ConfigMap, PodDisruptionBudget, ServiceAccount."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from mailfleet.operator.api.crd_models import (
    SendingPool,
    SendingPoolSpec,
)
from mailfleet.operator.api.naming import (
    ADMIN_PORT,
    ADMIN_TOKEN_DIR,
    CONFIG_DIR,
    CONFIG_FILE,
    DEFAULT_RESOURCES,
    EGRESS_AUTH_DIR,
    RUN_AS,
    SECRETS_DIR,
    SPOOL_DIR,
    TERMINATION_GRACE_SECONDS,
    admin_secret_name,
    child_labels,
    dkim_mount,
    dkim_secrets,
    egress_secret_name,
    engine_processes,
    owner_reference,
    pool_name,
    pool_namespace,
    selector_labels,
)
from mailfleet.operator.decide.drift import stamp


def _meta(pool: SendingPool, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": pool_namespace(pool),
        "labels": child_labels(pool_name(pool)),
        "ownerReferences": [owner_reference(pool)],
    }


# The preStop hook: stop taking mail and deliver what is queued, bounded by the grace period.
# The kubelet expands $(VAR) in command and args but not in hooks, so the engine reads POD_IP
# from its environment (no shell needed in the image).
PRESTOP_COMMAND = [
    "mailfleet", "mta", "drain", "--config", CONFIG_FILE, "--listen-address-env", "POD_IP",
    "--wait", str(TERMINATION_GRACE_SECONDS - 30),
]  # fmt: skip


def _resources(spec: SendingPoolSpec) -> dict[str, dict[str, str]]:
    if spec.resources is None:
        return copy.deepcopy(DEFAULT_RESOURCES)
    out: dict[str, dict[str, str]] = {}
    if spec.resources.requests:
        out["requests"] = dict(sorted(spec.resources.requests.items()))
    if spec.resources.limits:
        out["limits"] = dict(sorted(spec.resources.limits.items()))
    return out


def engine_command(spec: SendingPoolSpec) -> list[str]:
    command = ["mailfleet", "mta", "--config", CONFIG_FILE, "--listen-address", "$(POD_IP)"]
    processes = engine_processes(spec)
    # One process (a request below two cores) keeps the command pods have always had.
    return [*command, "--processes", str(processes)] if processes > 1 else command


# A node name cannot hold '/': a node affinity listing only this matches no node.
NO_NODE = "mailfleet.io/no-node-holds-an-address"


def host_network_affinity(name: str, nodes: Sequence[str]) -> dict[str, Any]:
    """egress: hostNetwork: only the nodes that hold the pool's addresses, one pod per node
    (the pod binds the addresses of its node, and its ports are the node's)."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchFields": [
                            {
                                "key": "metadata.name",
                                "operator": "In",
                                "values": sorted(nodes) or [NO_NODE],
                            }
                        ]
                    }
                ]
            }
        },
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": selector_labels(name)},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        },
    }


def render_statefulset(
    pool: SendingPool, replicas: int, image: str, host_nodes: Sequence[str] | None = None
) -> dict[str, Any]:
    """`host_nodes`: with egress hostNetwork, the nodes that hold the pool's addresses."""
    name = pool_name(pool)
    spec = pool.spec
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{name}-config"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "spool", "mountPath": SPOOL_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    secrets = [(f"dkim-{i}", s, dkim_mount(s)) for i, s in enumerate(dkim_secrets(spec))]
    if spec.submission.auth_secret_ref:
        secrets.append(("auth", spec.submission.auth_secret_ref, f"{SECRETS_DIR}/auth"))
    if spec.submission.tls_secret_ref:
        secrets.append(("tls", spec.submission.tls_secret_ref, f"{SECRETS_DIR}/tls"))
    secrets.append(("admin", admin_secret_name(name), ADMIN_TOKEN_DIR))
    if spec.egress.mode == "managed":
        secrets.append(("egress", egress_secret_name(name), EGRESS_AUTH_DIR))
    for volume, secret, path in secrets:
        volumes.append({"name": volume, "secret": {"secretName": secret, "defaultMode": 0o440}})
        mounts.append({"name": volume, "mountPath": path, "readOnly": True})
    # One node going away takes as few of the pool's pods (and queues) as it can; preferred,
    # so a one-node cluster still runs them all.
    affinity: dict[str, Any] = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": selector_labels(name)},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }
    if host_nodes is not None:
        affinity = host_network_affinity(name, host_nodes)
    container: dict[str, Any] = {
        "name": "mta",
        "image": spec.image or image,
        # Each pod listens on its own address: the kubelet's probes and the Services reach it
        # there, and pods sharing a host (the local node) do not clash on ports.
        "command": engine_command(spec),
        "ports": [
            {"name": "submission", "containerPort": spec.submission.port, "protocol": "TCP"},
            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "volumeMounts": mounts,
        "resources": _resources(spec),
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "admin"},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "admin"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "lifecycle": {"preStop": {"exec": {"command": PRESTOP_COMMAND}}},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    claim: dict[str, Any] = {
        "metadata": {"name": "spool", "labels": selector_labels(name)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.storage.size}},
        },
    }
    if spec.storage.storage_class_name:
        claim["spec"]["storageClassName"] = spec.storage.storage_class_name
    return stamp(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": _meta(pool, name),
            "spec": {
                "replicas": replicas,
                "serviceName": f"{name}-headless",
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": selector_labels(name)},
                "template": {
                    "metadata": {"labels": child_labels(name)},
                    "spec": {
                        "serviceAccountName": f"{name}-mta",
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                        "affinity": affinity,
                        # The node's network: its addresses bound as they are. Cluster DNS
                        # still resolves (the engine asks its own nameservers for MX).
                        **(
                            {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}
                            if host_nodes is not None
                            else {}
                        ),
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": RUN_AS,
                            "runAsGroup": RUN_AS,
                            "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [container],
                        "volumes": volumes,
                    },
                },
                "volumeClaimTemplates": [claim],
            },
        }
    )


def render_headless_service(pool: SendingPool) -> dict[str, Any]:
    name = pool_name(pool)
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(pool, f"{name}-headless"),
            "spec": {
                "clusterIP": "None",
                # Pods get their DNS names while still starting, as StatefulSets expect.
                "publishNotReadyAddresses": True,
                "selector": selector_labels(name),
                "ports": [
                    {
                        "name": "submission",
                        "port": pool.spec.submission.port,
                        "targetPort": "submission",
                        "protocol": "TCP",
                    },
                    {
                        "name": "admin",
                        "port": ADMIN_PORT,
                        "targetPort": "admin",
                        "protocol": "TCP",
                    },
                ],
            },
        }
    )


def render_submission_service(pool: SendingPool) -> dict[str, Any]:
    name = pool_name(pool)
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(pool, name),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(name),
                "ports": [
                    {
                        "name": "submission",
                        "port": pool.spec.submission.port,
                        "targetPort": "submission",
                        "protocol": "TCP",
                    }
                ],
            },
        }
    )


def render_configmap(pool: SendingPool, config_text: str) -> dict[str, Any]:
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(pool, f"{pool_name(pool)}-config"),
            "data": {"engine.yaml": config_text},
        }
    )


def render_pdb(pool: SendingPool) -> dict[str, Any]:
    name = pool_name(pool)
    return stamp(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta(pool, name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(name)}},
        }
    )


# Who may reach a pool's admin port: the operator (config pushes, drains), Prometheus (metrics)
# and the pool's own pods (handoff while draining). The submission port stays open: who may
# relay is the engine's decision (trusted networks, AUTH).
ADMIN_CLIENTS = ("mailfleet-operator", "prometheus")
# The chart's operator pods by labels its nameOverride and fullnameOverride do not change (their
# app.kubernetes.io/name becomes <nameOverride>-operator).
OPERATOR_POD_LABELS = {
    "app.kubernetes.io/part-of": "mailfleet",
    "app.kubernetes.io/component": "operator",
}


def render_network_policy(pool: SendingPool) -> dict[str, Any]:
    name = pool_name(pool)
    return stamp(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(pool, f"{name}-admin"),
            "spec": {
                "podSelector": {"matchLabels": selector_labels(name)},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"ports": [{"port": pool.spec.submission.port, "protocol": "TCP"}]},
                    {
                        "ports": [{"port": ADMIN_PORT, "protocol": "TCP"}],
                        "from": [
                            {"podSelector": {"matchLabels": selector_labels(name)}},
                            {
                                "namespaceSelector": {},
                                "podSelector": {
                                    "matchExpressions": [
                                        {
                                            "key": "app.kubernetes.io/name",
                                            "operator": "In",
                                            "values": list(ADMIN_CLIENTS),
                                        }
                                    ]
                                },
                            },
                            {
                                "namespaceSelector": {},
                                "podSelector": {"matchLabels": dict(OPERATOR_POD_LABELS)},
                            },
                        ],
                    },
                ],
            },
        }
    )


def render_service_account(pool: SendingPool) -> dict[str, Any]:
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(pool, f"{pool_name(pool)}-mta"),
            "automountServiceAccountToken": False,
        }
    )
