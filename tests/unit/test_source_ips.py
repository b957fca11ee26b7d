"""Which source addresses an engine sends from: state and ownership from the rendered config."""

import pytest

from mailfleet.mta.config import parse_config
from mailfleet.mta.queue import NoSourceIP, SourceIPs


def _ips(*ips: dict[str, str]) -> SourceIPs:
    return SourceIPs(parse_config({"delivery": {"sourceIPs": list(ips)}}), pod_name="pool-0")


def test_round_robin_over_active_and_warming_only() -> None:
    s = _ips(
        {"address": "127.0.0.2", "hostname": "a.test"},
        {"address": "127.0.0.3", "state": "warming"},
        {"address": "127.0.0.4", "state": "standby"},
        {"address": "127.0.0.5", "state": "quarantined"},
    )
    picks = [s.pick()[0] for _ in range(4)]
    assert picks == ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]


def test_only_own_addresses_when_owned() -> None:
    s = _ips(
        {"address": "127.0.0.2", "owner": "pool-0"},
        {"address": "127.0.0.3", "owner": "pool-1"},
        {"address": "127.0.0.4"},
    )
    assert {s.pick()[0] for _ in range(4)} == {"127.0.0.2", "127.0.0.4"}


def test_none_may_send() -> None:
    s = _ips({"address": "127.0.0.2", "state": "standby"}, {"address": "127.0.0.3", "owner": "x"})
    with pytest.raises(NoSourceIP):
        s.pick()


def test_no_addresses_configured_lets_the_kernel_pick() -> None:
    s = SourceIPs(parse_config({"hostname": "h.test"}), pod_name=None)
    assert s.pick() == (None, "h.test")
