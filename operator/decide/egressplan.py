"""Managed egress: which node holds each sending address, which proxy a pool's engines send
through, and the proxy the operator runs on each node. Pure: the nodes and pools come in as
values, the children go out as dicts.

A node states the addresses it holds in its `mailfleet.io/sending-addresses` annotation
(naming.SENDING_ADDRESSES_ANNOTATION): whoever attaches an address to a node (cloud-init, a
controller assigning elastic IPs, an admin) writes it next to it, on the object that holds it.
An annotation rather than a label because a list of addresses (IPv6 ones with colons) is not a
label value; rather than a field of the pool because an address moves with its node, not with
the pools that send from it.

The proxy listens on each address it serves and sends from the address a connection reached
(as KumoMTA's kumo-proxy is deployed), so an engine chooses its source address by the proxy
address it dials, and a proxy can only ever send from addresses its node holds.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailfleet.mta.config import parse_hostport
from mailfleet.operator.api.conditions import Cond, plural
from mailfleet.operator.api.crd_models import SendingPool
from mailfleet.operator.api.naming import (
    EGRESS_COMPONENT,
    EGRESS_CONFIG_DIR,
    MANAGER,
    RUN_AS,
    pool_name,
    pool_namespace,
)
from mailfleet.operator.api.reasons import ConditionReason, ConditionType

# The ports a pool's engines may ask a proxy to connect to, besides its routes' and its MX
# port: SMTP, submissions, submission. A proxy that leaked credentials is no open TCP relay.
MAIL_PORTS = (25, 465, 587)
# The proxy's SOCKS5 port on each address, and its HTTP port (/metrics, /readyz) on the node's
# own address.
EGRESS_PORT = 1080
EGRESS_ADMIN_PORT = 9481
EGRESS_APP = "mailfleet-egress"
EGRESS_NODE_LABEL = "mailfleet.io/egress-node"
EGRESS_NODE_ANNOTATION = "mailfleet.io/node"
CONFIG_KEY = "proxy.yaml"


@dataclass(frozen=True)
class NodeAddresses:
    """A node's annotation, read: the addresses it holds and the entries that are none."""

    addresses: frozenset[str] = frozenset()
    invalid: tuple[str, ...] = ()
    # The node's Ready condition: a node that is not (its kubelet stopped, unreachable) has its
    # proxy gone with it, so its addresses are not used until it is back.
    ready: bool = True


def parse_node_addresses(value: str | None, ready: bool = True) -> NodeAddresses:
    """The annotation's addresses (comma- or whitespace-separated), in their canonical text
    (an IPv6 address written two ways is one address)."""
    good: set[str] = set()
    bad: list[str] = []
    for entry in re.split(r"[\s,]+", value or ""):
        if not entry:
            continue
        try:
            good.add(str(ipaddress.ip_address(entry)))
        except ValueError:
            bad.append(entry)
    return NodeAddresses(frozenset(good), tuple(bad), ready)


@dataclass(frozen=True)
class Placement:
    """Where a pool's addresses live."""

    node_of: Mapping[str, str]  # address -> the one node that holds it
    missing: tuple[str, ...] = ()  # on no node
    contested: Mapping[str, tuple[str, ...]] | None = None  # address -> the nodes that claim it
    down: Mapping[str, str] | None = None  # address -> its node, which is not Ready

    @property
    def unplaced(self) -> frozenset[str]:
        return (
            frozenset(self.missing) | frozenset(self.contested or {}) | frozenset(self.down or {})
        )


def canonical(address: str) -> str:
    return str(ipaddress.ip_address(address))


def place(addresses: Iterable[str], nodes: Mapping[str, NodeAddresses]) -> Placement:
    """Each address on the node that holds it; an address on no node, or claimed by two, is
    placed nowhere: sending from it could only fail (or leave from the wrong machine)."""
    holders: dict[str, list[str]] = {}
    for node, held in sorted(nodes.items()):
        for a in held.addresses:
            holders.setdefault(a, []).append(node)
    node_of: dict[str, str] = {}
    missing: list[str] = []
    contested: dict[str, tuple[str, ...]] = {}
    down: dict[str, str] = {}
    for address in addresses:
        a = canonical(address)
        on = holders.get(a, [])
        if not on:
            missing.append(a)
        elif len(on) > 1:
            contested[a] = tuple(on)
        elif not nodes[on[0]].ready:
            down[a] = on[0]
        else:
            node_of[a] = on[0]
    return Placement(node_of, tuple(missing), contested, down)


def placement_condition(p: Placement, host_network: bool = False) -> Cond:
    """The pool's EgressPlaced condition: False names every address that cannot send."""
    if p.missing or p.contested or p.down:
        parts = []
        if p.missing:
            parts.append(
                f"{', '.join(p.missing)} on no node (no node's "
                "mailfleet.io/sending-addresses annotation lists "
                f"{'it' if len(p.missing) == 1 else 'them'})"
            )
        for address, on in sorted((p.contested or {}).items()):
            parts.append(f"{address} claimed by nodes {', '.join(on)}")
        by_node: dict[str, list[str]] = {}
        for address, node in (p.down or {}).items():
            by_node.setdefault(node, []).append(address)
        for node, held in sorted(by_node.items()):
            parts.append(f"{', '.join(sorted(held))} on node {node}, which is not Ready")
        reason = (
            ConditionReason.AddressNotOnNode
            if p.missing
            else ConditionReason.AddressOnTwoNodes
            if p.contested
            else ConditionReason.NodeNotReady
        )
        return Cond(
            ConditionType.EgressPlaced,
            "False",
            reason,
            "not sending from " + "; ".join(parts) + "; the other addresses send",
        )
    placed: dict[str, list[str]] = {}
    for address, node in p.node_of.items():
        placed.setdefault(node, []).append(address)
    where = "; ".join(f"{', '.join(sorted(a))} on {n}" for n, a in sorted(placed.items()))
    n = len(p.node_of)
    return Cond(
        ConditionType.EgressPlaced,
        "True",
        ConditionReason.Placed,
        f"{n} address{'' if n == 1 else 'es'} "
        f"{'bound by the pool pod on' if host_network else 'through the egress proxy of'} "
        f"{plural(len(placed), 'node')}: {where}"[:32768],
    )


def proxy_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"socks5://{host}:{port}"


def pool_proxies(p: Placement, port: int) -> dict[str, str]:
    """Source address -> the proxy URL the engines dial to send from it."""
    return {a: proxy_url(a, port) for a in p.node_of}


def client_name(pool: SendingPool) -> str:
    """The pool's SOCKS5 user name: unique in the cluster."""
    return f"{pool_namespace(pool)}/{pool_name(pool)}"


def pool_ports(pool: SendingPool) -> tuple[int, ...]:
    """The destination ports the pool's engines connect to: the mail ports, its MX port and
    those of its routes."""
    ports = set(MAIL_PORTS) | {pool.spec.routing.mx_port}
    for target in pool.spec.routing.routes.values():
        ports.add(parse_hostport(target, default_port=25)[1])
    return tuple(sorted(ports))


@dataclass(frozen=True)
class EgressUser:
    """A managed pool as its proxies see it."""

    name: str  # client_name
    token_sha256: str  # of the password in its Secret
    addresses: Mapping[str, str]  # address -> node (Placement.node_of)
    ports: tuple[int, ...]


def egress_user(pool: SendingPool, placement: Placement, token_sha256: str) -> EgressUser:
    """The pool as its proxies see it. The addresses of a node that is not Ready stay in its
    proxy's config: the proxy is there again when the node is, without a flap of deletes."""
    addresses = {**placement.node_of, **(placement.down or {})}
    return EgressUser(client_name(pool), token_sha256, addresses, pool_ports(pool))


def token_digest(credentials: str) -> str:
    """The hex SHA-256 of the password of a `user:password` credentials line."""
    _, _, password = credentials.strip().partition(":")
    return hashlib.sha256(password.encode()).hexdigest()


def proxy_configs(users: Sequence[EgressUser], port: int, admin_port: int) -> dict[str, Any]:
    """Node -> the proxy config (mailfleet.mta.config.EgressProxyConfig, as data) of every
    node that holds an address a user sends from."""
    out: dict[str, dict[str, Any]] = {}
    for user in sorted(users, key=lambda u: u.name):
        by_node: dict[str, list[str]] = {}
        for address, node in user.addresses.items():
            by_node.setdefault(node, []).append(address)
        for node, addresses in sorted(by_node.items()):
            conf = out.setdefault(
                node, {"port": port, "adminListen": f"0.0.0.0:{admin_port}", "clients": []}
            )
            conf["clients"].append(
                {
                    "name": user.name,
                    "tokenSHA256": user.token_sha256,
                    "addresses": sorted(addresses, key=ipaddress.ip_address),
                    "ports": list(user.ports),
                }
            )
    return out


def proxy_name(node: str) -> str:
    """The proxy's Deployment and ConfigMap: a DNS label however long the node's name."""
    name = f"egress-{node}".lower()
    if len(name) <= 55 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
        return name
    digest = hashlib.sha256(node.encode()).hexdigest()[:8]
    safe = re.sub(r"[^a-z0-9-]+", "-", node.lower()).strip("-")[:38].strip("-")
    return f"egress-{safe}-{digest}"


def proxy_selector(node: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": EGRESS_APP, EGRESS_NODE_LABEL: proxy_name(node)}


def proxy_labels(node: str) -> dict[str, str]:
    return {
        **proxy_selector(node),
        "app.kubernetes.io/component": EGRESS_COMPONENT,
        "app.kubernetes.io/managed-by": MANAGER,
    }


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_proxy_configmap(node: str, namespace: str, config_text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": proxy_name(node),
            "namespace": namespace,
            "labels": proxy_labels(node),
            "annotations": {EGRESS_NODE_ANNOTATION: node},
        },
        "data": {CONFIG_KEY: config_text},
    }


def render_proxy_deployment(
    node: str, namespace: str, image: str, port: int, admin_port: int
) -> dict[str, Any]:
    """One proxy pod on `node`, in the host's network (where the addresses are). Its config
    comes as a file it re-reads when the ConfigMap changes: a new pool's credentials never
    restart the proxy under the other pools' connections."""
    name = proxy_name(node)
    probe = {"httpGet": {"path": "/readyz", "port": admin_port}, "periodSeconds": 5}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": proxy_labels(node),
            "annotations": {EGRESS_NODE_ANNOTATION: node},
        },
        "spec": {
            "replicas": 1,
            # Host ports: the old pod must have let go of them before the new one listens.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": proxy_selector(node)},
            "template": {
                "metadata": {
                    "labels": proxy_labels(node),
                    "annotations": {EGRESS_NODE_ANNOTATION: node},
                },
                "spec": {
                    "hostNetwork": True,
                    "dnsPolicy": "Default",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchFields": [
                                            {
                                                "key": "metadata.name",
                                                "operator": "In",
                                                "values": [node],
                                            }
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                    # As a DaemonSet's pods: a cordoned node's addresses still send while its
                    # mail pods move away.
                    "tolerations": [
                        {
                            "key": "node.kubernetes.io/unschedulable",
                            "operator": "Exists",
                            "effect": "NoSchedule",
                        }
                    ],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "proxy",
                            "image": image,
                            "command": [
                                "mailfleet",
                                "egress-proxy",
                                "--config",
                                f"{EGRESS_CONFIG_DIR}/{CONFIG_KEY}",
                                "--listen-address",
                                "$(POD_IP)",
                            ],
                            "env": [
                                {
                                    "name": "POD_IP",
                                    "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                }
                            ],
                            "ports": [
                                {"name": "socks", "containerPort": port, "protocol": "TCP"},
                                {"name": "admin", "containerPort": admin_port, "protocol": "TCP"},
                            ],
                            "readinessProbe": probe,
                            "livenessProbe": {
                                "httpGet": {"path": "/livez", "port": admin_port},
                                "periodSeconds": 10,
                                "failureThreshold": 3,
                            },
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "64Mi"},
                                "limits": {"memory": "256Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "config", "mountPath": EGRESS_CONFIG_DIR, "readOnly": True}
                            ],
                        }
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": name}}],
                },
            },
        },
    }
