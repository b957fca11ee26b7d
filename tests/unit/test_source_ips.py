"""Which source addresses an engine sends from: state and ownership from the rendered config."""

import pytest

from mailfleet.mta.config import parse_config
from mailfleet.mta.shaping import Grant, Shaper, Wait

T = 1_800_000_000.0


class SourceIPs:
    """The shaper's choice of source address for one provider, one call at a time."""

    def __init__(self, shaper: Shaper) -> None:
        self.shaper = shaper
        self.n = 0

    def pick(self) -> tuple[str | None, str]:
        self.n += 1
        g = self.shaper.acquire("default", T + self.n, (self.n * 0.5) % 1)
        if isinstance(g, Wait):
            raise LookupError(g.reason)
        assert isinstance(g, Grant)
        self.shaper.release(g)
        return (g.ip or None), g.helo


def _ips(*ips: dict[str, str]) -> SourceIPs:
    cfg = parse_config({"delivery": {"sourceIPs": list(ips)}})
    return SourceIPs(Shaper(cfg, pod_name="pool-0"))


def test_spread_over_active_and_warming_only() -> None:
    s = _ips(
        {"address": "127.0.0.2", "hostname": "a.test"},
        {"address": "127.0.0.3", "state": "warming"},
        {"address": "127.0.0.4", "state": "standby"},
        {"address": "127.0.0.5", "state": "quarantined"},
    )
    picks = [s.pick()[0] for _ in range(4)]
    assert sorted(picks) == ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"]


def test_only_own_addresses_when_owned() -> None:
    s = _ips(
        {"address": "127.0.0.2", "owner": "pool-0"},
        {"address": "127.0.0.3", "owner": "pool-1"},
        {"address": "127.0.0.4"},
    )
    assert {s.pick()[0] for _ in range(4)} == {"127.0.0.2", "127.0.0.4"}


def test_none_may_send() -> None:
    s = _ips({"address": "127.0.0.2", "state": "standby"}, {"address": "127.0.0.3", "owner": "x"})
    with pytest.raises(LookupError, match="no active source IP"):
        s.pick()


def test_no_addresses_configured_lets_the_kernel_pick() -> None:
    s = SourceIPs(Shaper(parse_config({"hostname": "h.test"}), pod_name=None))
    assert s.pick() == (None, "h.test")
