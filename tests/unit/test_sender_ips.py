"""Per sender domain source-IP restrictions (delivery.senderRestrictions): which entry governs a
sender, and the shaper's choice of IP with some excluded."""

from __future__ import annotations

import pytest

from mailfleet.mta.config import ConfigError, parse_config
from mailfleet.mta.senderips import SENDER_RESTRICTED, SenderRestrictions, sender_domain
from mailfleet.mta.shaping import Grant, Shaper, Wait

T = 1_800_000_000.0


def restrictions(entries: dict[str, list[str]]) -> SenderRestrictions:
    cfg = parse_config(
        {
            "delivery": {
                "senderRestrictions": [
                    {"domain": d, "excludedIPs": ips} for d, ips in entries.items()
                ]
            }
        }
    )
    return SenderRestrictions(cfg.delivery.sender_restrictions)


@pytest.mark.parametrize(
    ("mail_from", "domain"),
    [
        ("news@Example.COM", "example.com"),
        ("<bounce+x=y@mail.example.com.>", "mail.example.com"),
        ("<>", ""),
        ("", ""),
        ("local-only", ""),
        ('"a@b"@c.test', "c.test"),
    ],
)
def test_sender_domain(mail_from: str, domain: str) -> None:
    assert sender_domain(mail_from) == domain


@pytest.mark.parametrize(
    ("sender", "excluded"),
    [
        ("example.com", {"192.0.2.1"}),
        ("bounces.example.com", {"192.0.2.1"}),  # a subdomain follows its parent
        ("own.example.com", {"192.0.2.2"}),  # unless it has its own entry
        ("deep.own.example.com", {"192.0.2.2"}),
        ("notexample.com", set()),
        ("com", set()),
        ("", set()),  # the null sender (DSNs) is never restricted
    ],
)
def test_the_nearest_entry_governs(sender: str, excluded: set[str]) -> None:
    r = restrictions({"Example.com.": ["192.0.2.1"], "own.example.com": ["192.0.2.2"]})
    assert r.excluded(sender) == excluded


def test_no_restrictions_is_falsy_and_equal_configs_compare_equal() -> None:
    assert not restrictions({})
    assert restrictions({"a.test": ["192.0.2.1"]}) == restrictions({"a.test": ["192.0.2.1"]})
    assert restrictions({"a.test": ["192.0.2.1"]}) != restrictions({"a.test": ["192.0.2.2"]})


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"domain": "a.test", "excludedIPs": []}], "excludedIPs"),
        ([{"domain": "a.test", "excludedIPs": ["not-an-ip"]}], "excludedIPs"),
        (
            [
                {"domain": "a.test", "excludedIPs": ["192.0.2.1"]},
                {"domain": "A.test", "excludedIPs": ["192.0.2.2"]},
            ],
            "repeated: a.test",
        ),
    ],
)
def test_bad_restrictions_are_refused_naming_the_field(
    entries: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(ConfigError, match="senderRestrictions") as e:
        parse_config({"delivery": {"senderRestrictions": entries}})
    assert message in str(e.value)


def shaper(*ips: str) -> Shaper:
    cfg = parse_config({"delivery": {"sourceIPs": [{"address": a} for a in ips]}})
    return Shaper(cfg)


def picks(s: Shaper, exclude: frozenset[str], n: int = 20) -> set[str]:
    out = set()
    for i in range(n):
        g = s.acquire("default", T + i, (i * 0.37) % 1, exclude)
        assert isinstance(g, Grant), g
        s.release(g)
        out.add(g.ip)
    return out


def test_excluded_ips_never_send_and_the_others_take_all() -> None:
    s = shaper("127.0.0.2", "127.0.0.3", "127.0.0.4")
    assert picks(s, frozenset()) == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
    assert picks(s, frozenset({"127.0.0.3"})) == {"127.0.0.2", "127.0.0.4"}
    assert picks(s, frozenset({"192.0.2.9"})) == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}


def test_every_ip_excluded_waits_with_its_own_reason() -> None:
    s = shaper("127.0.0.2", "127.0.0.3")
    w = s.acquire("default", T, 0.5, frozenset({"127.0.0.2", "127.0.0.3"}))
    assert isinstance(w, Wait)
    assert w.reason == SENDER_RESTRICTED and w.seconds > 0
    # The same shaper still sends other senders' mail from both.
    assert picks(s, frozenset()) == {"127.0.0.2", "127.0.0.3"}


def test_an_excluded_ip_among_standbys_is_not_reported_as_restricted() -> None:
    cfg = parse_config(
        {
            "delivery": {
                "sourceIPs": [
                    {"address": "127.0.0.2", "state": "standby"},
                    {"address": "127.0.0.3", "state": "standby"},
                ]
            }
        }
    )
    w = Shaper(cfg).acquire("default", T, 0.5, frozenset({"127.0.0.2"}))
    assert isinstance(w, Wait) and w.reason == "no active source IP"
