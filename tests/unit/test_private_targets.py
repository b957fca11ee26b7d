"""Which addresses a recipient's DNS (or an address literal) may make the engine connect to, and
the setting that lets a test world use loopback MX hosts (routing.allowPrivateMX).

Pure: the address classification over the special-purpose ranges, the Router's answer for
address literals (no DNS involved), the config and CRD field and the operator's rendering.
"""

from __future__ import annotations

import pytest
from fixtures.objects import inputs, pool

from mailfleet.mta.config import EngineConfig, RoutingConfig
from mailfleet.mta.routing import Destination, RouteError, Router, non_public_reason
from mailfleet.operator.api.crd_models import Routing
from mailfleet.operator.decide import render

# Refused, with the reason the bounce names. These reasons do not depend on the Python version.
REFUSED = [
    # IPv4
    ("0.0.0.0", "unspecified"),
    ("10.0.0.1", "private"),
    ("10.255.255.254", "private"),
    ("127.0.0.1", "loopback"),
    ("127.1.2.3", "loopback"),
    ("169.254.169.254", "link-local"),  # cloud metadata services
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fc00::1", "private"),
    ("fd12:3456:789a::1", "private"),  # unique local: cluster pod and service networks
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("fec0::1", "site-local"),
    # IPv6 addresses whose packets go to an IPv4 address are judged by it.
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("64:ff9b::10.1.2.3", "private"),
    ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
    ("not-an-address", "not an IP address"),
]

# Refused for a reason whose name differs between Python versions' range tables.
REFUSED_ANY_REASON = [
    "0.1.2.3",  # "this network"
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "100.127.255.254",
    "192.0.0.8",  # IETF protocol assignments
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "198.51.100.1",
    "203.0.113.1",
    "240.0.0.1",  # future use
    "255.255.255.255",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "::ffff:0.0.0.0",
    "100::1",  # discard-only
    "2001:db8::1",  # documentation
    "2001:2::1",  # benchmarking
    "64:ff9b:1::a00:1",  # local-use NAT64
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "172.15.255.254",  # just outside 172.16.0.0/12
    "172.32.0.1",
    "100.63.255.254",  # just outside 100.64.0.0/10
    "100.128.0.1",
    "169.253.255.254",
    "192.169.0.1",
    "223.255.255.254",
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "2a00:1450:4001::1b",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",  # a DNS64 answer for a public IPv4-only host
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_non_public_addresses_are_named(address: str, reason: str) -> None:
    assert non_public_reason(address) == reason


@pytest.mark.parametrize("address", REFUSED_ANY_REASON)
def test_special_purpose_addresses_are_refused(address: str) -> None:
    assert non_public_reason(address) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_unicast_addresses_are_used(address: str) -> None:
    assert non_public_reason(address) is None


def test_the_setting_is_off_by_default_and_spelled_as_documented() -> None:
    assert RoutingConfig().allow_private_mx is False
    assert EngineConfig().routing.allow_private_mx is False
    assert RoutingConfig.model_validate({"allowPrivateMX": True}).allow_private_mx is True
    with pytest.raises(ValueError, match="allowPrivateMx"):
        RoutingConfig.model_validate({"allowPrivateMx": True})  # not a silent no-op


@pytest.mark.parametrize(
    ("literal", "why"),
    [
        ("[10.0.0.1]", "is private"),
        ("[127.0.0.1]", "is loopback"),
        ("[169.254.169.254]", "is link-local"),
        ("[IPv6:::1]", "is loopback"),
        ("[IPv6:::ffff:10.0.0.1]", "is private"),
        ("[IPv6:fd00::1]", "is private"),
    ],
)
async def test_private_address_literals_bounce_with_the_reason(literal: str, why: str) -> None:
    with pytest.raises(RouteError) as e:
        await Router(RoutingConfig()).resolve(literal)
    assert (e.value.temporary, e.value.code, e.value.enhanced) == (False, 550, "5.4.4")
    assert e.value.reply.startswith(f"550 5.4.4 address literal {literal.lower()} {why};")
    assert "routing.allowPrivateMX" in e.value.reply


async def test_private_address_literals_are_used_when_allowed() -> None:
    router = Router(RoutingConfig(allow_private_mx=True), mx_port=2525)
    assert await router.resolve("[10.0.0.1]") == [Destination("10.0.0.1", "10.0.0.1", 2525, 0)]


async def test_public_address_literals_and_private_static_routes_are_used() -> None:
    router = Router(RoutingConfig(routes={"smart.test": "10.0.0.7:587"}), mx_port=2525)
    assert await router.resolve("[192.88.99.7]") == [
        Destination("192.88.99.7", "192.88.99.7", 2525, 0)
    ]
    # The operator's own smarthost on a private address stays as configured.
    assert await router.resolve("smart.test") == [Destination("10.0.0.7", "10.0.0.7", 587, 0)]


async def test_a_reload_turns_the_setting_on_and_off() -> None:
    router = Router(RoutingConfig())
    with pytest.raises(RouteError):
        await router.resolve("[127.0.0.1]")
    router.update_config(RoutingConfig(allow_private_mx=True))
    assert (await router.resolve("[127.0.0.1]"))[0].address == "127.0.0.1"
    router.update_config(RoutingConfig())
    with pytest.raises(RouteError):
        await router.resolve("[127.0.0.1]")


def test_sending_pool_field_defaults_off_and_reaches_the_engine_config() -> None:
    assert Routing().allow_private_mx is False
    assert Routing.model_validate({"allowPrivateMX": True}).allow_private_mx is True
    default = render.render_pool(inputs(pool())).config
    assert default is not None and default.routing.allow_private_mx is False
    p = pool(routing={"mxPort": 10025, "allowPrivateMX": True})
    out = render.render_pool(inputs(p))
    assert out.config is not None and out.config.routing.allow_private_mx is True
    assert "allowPrivateMX: true" in out.config_text
