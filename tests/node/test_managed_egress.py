"""egress: managed on the real node: the node's annotation says which sending addresses it holds,
the operator runs the egress proxy there (host network, from the image) and the pool's engines,
in their own network namespaces, send through it from each address.

The addresses are /32s on the host's loopback device outside 127/8 (pods cannot reach 127/8):
what a secondary address on a node's NIC is to its pods.
"""

from __future__ import annotations

import contextlib
import json
import smtplib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.fleet import Gate, fast_retry_policy, message_ids, pool_manifest, submit
from fixtures.keys import RSA_KEY
from fixtures.operator import free_port, wait_for
from fixtures.realnode import RealCluster
from fixtures.smtppeers import RecordingMX

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MAILFLEET = REPO / ".venv" / "bin" / "mailfleet"
POOL = "managed"
ON_NODE = ["10.250.0.11", "10.250.0.12"]
NOWHERE = "10.250.0.13"  # in the pool, on no node's annotation
# The providers' side: the MX listens here, not on 127/8 (the kernel drops a connection from a
# non-loopback source to a loopback destination).
MX_ADDRESS = "10.250.0.1"
ANNOTATION = "mailfleet.io/sending-addresses"
ADMIN_PORT = 9481


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def node_addresses() -> Iterator[list[str]]:
    """ON_NODE and NOWHERE on this host (NOWHERE too, so a bind to it would succeed: only the
    operator's placement keeps the pool from sending from it)."""
    added = []
    try:
        for a in [*ON_NODE, NOWHERE, MX_ADDRESS]:
            ip("addr", "add", f"{a}/32", "dev", "lo")
            added.append(a)
        yield ON_NODE
    finally:
        for a in added:
            subprocess.run(["ip", "addr", "del", f"{a}/32", "dev", "lo"], capture_output=True)


# The second node's pair (test_two_nodes_...), and where the host submits to either node's pods
# from.
ON_NODE_2 = ["10.250.0.21", "10.250.0.22"]
TWO_NODES = ["10.244.0.1/32", "10.245.0.1/32"]


@pytest.fixture
def two_node_addresses() -> Iterator[None]:
    added = []
    try:
        for a in [*ON_NODE, *ON_NODE_2, MX_ADDRESS]:
            ip("addr", "add", f"{a}/32", "dev", "lo")
            added.append(a)
        yield None
    finally:
        for a in added:
            subprocess.run(["ip", "addr", "del", f"{a}/32", "dev", "lo"], capture_output=True)


def node_name(rc: RealCluster) -> str:
    return str(rc.get("node", "mailfleet-node")["metadata"]["name"])


def start_operator(
    rc: RealCluster, ns: str, egress_ns: str, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    """The operator on the host (as `mailfleet operator --standalone`), its proxies in
    egress_ns, its pools' pods from the image."""
    metrics_port = free_port()
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as out:
        operator = subprocess.Popen(
            [str(MAILFLEET), "operator", "--standalone", "--namespace", ns,
             "--egress-namespace", egress_ns, "--engine-image", rc.image,
             "--metrics-port", str(metrics_port), "--metrics-addr", "127.0.0.1"],
            stdout=out, stderr=subprocess.STDOUT, env={**rc.env, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    return operator, log_path


def stop(operator: subprocess.Popen[bytes]) -> None:
    operator.terminate()
    try:
        operator.wait(timeout=20)
    except subprocess.TimeoutExpired:
        operator.kill()
        operator.wait(timeout=10)


@contextlib.contextmanager
def egress_world(
    rc: RealCluster, ns: str, tmp_path: Path, held: dict[str, list[str]], egress_ns: str | None
) -> Iterator[None]:
    """The nodes annotated with the addresses they hold (`held`), the operator running with its
    proxies in egress_ns (a namespace of its own: hostNetwork is refused under the restricted
    standard), and everything undone afterwards. A failure shows both namespaces and the
    operator's log."""
    proxies = egress_ns or ns
    if egress_ns is not None:
        rc.kubectl("create", "namespace", egress_ns)
    for node, addresses in held.items():
        rc.kubectl("annotate", "node", node, f"{ANNOTATION}={','.join(addresses)}", "--overwrite")
    operator, log_path = start_operator(rc, ns, proxies, tmp_path)
    try:
        yield
    except (AssertionError, TimeoutError) as e:
        log = log_path.read_text(errors="replace")[-6000:]
        raise AssertionError(
            f"{e}\n--- the pool's namespace:\n{rc.describe(ns)}\n--- the proxies:\n"
            f"{rc.describe(proxies)}\n--- the operator:\n{log}"
        ) from None
    finally:
        stop(operator)
        for node in held:
            rc.kubectl("annotate", "node", node, f"{ANNOTATION}-", check=False)
        rc.kubectl("delete", "sendingpools", "--all", "-n", ns, "--wait=false", check=False)
        if egress_ns is not None:
            rc.kubectl("delete", "namespace", egress_ns, "--wait=false", check=False)


def apply_pool(
    rc: RealCluster, ns: str, mx: RecordingMX, addresses: list[str], mode: str,
    trusted: list[str], port: int = 2525, desired: int = 2,
) -> None:  # fmt: skip
    """The DKIM Secret, the fast-retry policy and the pool (POOL) sending from `addresses`."""
    rc.kubectl("create", "secret", "generic", "dkim-example-test", "-n", ns,
               f"--from-file=rsa.pem={RSA_KEY.key_file}")  # fmt: skip
    rc.kubectl("apply", "-f", "-", input=json.dumps(fast_retry_policy(ns)))
    pool = pool_manifest(
        ns, POOL, mx, addresses,
        replicas={"min": 1, "max": 3, "desired": desired},
        egress={"mode": mode},
        submission={"port": port, "trustedCIDRs": trusted},
        storage={"size": "64Mi"},
    )  # fmt: skip
    rc.kubectl("apply", "-f", "-", input=json.dumps(pool))


def ready_pods(rc: RealCluster, ns: str, n: int) -> list[dict[str, Any]]:
    pods = rc.get("pods", "-n", ns, "-l", f"app.kubernetes.io/instance={POOL}")["items"]
    ready = [
        p
        for p in pods
        if p["metadata"].get("deletionTimestamp") is None
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
    ]
    return ready if len(ready) == n else []


def readyz(host: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{host}:{ADMIN_PORT}/readyz", timeout=5) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def proxy_metric(host: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://{host}:{ADMIN_PORT}/metrics", timeout=5) as rsp:
        text = rsp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_managed_pool_sends_from_each_node_address_through_the_operators_proxy(
    real_cluster: RealCluster,
    real_namespace: str,
    recording_mx: Callable[..., RecordingMX],
    node_addresses: list[str],
    tmp_path: Path,
) -> None:
    rc, ns = real_cluster, real_namespace
    node = node_name(rc)
    # hostNetwork is not allowed in a namespace under the restricted (or baseline) standard:
    # the proxies run in the operator's own namespace, which must allow it.
    egress_ns = f"{ns}-egress"[:63].rstrip("-")
    with egress_world(rc, ns, tmp_path, {node: ON_NODE}, egress_ns):
        mx = recording_mx(MX_ADDRESS)
        apply_pool(rc, ns, mx, [*ON_NODE, NOWHERE], "managed", [f"{rc.node_ip}/32"])

        def status() -> dict[str, Any]:
            return rc.get("sendingpool", POOL, "-n", ns).get("status") or {}

        def condition(kind: str) -> dict[str, Any] | None:
            return next((c for c in status().get("conditions", []) if c["type"] == kind), None)

        # The address on no node: a condition and an event name it; nothing sends from it.
        placed = wait_for("the EgressPlaced condition", lambda: condition("EgressPlaced"), 60)
        assert (placed["status"], placed["reason"]) == ("False", "AddressNotOnNode"), placed
        assert NOWHERE in placed["message"] and ON_NODE[0] not in placed["message"]
        events = rc.get("events", "-n", ns, "--field-selector", "reason=AddressNotOnNode")
        assert any(NOWHERE in e["message"] for e in events["items"]), events
        ips = {i["address"]: i for i in status()["ips"]}
        assert ips[ON_NODE[0]]["node"] == node and ips[ON_NODE[1]]["node"] == node
        assert "on no node" in ips[NOWHERE]["reason"]

        # The operator's proxy runs on the node, in its network, ready on the node's address.
        deploys = wait_for(
            "the egress proxy Deployment",
            lambda: rc.get("deployments", "-n", egress_ns)["items"] or None,
            60,
        )
        assert len(deploys) == 1
        wait_for("the proxy ready", lambda: readyz(rc.node_ip)[0] == 200, 120)
        secret = rc.get("secret", f"{POOL}-egress", "-n", ns)
        assert secret["metadata"]["ownerReferences"][0]["name"] == POOL

        def pod_ips() -> list[str]:
            return sorted(p["status"]["podIP"] for p in ready_pods(rc, ns, 2))

        pods = wait_for("both pool pods Ready", lambda: pod_ips() or None, 240)
        assert all(p.startswith("10.244.") for p in pods), pods
        ids = submit(pods[0], 10, "a") + submit(pods[1], 10, "b")
        got = wait_for("20 messages delivered", lambda: len(mx.messages()) >= 20 or None, 120)
        assert got and message_ids(mx) >= set(ids)
        peers = {m.peer_ip for m in mx.messages()}
        # Each pod sends from its own address, through the proxy on the node that holds it.
        assert peers == set(ON_NODE), peers
        for a in ON_NODE:
            assert proxy_metric(rc.node_ip, "mailfleet_egress_connections_total",
                                source=a, result="relayed") >= 1  # fmt: skip

        # The proxy pod deleted under load: deliveries defer, then resume through its successor.
        proxy_pod = rc.get("pods", "-n", egress_ns)["items"][0]["metadata"]["name"]
        more = submit(pods[0], 15, "c") + submit(pods[1], 15, "d")
        rc.kubectl("delete", "pod", proxy_pod, "-n", egress_ns, "--wait=false")
        wait_for("every accepted message delivered",
                 lambda: message_ids(mx) >= set(ids) | set(more), 240)  # fmt: skip
        assert {m.peer_ip for m in mx.messages()} == set(ON_NODE)

        # The address leaves the node: the proxy's readiness names it.
        subprocess.run(["ip", "addr", "del", f"{ON_NODE[1]}/32", "dev", "lo"], check=True)
        _, body = wait_for("readyz failing", lambda: (r := readyz(rc.node_ip))[0] == 503 and r, 30)
        assert ON_NODE[1] in body
        ip("addr", "add", f"{ON_NODE[1]}/32", "dev", "lo")
        wait_for("readyz passing again", lambda: readyz(rc.node_ip)[0] == 200, 30)


def test_two_nodes_four_addresses_each_pair_leaves_through_its_nodes_proxy(
    real_cluster: RealCluster,
    second_node: Any,
    real_namespace: str,
    recording_mx: Callable[..., RecordingMX],
    two_node_addresses: None,
    tmp_path: Path,
) -> None:
    rc, ns = real_cluster, real_namespace
    first, second = "mailfleet-node", second_node.spec.name
    egress_ns = f"{ns}-egress"[:63].rstrip("-")
    with egress_world(rc, ns, tmp_path, {first: ON_NODE, second: ON_NODE_2}, egress_ns):
        mx = recording_mx(MX_ADDRESS)
        # Interleaved: pod 0 owns .11 and .21, pod 1 .12 and .22 (round robin): each pod sends
        # through both nodes' proxies, whichever node it runs on.
        addresses = [ON_NODE[0], ON_NODE[1], ON_NODE_2[0], ON_NODE_2[1]]
        apply_pool(rc, ns, mx, addresses, "managed", TWO_NODES)
        pods = wait_for("both pool pods Ready", lambda: ready_pods(rc, ns, 2) or None, 240)
        # The pool's pods spread over the two nodes (preferred anti-affinity).
        assert {p["spec"]["nodeName"] for p in pods} == {first, second}, pods
        placed = rc.get("sendingpool", POOL, "-n", ns)["status"]
        cond = next(c for c in placed["conditions"] if c["type"] == "EgressPlaced")
        assert (cond["status"], cond["reason"]) == ("True", "Placed"), cond
        assert {i["address"]: i.get("node") for i in placed["ips"]} == {
            ON_NODE[0]: first, ON_NODE[1]: first, ON_NODE_2[0]: second, ON_NODE_2[1]: second,
        }  # fmt: skip
        # One proxy per node, each on its node's address.
        deploys = rc.get("deployments", "-n", egress_ns)["items"]
        assert len(deploys) == 2, [d["metadata"]["name"] for d in deploys]
        for node_ip in ("10.244.0.1", second_node.spec.ip):
            wait_for(f"the proxy on {node_ip} ready", lambda a=node_ip: readyz(a)[0] == 200, 120)
        ids: list[str] = []
        for i, p in enumerate(pods):
            ids += submit(p["status"]["podIP"], 12, f"n{i}")
        wait_for("24 messages delivered", lambda: message_ids(mx) >= set(ids) or None, 180)
        assert {m.peer_ip for m in mx.messages()} == set(addresses)
        # Each pair through its own node's proxy, and only there.
        for node_ip, mine, other in (
            ("10.244.0.1", ON_NODE, ON_NODE_2),
            (second_node.spec.ip, ON_NODE_2, ON_NODE),
        ):
            for a in mine:
                assert proxy_metric(node_ip, "mailfleet_egress_connections_total",
                                    source=a, result="relayed") >= 1, (node_ip, a)  # fmt: skip
            for a in other:
                assert proxy_metric(node_ip, "mailfleet_egress_connections_total", source=a) == 0


def test_a_node_that_goes_away_strands_its_queue_and_the_other_node_carries_on(
    real_cluster: RealCluster,
    second_node: Any,
    real_namespace: str,
    recording_mx: Callable[..., RecordingMX],
    two_node_addresses: None,
    tmp_path: Path,
) -> None:
    rc, ns = real_cluster, real_namespace
    first, second = "mailfleet-node", second_node.spec.name
    egress_ns = f"{ns}-egress"[:63].rstrip("-")
    partitioned = False
    try:
        with egress_world(rc, ns, tmp_path, {first: ON_NODE, second: ON_NODE_2}, egress_ns):
            mx = recording_mx(MX_ADDRESS)
            gate = Gate()
            mx.on_rcpt = gate
            addresses = [ON_NODE[0], ON_NODE[1], ON_NODE_2[0], ON_NODE_2[1]]
            apply_pool(rc, ns, mx, addresses, "managed", TWO_NODES)
            pods = wait_for("both pool pods Ready", lambda: ready_pods(rc, ns, 2) or None, 240)
            by_node = {p["spec"]["nodeName"]: p for p in pods}
            assert set(by_node) == {first, second}, pods
            away, stays = by_node[second], by_node[first]
            for node_ip in ("10.244.0.1", second_node.spec.ip):
                wait_for(
                    f"the proxy on {node_ip} ready", lambda a=node_ip: readyz(a)[0] == 200, 120
                )

            def status() -> dict[str, Any]:
                return rc.get("sendingpool", POOL, "-n", ns).get("status") or {}

            def queued(pod: str) -> int:
                return next((p.get("queued", 0) for p in status().get("pods", [])
                             if p["name"] == pod), 0)  # fmt: skip

            # Mail queued on the pod of the node that will go away (the MX defers it for now).
            held = submit(away["status"]["podIP"], 6, "held")
            name = away["metadata"]["name"]
            wait_for(f"{name} reporting its 6 queued", lambda: queued(name) >= 6, 60)

            second_node.partition()
            partitioned = True

            def reachable() -> dict[str, Any] | None:
                return next(
                    (c for c in status().get("conditions", []) if c["type"] == "PodsReachable"),
                    None,
                )

            cond = wait_for(
                "PodsReachable False",
                lambda: (c := reachable()) and c["status"] == "False" and c,
                150,
            )
            assert cond["reason"] == "NodeNotReady"
            assert f"{name} on node {second} (6 messages queued there)" in cond["message"], cond
            st = status()
            assert st["strandedPods"] == [{"pod": name, "node": second, "queued": 6}]
            assert st["strandedMessages"] == 6
            events = rc.get("events", "-n", ns, "--field-selector", "reason=PodsStranded")
            assert any(name in e["message"] for e in events["items"]), events

            def egress_placed() -> dict[str, Any]:
                return next(c for c in status()["conditions"] if c["type"] == "EgressPlaced")

            placed = wait_for(
                "the node's addresses out of use",
                lambda: (c := egress_placed())["reason"] == "NodeNotReady" and c,
                60,
            )
            assert all(a in placed["message"] for a in ON_NODE_2), placed

            # The other node carries on, from its own addresses only.
            gate.open = True
            before = len(mx.messages())
            more = submit(stays["status"]["podIP"], 8, "stays")
            wait_for("the staying pod's mail delivered", lambda: message_ids(mx) >= set(more), 90)
            new_peers = {m.peer_ip for m in mx.messages()[before:]}
            assert new_peers <= set(ON_NODE), new_peers
            assert not set(held) & message_ids(mx)  # still on the node that is away

            took = second_node.heal()
            partitioned = False
            wait_for("the stranded mail delivered once the node is back",
                     lambda: message_ids(mx) >= set(held), 180)  # fmt: skip
            wait_for("PodsReachable True", lambda: (c := reachable()) and c["status"] == "True", 90)
            assert status().get("strandedMessages") == 0
            print(f"node back Ready in {took:.1f}s")
    finally:
        if partitioned:
            second_node.heal()


def test_host_network_mode_binds_the_nodes_addresses_without_a_proxy(
    real_cluster: RealCluster,
    recording_mx: Callable[..., RecordingMX],
    node_addresses: list[str],
    tmp_path: Path,
) -> None:
    rc = real_cluster
    node = node_name(rc)
    # hostNetwork: a namespace that allows it (no Pod Security label: privileged).
    ns = f"rn-host-{free_port()}"
    rc.kubectl("create", "namespace", ns)
    port = free_port()  # the node's: no other pool of the node may take it
    try:
        with egress_world(rc, ns, tmp_path, {node: ON_NODE}, None):
            mx = recording_mx(MX_ADDRESS)
            apply_pool(rc, ns, mx, ON_NODE, "hostNetwork", [f"{rc.node_ip}/32"], port=port)
            pods = wait_for("the pool's pod Ready", lambda: ready_pods(rc, ns, 1) or None, 240)
            pod = pods[0]
            # One node holds the addresses: one pod, in the node's network.
            assert pod["spec"]["hostNetwork"] is True and pod["status"]["podIP"] == rc.node_ip
            assert rc.get("statefulset", POOL, "-n", ns)["spec"]["replicas"] == 1

            def owned() -> bool:
                ips = (rc.get("sendingpool", POOL, "-n", ns).get("status") or {}).get("ips", [])
                return all(i.get("pod") == pod["metadata"]["name"] for i in ips) and len(ips) == 2

            wait_for("both addresses owned by the pod on their node", owned, 60)
            ids = submit_to(rc.node_ip, port, 10, "host")
            wait_for("10 messages delivered", lambda: message_ids(mx) >= set(ids), 120)
            peers = {m.peer_ip for m in mx.messages()}
            assert peers and peers <= set(ON_NODE), peers
            assert not rc.get("deployments", "-n", ns)["items"]  # no proxy in this mode
    finally:
        rc.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def submit_to(host: str, port: int, n: int, tag: str) -> list[str]:
    """n messages to host:port; their Message-IDs."""
    ids = []
    with smtplib.SMTP(host, port, local_hostname="app.test", timeout=30) as s:
        for i in range(n):
            mid = f"<{tag}.{i}.{time.time_ns()}@example.test>"
            s.sendmail(
                "app@example.test",
                [f"user{i}@example.org"],
                f"From: <app@example.test>\r\nTo: <user{i}@example.org>\r\nSubject: {tag}\r\n"
                f"Message-ID: {mid}\r\n\r\nfrom the node's network\r\n",
            )
            ids.append(mid)
    return ids
