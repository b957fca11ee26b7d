"""egressplan.py: where a managed pool's addresses live, what its engines dial, and the proxy
each node runs, computed without a cluster."""

from __future__ import annotations

import hashlib
import itertools

import pytest
import yaml
from fixtures.objects import inputs, pool

from mailfleet.mta.config import EgressProxyConfig, parse_config
from mailfleet.operator.api import naming
from mailfleet.operator.decide import egressplan, render, statuses
from mailfleet.operator.decide.egressplan import NodeAddresses, parse_node_addresses, place
from mailfleet.operator.loops.egress import EgressSettings, render_proxies

IPS = [
    {"address": "203.0.113.10", "hostname": "a.example.com"},
    {"address": "203.0.113.11", "hostname": "b.example.com"},
    {"address": "2001:db8::10", "hostname": "c.example.com"},
]


def managed(**spec: object) -> object:
    return pool(ips=IPS, egress={"mode": "managed"}, **spec)


# --- the node annotation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "good", "bad"),
    [
        (None, set(), ()),
        ("", set(), ()),
        ("203.0.113.10", {"203.0.113.10"}, ()),
        ("203.0.113.10, 203.0.113.11", {"203.0.113.10", "203.0.113.11"}, ()),
        ("203.0.113.10 203.0.113.11\n", {"203.0.113.10", "203.0.113.11"}, ()),
        ("2001:DB8:0::10,203.0.113.10", {"2001:db8::10", "203.0.113.10"}, ()),
        (
            "203.0.113.10,,mx.example.com,300.1.1.1",
            {"203.0.113.10"},
            ("mx.example.com", "300.1.1.1"),
        ),
        ("203.0.113.0/24", set(), ("203.0.113.0/24",)),
    ],
)
def test_the_annotation_lists_addresses_in_canonical_form(
    value: str | None, good: set[str], bad: tuple[str, ...]
) -> None:
    got = parse_node_addresses(value)
    assert got.addresses == frozenset(good)
    assert got.invalid == bad


# --- placement ----------------------------------------------------------------------------------

ADDRS = ["203.0.113.10", "203.0.113.11", "2001:db8::10"]


@pytest.mark.parametrize(
    "layout", list(itertools.product(["a", "b", "both", "none"], repeat=len(ADDRS)))
)
def test_each_address_is_placed_on_its_one_node_or_reported(layout: tuple[str, ...]) -> None:
    held: dict[str, set[str]] = {"node-a": set(), "node-b": set()}
    for address, where in zip(ADDRS, layout, strict=True):
        if where in ("a", "both"):
            held["node-a"].add(address)
        if where in ("b", "both"):
            held["node-b"].add(address)
    nodes = {n: NodeAddresses(frozenset(a)) for n, a in held.items()}
    p = place(ADDRS, nodes)
    for address, where in zip(ADDRS, layout, strict=True):
        if where in ("a", "b"):
            assert p.node_of[address] == f"node-{where}"
        else:
            assert address not in p.node_of
            assert address in p.unplaced
        assert (address in p.missing) == (where == "none")
        assert (address in (p.contested or {})) == (where == "both")
    cond = egressplan.placement_condition(p)
    assert cond.type == "EgressPlaced"
    if all(w in ("a", "b") for w in layout):
        assert (cond.status, cond.reason) == ("True", "Placed")
        for address in ADDRS:
            assert address in cond.message
    else:
        assert cond.status == "False"
        assert cond.reason == ("AddressNotOnNode" if "none" in layout else "AddressOnTwoNodes")
        for address, where in zip(ADDRS, layout, strict=True):
            assert (address in cond.message) == (where in ("none", "both"))


def test_an_address_written_another_way_is_the_same_address() -> None:
    p = place(["2001:db8:0:0::10"], {"n": parse_node_addresses("2001:db8::10")})
    assert p.node_of == {"2001:db8::10": "n"}


def test_proxy_urls_bracket_ipv6() -> None:
    assert egressplan.proxy_url("203.0.113.10", 1080) == "socks5://203.0.113.10:1080"
    assert egressplan.proxy_url("2001:db8::10", 1080) == "socks5://[2001:db8::10]:1080"


# --- the pool's render --------------------------------------------------------------------------


def rendered_config(
    nodes: dict[str, str],
) -> tuple[render.RenderedPool, dict[str, dict[str, object]]]:
    out = render.render_pool(
        inputs(
            managed(),
            egress_nodes={n: parse_node_addresses(v) for n, v in nodes.items()},
            egress_port=1080,
        )
    )
    assert out.config is not None
    return out, {str(ip.address): ip.model_dump() for ip in out.config.delivery.source_ips}


def test_a_managed_pool_dials_each_address_through_its_nodes_proxy() -> None:
    out, ips = rendered_config({"node-a": "203.0.113.10,203.0.113.11", "node-b": "2001:db8::10"})
    assert ips["203.0.113.10"]["proxy"] == "socks5://203.0.113.10:1080"
    assert ips["2001:db8::10"]["proxy"] == "socks5://[2001:db8::10]:1080"
    assert not any(ip["hold"] for ip in ips.values())
    delivery = yaml.safe_load(out.config_text)["delivery"]
    assert delivery["egress"] == {
        "mode": "bind",
        "authFile": f"{naming.EGRESS_AUTH_DIR}/{naming.EGRESS_TOKEN_KEY}",
    }
    # The engine accepts what the operator renders.
    parse_config(yaml.safe_load(out.config_text))
    by_address = {ip["address"]: ip for ip in out.status["ips"]}
    assert by_address["203.0.113.10"]["node"] == "node-a"
    assert by_address["2001:db8::10"]["node"] == "node-b"
    cond = next(c for c in out.status["conditions"] if c["type"] == "EgressPlaced")
    assert (cond["status"], cond["reason"]) == ("True", "Placed")
    sts = next(c for c in out.children if c["kind"] == "StatefulSet")
    volumes = sts["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "egress",
        "secret": {"secretName": "transactional-egress", "defaultMode": 0o440},
    } in volumes


def test_an_address_on_no_node_is_held_and_named() -> None:
    out, ips = rendered_config({"node-a": "203.0.113.10"})
    assert ips["203.0.113.10"]["hold"] is False
    assert ips["203.0.113.11"]["hold"] is True and ips["2001:db8::10"]["hold"] is True
    assert "proxy" not in ips["203.0.113.11"] or ips["203.0.113.11"]["proxy"] is None
    cond = next(c for c in out.status["conditions"] if c["type"] == "EgressPlaced")
    assert (cond["status"], cond["reason"]) == ("False", "AddressNotOnNode")
    assert "203.0.113.11" in cond["message"] and "2001:db8::10" in cond["message"]
    assert "203.0.113.10" not in cond["message"]
    by_address = {ip["address"]: ip for ip in out.status["ips"]}
    assert by_address["203.0.113.11"]["reason"] == "on no node: not sending"
    events = statuses.pool_events(None, out.status)
    assert [e.reason for e in events if e.reason == "AddressNotOnNode"] == ["AddressNotOnNode"]
    # Placed later: one Normal event says so.
    later, _ = rendered_config({"node-a": "203.0.113.10,203.0.113.11,2001:db8::10"})
    assert [e.reason for e in statuses.pool_events(out.status, later.status)] == ["AddressesPlaced"]


def test_a_pool_that_binds_has_no_egress_condition_nor_secret() -> None:
    out = render.render_pool(inputs(pool(ips=IPS)))
    assert not any(c["type"] == "EgressPlaced" for c in out.status["conditions"])
    sts = next(c for c in out.children if c["kind"] == "StatefulSet")
    assert all(v["name"] != "egress" for v in sts["spec"]["template"]["spec"]["volumes"])


# --- the proxies ------------------------------------------------------------------------------


def user(
    name: str, addresses: dict[str, str], ports: tuple[int, ...] = (25,)
) -> egressplan.EgressUser:
    return egressplan.EgressUser(name, hashlib.sha256(name.encode()).hexdigest(), addresses, ports)


def test_each_node_gets_one_proxy_with_only_its_addresses_per_pool() -> None:
    users = [
        user("ns1/a", {"203.0.113.10": "node-a", "203.0.113.11": "node-b"}),
        user("ns2/b", {"203.0.113.20": "node-a"}, (25, 2525)),
    ]
    conf = EgressSettings("mailfleet-system", "mailfleet:test", 1080, 9481)
    out = render_proxies(users, conf)
    assert sorted(out) == ["node-a", "node-b"]
    cm, deploy = out["node-a"]
    config = EgressProxyConfig.model_validate(yaml.safe_load(cm["data"]["proxy.yaml"]))
    assert [(c.name, [str(a) for a in c.addresses], c.ports) for c in config.clients] == [
        ("ns1/a", ["203.0.113.10"], [25]),
        ("ns2/b", ["203.0.113.20"], [25, 2525]),
    ]
    assert config.port == 1080
    spec = deploy["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node-a"]
    assert deploy["metadata"]["namespace"] == "mailfleet-system"
    assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["automountServiceAccountToken"] is False
    node_b = EgressProxyConfig.model_validate(
        yaml.safe_load(out["node-b"][0]["data"]["proxy.yaml"])
    )
    assert [c.name for c in node_b.clients] == ["ns1/a"]


def test_pool_ports_are_the_mail_ports_and_the_pools_own() -> None:
    p = pool(ips=IPS, routing={"routes": {"example.org": "mx.example.org:2525"}, "mxPort": 25})
    assert egressplan.pool_ports(p) == (25, 465, 587, 2525)


@pytest.mark.parametrize(
    "node", ["node-a", "ip-10-0-0-1.eu-west-1.compute.internal", "N" * 200, "a_b"]
)
def test_proxy_names_are_dns_labels(node: str) -> None:
    name = egressplan.proxy_name(node)
    assert len(name) <= 63
    assert name == name.lower() and name.replace("-", "").isalnum()
    assert egressplan.proxy_name(node) == name
    assert egressplan.proxy_name(node + "x") != name


def test_the_token_digest_is_of_the_password_only() -> None:
    assert egressplan.token_digest("ns/pool:s3cret\n") == hashlib.sha256(b"s3cret").hexdigest()


def test_an_address_on_a_node_that_is_not_ready_is_held_and_kept_by_its_proxy() -> None:
    nodes = {
        "node-a": parse_node_addresses("203.0.113.10"),
        "node-b": parse_node_addresses("203.0.113.11,2001:db8::10", ready=False),
    }
    p = place(ADDRS, nodes)
    assert p.node_of == {"203.0.113.10": "node-a"}
    assert p.down == {"203.0.113.11": "node-b", "2001:db8::10": "node-b"}
    assert p.unplaced == {"203.0.113.11", "2001:db8::10"}
    cond = egressplan.placement_condition(p)
    assert (cond.status, cond.reason) == ("False", "NodeNotReady")
    assert "2001:db8::10, 203.0.113.11 on node node-b, which is not Ready" in cond.message
    user = egressplan.egress_user(managed(), p, "0" * 64)
    assert user.addresses == {
        "203.0.113.10": "node-a",
        "203.0.113.11": "node-b",
        "2001:db8::10": "node-b",
    }
    out = render.render_pool(inputs(managed(), egress_nodes=nodes, egress_port=1080))
    assert out.config is not None
    held = {str(ip.address) for ip in out.config.delivery.source_ips if ip.hold}
    assert held == {"203.0.113.11", "2001:db8::10"}
    by_address = {ip["address"]: ip for ip in out.status["ips"]}
    assert by_address["203.0.113.11"]["node"] == "node-b"
    assert "not Ready" in by_address["203.0.113.11"]["reason"]
    events = statuses.pool_events(None, out.status)
    assert "NodeNotReady" in [e.reason for e in events]


# --- egress: hostNetwork ----------------------------------------------------------------------


def host_pool(**spec: object) -> object:
    return pool(ips=IPS, egress={"mode": "hostNetwork"}, **spec)


def test_host_network_pods_run_one_per_node_that_holds_an_address() -> None:
    nodes = {"node-a": parse_node_addresses("203.0.113.10,203.0.113.11"),
             "node-b": parse_node_addresses("2001:db8::10"),
             "node-c": parse_node_addresses("")}  # fmt: skip
    p = host_pool(replicas={"min": 1, "max": 5, "desired": 3})
    out = render.render_pool(inputs(p, egress_nodes=nodes))
    sts = next(c for c in out.children if c["kind"] == "StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    assert sts["spec"]["replicas"] == 2  # two nodes hold addresses: one pod each
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node-a", "node-b"]
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    cond = next(c for c in out.status["conditions"] if c["type"] == "EgressPlaced")
    assert cond["status"] == "True" and "bound by the pool pod on 2 nodes" in cond["message"]
    assert "2 of the 3 pods asked for run" in cond["message"]
    # No pod scheduled yet: nobody may send (a pod elsewhere would bind what it lacks).
    assert out.config is not None
    assert all(ip.hold for ip in out.config.delivery.source_ips)
    assert out.config.delivery.egress.mode == "bind"
    assert all(ip.proxy is None for ip in out.config.delivery.source_ips)


def test_host_network_addresses_are_sent_by_the_pod_on_their_node() -> None:
    nodes = {"node-a": parse_node_addresses("203.0.113.10,203.0.113.11"),
             "node-b": parse_node_addresses("2001:db8::10")}  # fmt: skip
    p = host_pool(replicas={"min": 1, "max": 5, "desired": 2})
    # The scheduler put pod 0 on node-b and pod 1 on node-a.
    pod_nodes = {"transactional-0": "node-b", "transactional-1": "node-a"}
    out = render.render_pool(inputs(p, egress_nodes=nodes, pod_nodes=pod_nodes))
    assert out.config is not None
    owners = {str(ip.address): (ip.owner, ip.hold) for ip in out.config.delivery.source_ips}
    assert owners == {
        "203.0.113.10": ("transactional-1", False),
        "203.0.113.11": ("transactional-1", False),
        "2001:db8::10": ("transactional-0", False),
    }
    by_address = {ip["address"]: ip for ip in out.status["ips"]}
    assert by_address["2001:db8::10"]["pod"] == "transactional-0"
    assert by_address["2001:db8::10"]["node"] == "node-b"


def test_host_network_with_no_address_on_any_node_runs_no_pod() -> None:
    out = render.render_pool(inputs(host_pool(), egress_nodes={}))
    sts = next(c for c in out.children if c["kind"] == "StatefulSet")
    assert sts["spec"]["replicas"] == 0
    term = sts["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    values = term["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert values["matchFields"][0]["values"] == ["mailfleet.io/no-node-holds-an-address"]
    cond = next(c for c in out.status["conditions"] if c["type"] == "EgressPlaced")
    assert (cond["status"], cond["reason"]) == ("False", "AddressNotOnNode")
