"""SendingDomain decisions (pure): the DKIM key life cycle, the records to publish, and every
DNS check's verdict on answers given as data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mailfleet.mta.config import EngineConfig
from mailfleet.mta.dkimkeys import dns_txt_record, parse_private_key
from mailfleet.operator.api.crd_models import SendingDomain, SendingDomainSpec
from mailfleet.operator.decide import dkimrecords
from mailfleet.operator.decide import domainplan as p

T0 = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)
IPS = [
    p.PoolIP("out", "192.0.2.10", "mta1.example.com"),
    p.PoolIP("out", "192.0.2.11", "mta2.example.com"),
]


def spec(**over: Any) -> SendingDomainSpec:
    doc: dict[str, Any] = {
        "domain": "example.com",
        "pools": ["out"],
        "dkim": {"algorithms": ["rsa-sha256"], "rotateEvery": "30d", "gracePeriod": "2d"},
        "dmarc": {"expectedPolicy": "reject", "reportAddress": "dmarc@example.com"},
    }
    doc.update(over)
    return SendingDomainSpec.model_validate(doc)


# --- keys --------------------------------------------------------------------------------------


def test_keys_agree_with_the_engine() -> None:
    for algorithm in ("rsa-sha256", "ed25519-sha256"):
        pem = dkimrecords.generate_pem(algorithm)  # type: ignore[arg-type]
        assert dkimrecords.txt_value(pem) == dns_txt_record(parse_private_key(pem, algorithm))  # type: ignore[arg-type]


def test_same_key_ignores_spaces_and_order_but_not_the_key() -> None:
    want = "v=DKIM1; k=rsa; p=ABCD"
    assert dkimrecords.same_key("k=rsa;v=DKIM1; p=AB CD", want)
    assert dkimrecords.same_key("v=DKIM1; p=ABCD", want)  # k defaults to rsa
    assert not dkimrecords.same_key("v=DKIM1; k=ed25519; p=ABCD", want)
    assert not dkimrecords.same_key("v=DKIM1; k=rsa; p=", want)  # revoked
    assert not dkimrecords.same_key("v=DKIM1; k=rsa; p=ABCE", want)


def test_a_new_domain_gets_one_pending_key_per_algorithm() -> None:
    s = spec(dkim={"algorithms": ["rsa-sha256", "ed25519-sha256"]})
    plan = p.plan_keys(s, [], frozenset(), {}, T0)
    assert [(x.selector, x.state) for x in plan.selectors] == [
        ("mf20261130090000r", "pending"),
        ("mf20261130090000e", "pending"),
    ]
    assert plan.generate == plan.selectors
    assert [e.reason for e in plan.events] == ["DKIMKeyGenerated"] * 2
    assert "mf20261130090000r._domainkey.example.com TXT" in plan.events[0].message
    assert plan.next_step is None


def sel(name: str, state: p.SelectorState, since: datetime = T0) -> p.Selector:
    return p.Selector(name, "rsa-sha256", state, since)


def test_pending_waits_until_published_then_signs() -> None:
    s, cur = spec(), [sel("a", "pending")]
    wait = p.plan_keys(s, cur, frozenset({"a"}), {"a": False}, T0 + DAY)
    assert wait.selectors == cur and not wait.generate and not wait.events
    go = p.plan_keys(s, cur, frozenset({"a"}), {"a": True}, T0 + DAY)
    assert go.selectors == [sel("a", "active", T0 + DAY)]
    assert [e.reason for e in go.events] == ["DKIMKeyActivated"]
    assert go.next_step == T0 + DAY + timedelta(days=30)


def test_rotation_starts_after_rotate_every_and_the_old_key_signs_meanwhile() -> None:
    s, cur = spec(), [sel("a", "active")]
    early = p.plan_keys(s, cur, frozenset({"a"}), {"a": True}, T0 + 29 * DAY)
    assert early.selectors == cur and not early.events
    due = T0 + 30 * DAY
    plan = p.plan_keys(s, cur, frozenset({"a"}), {"a": True}, due)
    assert [(x.selector, x.state) for x in plan.selectors] == [
        ("a", "active"),
        ("mf20261230090000r", "pending"),
    ]
    assert "rotation" in plan.events[0].message
    # Not published yet: nothing changes, however long it takes.
    cur = plan.selectors
    later = p.plan_keys(s, cur, frozenset({"a", cur[1].selector}), {"a": True}, due + 9 * DAY)
    assert later.selectors == cur and not later.generate


def test_switch_retires_the_old_key_for_the_grace_period_then_removes_it() -> None:
    s = spec()
    cur = [sel("a", "active"), sel("b", "pending", T0 + 30 * DAY)]
    t = T0 + 31 * DAY
    plan = p.plan_keys(s, cur, frozenset({"a", "b"}), {"a": True, "b": True}, t)
    assert [(x.selector, x.state, x.since) for x in plan.selectors] == [
        ("a", "retiring", t),
        ("b", "active", t),
    ]
    assert [e.reason for e in plan.events] == ["DKIMKeyRetiring", "DKIMKeyActivated"]
    assert plan.next_step == t + 2 * DAY
    kept = p.plan_keys(s, plan.selectors, frozenset({"a", "b"}), {}, t + DAY)
    assert kept.selectors == plan.selectors
    gone = p.plan_keys(s, plan.selectors, frozenset({"a", "b"}), {}, t + 2 * DAY)
    assert [x.selector for x in gone.selectors] == ["b"]
    assert (
        gone.events[0].reason == "DKIMKeyRemoved"
        and "a._domainkey.example.com" in gone.events[0].message
    )


def test_a_dropped_algorithm_retires_its_active_key_and_drops_its_pending_one() -> None:
    s = spec(dkim={"algorithms": ["ed25519-sha256"]})
    cur = [sel("a", "active"), sel("b", "pending")]
    plan = p.plan_keys(s, cur, frozenset({"a", "b"}), {}, T0)
    states = {x.selector: x.state for x in plan.selectors}
    assert states["a"] == "retiring" and "b" not in states
    assert [x.algorithm for x in plan.generate] == ["ed25519-sha256"]


def test_a_key_missing_from_the_secret_is_dropped_with_a_warning() -> None:
    plan = p.plan_keys(spec(), [sel("a", "active")], frozenset(), {}, T0)
    assert plan.events[0].type == "Warning" and plan.events[0].reason == "DKIMKeyLost"
    assert [x.state for x in plan.selectors] == ["pending"]  # a new key replaces it


# --- records -----------------------------------------------------------------------------------


def test_records_and_zone() -> None:
    recs = p.records(spec(), [sel("a", "active")], {"a": "v=DKIM1; k=rsa; p=" + "A" * 400}, IPS)
    assert [(r["name"], r["type"]) for r in recs] == [
        ("a._domainkey.example.com", "TXT"),
        ("example.com", "TXT"),
        ("_dmarc.example.com", "TXT"),
        ("10.2.0.192.in-addr.arpa", "PTR"),
        ("mta1.example.com", "A"),
        ("11.2.0.192.in-addr.arpa", "PTR"),
        ("mta2.example.com", "A"),
    ]
    assert recs[1]["value"] == "v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 -all"
    assert recs[2]["value"] == "v=DMARC1; p=reject; rua=mailto:dmarc@example.com"
    z = p.zone(recs)
    assert 'a._domainkey.example.com. IN TXT ( "v=DKIM1; k=rsa; p=AAA' in z
    assert "10.2.0.192.in-addr.arpa. IN PTR mta1.example.com." in z
    assert (
        p.spf_record([p.PoolIP("o", "2001:db8::1", "h.example.com")])
        == "v=spf1 ip6:2001:db8::1 -all"
    )


# --- checks ------------------------------------------------------------------------------------

TXT = "v=DKIM1; k=rsa; p=KEY"


def good() -> dict[p.Query, p.Answer]:
    return {
        ("_mta-sts.example.com", "TXT"): p.Answer(error="NXDOMAIN"),
        ("_smtp._tls.example.com", "TXT"): p.Answer(error="NXDOMAIN"),
        ("a._domainkey.example.com", "TXT"): p.Answer((TXT,)),
        ("example.com", "TXT"): p.Answer(
            ("v=spf1 ip4:192.0.2.0/24 -all", "google-site-verification=x")
        ),
        ("_dmarc.example.com", "TXT"): p.Answer(
            ("v=DMARC1; p=reject; rua=mailto:dmarc@example.com",)
        ),
        ("10.2.0.192.in-addr.arpa", "PTR"): p.Answer(("mta1.example.com",)),
        ("mta1.example.com", "A"): p.Answer(("192.0.2.10",)),
        ("11.2.0.192.in-addr.arpa", "PTR"): p.Answer(("mta2.example.com",)),
        ("mta2.example.com", "A"): p.Answer(("192.0.2.11",)),
    }


def run(
    facts: dict[p.Query, p.Answer], selectors: list[p.Selector] | None = None, **kw: Any
) -> dict[str, tuple[str, str, str]]:
    sels = selectors if selectors is not None else [sel("a", "active")]
    out = p.check(spec(**kw), sels, {"a": TXT, "b": "v=DKIM1; k=rsa; p=NEW"}, IPS, [], facts)
    assert not out.needed, out.needed
    return {c.type: (c.status, c.reason, c.message) for c in out.conditions}


def test_all_good_is_ready() -> None:
    c = run(good())
    assert {t: v[:2] for t, v in c.items()} == {
        "DKIMPublished": ("True", "Published"),
        "SPFValid": ("True", "Valid"),
        "DMARCAligned": ("True", "Aligned"),
        "ReverseDNS": ("True", "ForwardConfirmed"),
        "Ready": ("True", "Ready"),
    }


def test_mta_sts_and_tls_rpt_are_noted() -> None:
    facts = good()
    facts[("_mta-sts.example.com", "TXT")] = p.Answer(("v=STSv1; id=20261130",))
    facts[("_smtp._tls.example.com", "TXT")] = p.Answer(error="NXDOMAIN")
    out = p.check(spec(), [sel("a", "active")], {"a": TXT}, IPS, [], facts)
    assert out.notes == {
        "mtaSts": "v=STSv1; id=20261130",
        "tlsRpt": "none (_smtp._tls.example.com has no TLSRPTV1 record)",
    }


def test_checks_say_what_they_need_first() -> None:
    out = p.check(spec(), [sel("a", "active")], {"a": TXT}, IPS, [], {})
    assert ("a._domainkey.example.com", "TXT") in out.needed
    assert ("example.com", "TXT") in out.needed and ("10.2.0.192.in-addr.arpa", "PTR") in out.needed


@pytest.mark.parametrize(
    ("change", "ctype", "reason", "words"),
    [
        (
            {("a._domainkey.example.com", "TXT"): p.Answer(error="NXDOMAIN")},
            "DKIMPublished",
            "KeyNotPublished",
            "a._domainkey.example.com",
        ),
        (
            {("a._domainkey.example.com", "TXT"): p.Answer(("v=DKIM1; p=OTHER",))},
            "DKIMPublished",
            "KeyMismatch",
            "another key",
        ),
        (
            {("a._domainkey.example.com", "TXT"): p.Answer(error="timed out")},
            "DKIMPublished",
            "DNSError",
            "timed out",
        ),
        (
            {("example.com", "TXT"): p.Answer(("hello",))},
            "SPFValid",
            "NoSPFRecord",
            "no SPF record",
        ),
        (
            {("example.com", "TXT"): p.Answer(("v=spf1 -all", "v=spf1 +all"))},
            "SPFValid",
            "MultipleSPFRecords",
            "2 SPF",
        ),
        (
            {("example.com", "TXT"): p.Answer(("v=spf1 ip4:192.0.2.10 -all",))},
            "SPFValid",
            "IPNotAuthorized",
            "192.0.2.11 (pool out)",
        ),
        (
            {("example.com", "TXT"): p.Answer(("v=spf1 ip4:192.0.2.0/24 foo:bar -all",))},
            "SPFValid",
            "SPFSyntaxError",
            "foo:bar",
        ),
        (
            {("example.com", "TXT"): p.Answer(("v=spf1 ip4:300.1.1.1 -all",))},
            "SPFValid",
            "SPFSyntaxError",
            "bad address",
        ),
        (
            {("example.com", "TXT"): p.Answer(("v=spf1 -ip4:192.0.2.0/24 ~all",))},
            "SPFValid",
            "IPNotAuthorized",
            "192.0.2.10",
        ),
        (
            {("_dmarc.example.com", "TXT"): p.Answer(error="NXDOMAIN")},
            "DMARCAligned",
            "NoDMARCRecord",
            "_dmarc.example.com",
        ),
        (
            {
                ("_dmarc.example.com", "TXT"): p.Answer(
                    ("v=DMARC1; p=none; rua=mailto:dmarc@example.com",)
                )
            },
            "DMARCAligned",
            "PolicyMismatch",
            "p=none; expected p=reject",
        ),
        (
            {("_dmarc.example.com", "TXT"): p.Answer(("v=DMARC1; p=reject",))},
            "DMARCAligned",
            "ReportAddressMissing",
            "mailto:dmarc@example.com",
        ),
        (
            {("10.2.0.192.in-addr.arpa", "PTR"): p.Answer(error="NXDOMAIN")},
            "ReverseDNS",
            "NoPTR",
            "192.0.2.10 (pool out) has no PTR",
        ),
        (
            {("10.2.0.192.in-addr.arpa", "PTR"): p.Answer(("x.isp.example",))},
            "ReverseDNS",
            "PTRMismatch",
            "not its HELO name mta1.example.com",
        ),
        (
            {("mta1.example.com", "A"): p.Answer(("192.0.2.99",))},
            "ReverseDNS",
            "ForwardMismatch",
            "mta1.example.com A is 192.0.2.99",
        ),
    ],
)
def test_each_failure_is_named(
    change: dict[p.Query, p.Answer], ctype: str, reason: str, words: str
) -> None:
    facts = good()
    facts.update(change)
    c = run(facts)
    assert c[ctype][1] == reason and words in c[ctype][2], c[ctype]
    assert c["Ready"][0] == "False"


def test_spf_follows_includes_redirects_a_and_mx_and_counts_lookups() -> None:
    facts = good()
    facts[("example.com", "TXT")] = p.Answer(
        ("v=spf1 include:_spf.example.net a:mta2.example.com -all",)
    )
    facts[("_spf.example.net", "TXT")] = p.Answer(("v=spf1 mx redirect=_r.example.net",))
    facts[("_spf.example.net", "MX")] = p.Answer(("mx.example.net",))
    facts[("mx.example.net", "A")] = p.Answer(("192.0.2.10",))
    facts[("mx.example.net", "AAAA")] = p.Answer(error="NODATA")
    facts[("_r.example.net", "TXT")] = p.Answer(("v=spf1 -all",))
    facts[("mta2.example.com", "AAAA")] = p.Answer(error="NODATA")
    out = p.check(spec(), [sel("a", "active")], {"a": TXT}, IPS, [], facts)
    assert not out.needed
    c = {x.type: x for x in out.conditions}
    assert c["SPFValid"].status == "True" and "4 DNS lookups" in c["SPFValid"].message


def test_spf_needs_the_include_before_it_decides() -> None:
    facts = good()
    facts[("example.com", "TXT")] = p.Answer(("v=spf1 include:_spf.example.net -all",))
    out = p.check(spec(), [sel("a", "active")], {"a": TXT}, IPS, [], facts)
    assert out.needed == {("_spf.example.net", "TXT")}


def test_spf_over_ten_lookups() -> None:
    facts = good()
    facts[("example.com", "TXT")] = p.Answer(
        (
            "v=spf1 ip4:192.0.2.0/24 "
            + " ".join(f"include:i{n}.example.net" for n in range(11))
            + " -all",
        )
    )
    for n in range(11):
        facts[(f"i{n}.example.net", "TXT")] = p.Answer(("v=spf1 -all",))
    c = run(facts)
    assert c["SPFValid"][1] == "TooManyLookups" and "11 DNS lookups" in c["SPFValid"][2]


def test_a_standby_ip_need_not_be_in_spf_but_needs_reverse_dns() -> None:
    ips = [IPS[0], p.PoolIP("out", "192.0.2.12", "mta3.example.com", standby=True)]
    facts = good()
    facts[("example.com", "TXT")] = p.Answer(("v=spf1 ip4:192.0.2.10 -all",))
    out = p.check(spec(), [sel("a", "active")], {"a": TXT}, ips, [], facts)
    assert ("12.2.0.192.in-addr.arpa", "PTR") in out.needed
    facts[("12.2.0.192.in-addr.arpa", "PTR")] = p.Answer(error="NXDOMAIN")
    out = p.check(spec(), [sel("a", "active")], {"a": TXT}, ips, [], facts)
    c = {x.type: x for x in out.conditions}
    assert c["SPFValid"].status == "True" and c["ReverseDNS"].reason == "NoPTR"


def test_pending_keys_wait_and_rotation_pending_is_still_published() -> None:
    facts = good()
    facts[("b._domainkey.example.com", "TXT")] = p.Answer(error="NXDOMAIN")
    c = run(facts, [sel("b", "pending")])
    assert c["DKIMPublished"][:2] == ("False", "AwaitingPublication")
    assert c["Ready"][:2] == ("False", "AwaitingPublication")
    c = run(facts, [sel("a", "active"), sel("b", "pending")])
    assert (
        c["DKIMPublished"][:2] == ("True", "RotationPending") and "b waits" in c["DKIMPublished"][2]
    )
    assert c["Ready"][0] == "True"
    out = p.check(
        spec(),
        [sel("b", "pending")],
        {"b": "v=DKIM1; k=rsa; p=NEW"},
        IPS,
        [],
        {**good(), ("b._domainkey.example.com", "TXT"): p.Answer(("v=DKIM1; k=rsa; p=NEW",))},
    )
    assert out.published == {"b": True}


def test_missing_pools_and_no_pools() -> None:
    out = p.check(spec(), [sel("a", "active")], {"a": TXT}, IPS, ["gone"], good())
    ready = out.conditions[-1]
    assert (ready.reason, ready.message) == ("PoolNotFound", "SendingPool gone not found")
    out = p.check(spec(pools=[]), [sel("a", "active")], {"a": TXT}, [], [], good())
    assert {c.type: c.reason for c in out.conditions}["ReverseDNS"] == "NoPoolIPs"


# --- pools -------------------------------------------------------------------------------------


def domain(name: str, pools: list[str], selectors: list[dict[str, Any]]) -> SendingDomain:
    return SendingDomain.model_validate(
        {
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"domain": f"{name}.example", "pools": pools},
            "status": {"selectors": selectors},
        }
    )


def test_pools_sign_with_the_active_keys_of_their_domains() -> None:
    since = "2026-11-30T09:00:00Z"
    ds = [
        domain("b", ["out"], [
            {"selector": "old", "algorithm": "rsa-sha256", "state": "retiring", "since": since},
            {"selector": "new", "algorithm": "rsa-sha256", "state": "active", "since": since},
            {"selector": "ed", "algorithm": "ed25519-sha256", "state": "active", "since": since},
            {"selector": "next", "algorithm": "ed25519-sha256", "state": "pending", "since": since},
        ]),
        domain("a", ["other"], [
            {"selector": "x", "algorithm": "rsa-sha256", "state": "active", "since": since},
        ]),
    ]  # fmt: skip
    keys = p.domain_dkim_keys("out", ds)
    assert [(k.domain, k.selector, k.secret_ref, k.secret_key, k.algorithm) for k in keys] == [
        ("b.example", "new", "b-dkim", "new.pem", "rsa-sha256"),
        ("b.example", "ed", "b-dkim", "ed.pem", "ed25519-sha256"),
    ]
    assert p.domain_dkim_keys("nobody", ds) == []


def test_with_domain_keys_adds_what_the_pool_does_not_name_itself() -> None:
    from mailfleet.operator.api.crd_models import DKIMKeyRef, SendingPool

    pool = SendingPool.model_validate(
        {
            "metadata": {"name": "out"},
            "spec": {
                "ips": [{"address": "192.0.2.10", "hostname": "mta1.example.com"}],
                "dkim": [{"domain": "b.example", "selector": "new", "secretRef": "mine"}],
            },
        }
    )
    keys = [
        DKIMKeyRef(domain="b.example", selector="NEW", secret_ref="b-dkim", secret_key="new.pem"),
        DKIMKeyRef(domain="b.example", selector="ed", secret_ref="b-dkim", secret_key="ed.pem"),
    ]
    out = p.with_domain_keys(pool, keys)
    assert [(k.selector, k.secret_ref) for k in out.spec.dkim] == [
        ("new", "mine"),
        ("ed", "b-dkim"),
    ]
    assert p.with_domain_keys(pool, []) is pool


# --- onFailingIP: IPs that stop sending the domain's mail -------------------------------------

LATER = T0 + timedelta(minutes=5)


def checked(change: dict[p.Query, p.Answer] | None = None) -> p.Checked:
    facts = good()
    facts.update(change or {})
    out = p.check(spec(), [sel("a", "active")], {"a": TXT}, IPS, [], facts)
    assert not out.needed
    return out


SPF_ONLY_10 = {("example.com", "TXT"): p.Answer(("v=spf1 ip4:192.0.2.10 -all",))}
NO_PTR_11 = {("11.2.0.192.in-addr.arpa", "PTR"): p.Answer(error="NXDOMAIN")}
WRONG_PTR_11 = {("11.2.0.192.in-addr.arpa", "PTR"): p.Answer(("x.isp.example",))}
FORWARD_11 = {("mta2.example.com", "A"): p.Answer(("192.0.2.99",))}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (SPF_ONLY_10, "IPNotAuthorized"),
        (NO_PTR_11, "NoPTR"),
        (WRONG_PTR_11, "PTRMismatch"),
        (FORWARD_11, "ForwardMismatch"),
    ],
)
def test_a_failing_ip_is_named_with_its_reason(
    change: dict[p.Query, p.Answer], reason: str
) -> None:
    out = checked(change)
    assert list(out.ip_failures) == ["192.0.2.11"]
    assert out.ip_failures["192.0.2.11"][0][0] == reason
    assert not out.ip_unknown


@pytest.mark.parametrize(
    "change",
    [
        {("example.com", "TXT"): p.Answer(("hello",))},  # no SPF record: every IP alike
        {("example.com", "TXT"): p.Answer(("v=spf1 foo:bar -all",))},  # broken record
        {("example.com", "TXT"): p.Answer(error="timed out")},
        {("11.2.0.192.in-addr.arpa", "PTR"): p.Answer(error="timed out")},
    ],
)
def test_domain_wide_spf_failures_and_lookup_errors_single_out_no_ip(
    change: dict[p.Query, p.Answer],
) -> None:
    assert checked(change).ip_failures == {}


def test_lookup_errors_leave_the_ips_unknown() -> None:
    assert checked({("example.com", "TXT"): p.Answer(error="timed out")}).ip_unknown == {
        "192.0.2.10",
        "192.0.2.11",
    }
    assert checked(
        {("11.2.0.192.in-addr.arpa", "PTR"): p.Answer(error="timed out")}
    ).ip_unknown == {"192.0.2.11"}


def test_both_checks_failing_give_both_reasons() -> None:
    out = checked({**SPF_ONLY_10, **NO_PTR_11})
    assert [r for r, _ in out.ip_failures["192.0.2.11"]] == ["IPNotAuthorized", "NoPTR"]


STOP = spec(onFailingIP="StopSending")


def test_warn_stops_nothing() -> None:
    stopped, events = p.plan_stops(spec(), IPS, checked(SPF_ONLY_10), [], T0)
    assert stopped == [] and events == []


def test_stop_sending_stops_the_failing_ip_once_with_an_event_on_domain_and_pool() -> None:
    stopped, events = p.plan_stops(STOP, IPS, checked(SPF_ONLY_10), [], T0)
    assert [(s.address, s.pool, s.reason, s.since) for s in stopped] == [
        ("192.0.2.11", "out", "IPNotAuthorized", T0)
    ]
    assert [(e.type, e.reason, e.pool) for e in events] == [("Warning", "SendingStopped", "out")]
    assert "mail of example.com is no longer sent from 192.0.2.11" in events[0].message
    again, events = p.plan_stops(STOP, IPS, checked(SPF_ONLY_10), stopped, LATER)
    assert again == stopped and events == []  # same since, no new event


def test_fixed_dns_lifts_the_stop() -> None:
    stopped, _ = p.plan_stops(STOP, IPS, checked(NO_PTR_11), [], T0)
    lifted, events = p.plan_stops(STOP, IPS, checked(), stopped, LATER)
    assert lifted == []
    assert [(e.type, e.reason) for e in events] == [("Normal", "SendingResumed")]
    assert "checks pass again" in events[0].message


def test_a_lookup_error_keeps_the_stop_and_starts_none() -> None:
    stopped, _ = p.plan_stops(STOP, IPS, checked(NO_PTR_11), [], T0)
    outage = checked({("11.2.0.192.in-addr.arpa", "PTR"): p.Answer(error="timed out")})
    kept, events = p.plan_stops(STOP, IPS, outage, stopped, LATER)
    assert kept == stopped and events == []
    none, events = p.plan_stops(STOP, IPS, outage, [], LATER)
    assert none == [] and events == []


def test_switching_back_to_warn_resumes() -> None:
    stopped, _ = p.plan_stops(STOP, IPS, checked(NO_PTR_11), [], T0)
    out, events = p.plan_stops(spec(), IPS, checked(NO_PTR_11), stopped, LATER)
    assert out == [] and [e.reason for e in events] == ["SendingResumed"]
    assert "onFailingIP is Warn" in events[0].message


def test_every_ip_of_a_pool_stopped_says_the_mail_waits() -> None:
    spf_none = {("example.com", "TXT"): p.Answer(("v=spf1 ip4:198.51.100.1 -all",))}
    stopped, events = p.plan_stops(STOP, IPS, checked(spf_none), [], T0)
    assert len(stopped) == 2
    assert [e.reason for e in events] == ["SendingStopped", "SendingStopped", "NoSendingIP"]
    assert "waits in the queue" in events[-1].message
    _, events = p.plan_stops(STOP, IPS, checked(spf_none), stopped, LATER)
    assert events == []


def stop_domain(
    name: str, domain_name: str, pools: list[str], stopped: list[dict[str, Any]]
) -> Any:
    return SendingDomain.model_validate(
        {
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"domain": domain_name, "pools": pools},
            "status": {"stoppedIPs": stopped},
        }
    )


def st(address: str, pool: str, message: str) -> dict[str, Any]:
    return {
        "address": address,
        "pool": pool,
        "reason": "NoPTR",
        "message": message,
        "since": "2026-11-30T09:00:00Z",
    }


def test_sender_restrictions_per_pool_merge_domains_of_the_same_name() -> None:
    ds = [
        stop_domain("a", "a.example", ["out", "other"], [st("192.0.2.11", "out", "no PTR")]),
        stop_domain("a2", "a.example", ["out"], [st("192.0.2.10", "out", "no SPF")]),
        stop_domain("b", "b.example", ["other"], [st("192.0.2.50", "other", "x")]),
        stop_domain("c", "c.example", ["out"], []),
    ]
    out = p.sender_restrictions("out", ds)
    assert out == [
        {
            "domain": "a.example",
            "excludedIPs": ["192.0.2.10", "192.0.2.11"],
            "reason": "no PTR; no SPF",
        }
    ]
    assert p.sender_restrictions("other", ds)[0]["excludedIPs"] == ["192.0.2.50"]
    assert p.sender_restrictions("nobody", ds) == []
    # What the engine takes as is.
    EngineConfig.model_validate({"delivery": {"senderRestrictions": out}})


def test_rsa_key_size_is_the_spec_s() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    assert spec().dkim.rsa_key_size == 2048
    bits = spec(dkim={"rsaKeySize": 3072}).dkim.rsa_key_size
    pem = dkimrecords.generate_pem("rsa-sha256", bits)
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072
    txt = dkimrecords.txt_value(pem)
    assert txt.startswith("v=DKIM1; k=rsa; p=") and len(txt) > 255  # split in status.zone
    recs = p.records(spec(), [sel("a", "active")], {"a": txt}, IPS)
    assert '" "' in p.zone(recs[:1])
    with pytest.raises(ValueError, match="rsaKeySize"):
        spec(dkim={"rsaKeySize": 1024})
