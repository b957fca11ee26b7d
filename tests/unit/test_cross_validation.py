"""The admission webhook's cross-object checks (mailfleet.operator.decide.admission) and the
certificate the operator manages for it (mailfleet.operator.decide.webhookcerts)."""

from __future__ import annotations

import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mailfleet.operator.decide import admission, webhookcerts

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def pool(name: str, *addresses: str, ns: str = "mail", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "ips": [
                {"address": a, "hostname": f"mta{i}.example.com"} for i, a in enumerate(addresses)
            ],
            **spec,
        },
    }


def policy(name: str, ns: str = "mail", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": {}}


POLICIES = [policy("big", tier="transactional")]
TIER = {"policySelector": {"matchLabels": {"tier": "transactional"}}}


def test_an_address_claimed_by_another_pool_is_refused_naming_the_field_and_the_owner() -> None:
    a = pool("a", "192.0.2.10", "2001:db8::10", **TIER)
    b = pool("b", "192.0.2.11", "2001:db8:0:0::10", ns="other", **TIER)
    v = admission.check_pool(b, [a, b], POLICIES, [])
    assert v.errors == [
        "spec.ips[1].address: 2001:db8:0:0::10 is already claimed by SendingPool mail/a;"
        " an address belongs to one pool"
    ]
    # The pool itself (an update) and distinct addresses pass.
    assert admission.check_pool(a, [a], POLICIES, []).errors == []
    assert admission.check_pool(pool("c", "192.0.2.12", **TIER), [a, b], POLICIES, []).errors == []


def test_policy_selector_and_missing_secrets_are_warnings() -> None:
    p = pool(
        "a",
        "192.0.2.10",
        policySelector={"matchLabels": {"tier": "bulk"}},
        dkim=[{"domain": "example.com", "selector": "s1", "secretRef": "dkim-example"}],
        submission={"tlsSecretRef": "mta-tls"},
    )
    v = admission.check_pool(p, [p], POLICIES, ["mta-tls"])
    assert v.errors == []
    assert v.warnings == [
        "spec.policySelector matches none of the 1 DeliveryPolicies in namespace mail: the"
        " engine's default shaping applies",
        "spec.dkim[0].secretRef: Secret dkim-example does not exist in namespace mail; the pool"
        " is not Ready until it does",
    ]
    ok = pool("a", "192.0.2.10", **TIER)
    assert admission.check_pool(ok, [ok], POLICIES, []).warnings == []
    # No selector selects every policy; with no policy at all there is nothing to select.
    assert admission.check_pool(pool("a", "192.0.2.10"), [], POLICIES, []).warnings == []
    assert "has no DeliveryPolicy" in admission.check_pool(ok, [], [], []).warnings[0]


def test_a_policy_no_pool_selects_is_a_warning() -> None:
    pools = [pool("a", "192.0.2.10", **TIER)]
    assert admission.check_policy(policy("big", tier="transactional"), pools).warnings == []
    assert admission.check_policy(policy("bulk", tier="bulk"), pools).warnings == [
        "metadata.labels: no SendingPool in namespace mail selects this policy"
        " (spec.policySelector): it applies to no mail"
    ]


def warmup(*addresses: str, pool_ref: str = "a") -> dict[str, Any]:
    return {
        "metadata": {"name": "w", "namespace": "mail"},
        "spec": {"poolRef": pool_ref, "addresses": list(addresses)},
    }


def test_a_warmup_address_outside_its_pool_is_refused() -> None:
    p = pool("a", "192.0.2.10", "2001:db8::10")
    assert admission.check_warmup(warmup("2001:db8:0::10"), p) == admission.Verdict()
    v = admission.check_warmup(warmup("192.0.2.10", "198.51.100.7"), p)
    assert v.errors == [
        "spec.addresses[1]: 198.51.100.7 is not an address of SendingPool a (its spec.ips)"
    ]
    # The pool may come later (GitOps applies in any order).
    v = admission.check_warmup(warmup("192.0.2.10", pool_ref="later"), None)
    assert v.errors == [] and v.warnings[0].startswith("spec.poolRef: SendingPool later does not")


def test_a_domain_listing_a_missing_pool_is_a_warning() -> None:
    domain = {"metadata": {"name": "d", "namespace": "mail"}, "spec": {"pools": ["a", "gone"]}}
    assert admission.check_domain(domain, ["a"]).warnings == [
        "spec.pools[1]: SendingPool gone does not exist in namespace mail"
    ]


def test_an_update_keeps_errors_the_object_had_already_as_warnings() -> None:
    old = admission.Verdict(errors=["x"])
    v = admission.on_update(admission.Verdict(errors=["x", "y"], warnings=["w"]), old)
    assert v == admission.Verdict(errors=["y"], warnings=["x", "w"])
    assert admission.on_update(admission.Verdict(errors=["x"]), None).errors == ["x"]


# --- certificate --------------------------------------------------------------------------


def test_the_issued_certificate_is_trusted_through_its_ca_for_every_name(tmp_path: Path) -> None:
    names = [*webhookcerts.service_names("mf-webhook", "mail-system"), "127.0.0.1"]
    b = webhookcerts.issue(names, NOW)
    assert webhookcerts.renewal_reason(b, names, NOW) is None
    (tmp_path / "ca.crt").write_text(b.ca)
    (tmp_path / "tls.crt").write_text(b.cert)
    # openssl verifies the chain and each name, as the API server's TLS client does.
    for name in ("mf-webhook.mail-system.svc", "127.0.0.1"):
        flag = "-verify_ip" if name[0].isdigit() else "-verify_hostname"
        proc = subprocess.run(
            ["openssl", "verify", "-CAfile", "ca.crt", "-purpose", "sslserver", flag, name,
             "-attime", str(int((NOW + timedelta(days=1)).timestamp())), "tls.crt"],
            cwd=tmp_path, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.crt", "-verify_hostname", "evil.example", "tls.crt"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    (tmp_path / "tls.key").write_text(b.key)
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")


@pytest.mark.parametrize(
    ("when", "names", "reason"),
    [
        (timedelta(days=300), ["a.svc"], None),
        (timedelta(days=340), ["a.svc"], "it expires on"),
        (timedelta(0), ["a.svc", "b.svc"], "it does not name b.svc"),
    ],
)
def test_renewal_before_expiry_or_when_a_name_is_missing(
    when: timedelta, names: list[str], reason: str | None
) -> None:
    b = webhookcerts.issue(["a.svc"], NOW)
    got = webhookcerts.renewal_reason(b, names, NOW + when)
    assert (got is None) if reason is None else (got is not None and got.startswith(reason))


def test_a_missing_or_foreign_certificate_is_replaced() -> None:
    assert webhookcerts.renewal_reason(None, ["a.svc"], NOW) == "no certificate yet"
    one, two = webhookcerts.issue(["a.svc"], NOW), webhookcerts.issue(["a.svc"], NOW)
    mixed = webhookcerts.CertBundle(ca=two.ca, cert=one.cert, key=one.key)
    assert webhookcerts.renewal_reason(mixed, ["a.svc"], NOW) is not None
    with pytest.raises(ValueError, match="at least one name"):
        webhookcerts.issue([], NOW)


def test_the_ca_bundle_keeps_previous_cas_until_they_expire() -> None:
    old = webhookcerts.issue(["a.svc"], NOW - timedelta(days=340))
    new = webhookcerts.issue(["a.svc"], NOW)
    expired = webhookcerts.issue(["a.svc"], NOW - timedelta(days=400))
    bundle = webhookcerts.trusted_cas(new.ca, old.ca + expired.ca + new.ca, NOW)
    assert bundle.startswith(new.ca.strip())
    assert old.ca.strip() in bundle and expired.ca.strip() not in bundle
    assert bundle.count("BEGIN CERTIFICATE") == 2
    assert webhookcerts.trusted_cas(new.ca, "", NOW).strip() == new.ca.strip()
