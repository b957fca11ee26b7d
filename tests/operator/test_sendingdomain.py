"""SendingDomain against the real API server and dnsmasq: the operator generates DKIM keys into
a Secret it owns, tells what to publish, checks SPF, DKIM, DMARC and forward-confirmed reverse
DNS and says in status what is wrong, and rotates keys: a new selector signs only once DNS
serves it, the old one stays published for the grace period, then goes. Signatures made with
the Secret's keys are verified by Perl Mail::DKIM against the records the status told us to
publish, before, during and after a rotation."""

from __future__ import annotations

import base64
import gzip
import io
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.dkimverify import dkim_verify
from fixtures.dnsserver import DnsServer
from fixtures.operator import OperatorProcess, free_port, kget, wait_for

from mailfleet.mta.config import DKIMConfig, DKIMKey, parse_config
from mailfleet.mta.dkim import DKIMSigner
from mailfleet.mta.dkimkeys import dns_txt_record, parse_private_key

pytestmark = pytest.mark.kube

RunOperator = Callable[..., OperatorProcess]
REPO = Path(__file__).resolve().parents[2]
DOMAIN = "example.com"
IPS = [("192.0.2.10", "mta1.example.com"), ("192.0.2.11", "mta2.example.com")]


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[DnsServer]:
    with DnsServer(workdir=tmp_path / "dns", ttl=0) as server:
        yield server


def apply(kube: Any, namespace: str, doc: dict[str, Any]) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))


def pool_doc() -> dict[str, Any]:
    return {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": "outbound"},
        "spec": {
            "replicas": {"min": 0, "max": 1, "desired": 0},
            "ips": [{"address": a, "hostname": h} for a, h in IPS],
        },
    }


def domain_doc(dns: DnsServer, **dkim: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "SendingDomain",
        "metadata": {"name": "example-com"},
        "spec": {
            "domain": DOMAIN,
            "pools": ["outbound"],
            "dkim": dkim or {"algorithms": ["rsa-sha256", "ed25519-sha256"]},
            "dmarc": {"expectedPolicy": "quarantine", "reportAddress": "dmarc@example.com"},
            "dns": {"nameservers": [dns.host], "port": dns.port},
            "checkInterval": "1s",
        },
    }


def status(kube: Any, ns: str) -> dict[str, Any]:
    obj = kget(kube, ns, "sendingdomain", "example-com") or {}
    out: dict[str, Any] = obj.get("status") or {}
    return out


def conds(kube: Any, ns: str) -> dict[str, tuple[str, str, str]]:
    return {
        c["type"]: (c["status"], c["reason"], c["message"])
        for c in status(kube, ns).get("conditions", [])
    }


def reasons(kube: Any, ns: str) -> dict[str, str]:
    return {t: c[1] for t, c in conds(kube, ns).items()}


def events(kube: Any, ns: str) -> list[tuple[str, str]]:
    out = kube.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.kind=SendingDomain",
        "-o", "json",
    ).stdout  # fmt: skip
    items = sorted(yaml.safe_load(out)["items"], key=lambda e: e["metadata"]["creationTimestamp"])
    return [(e["reason"], e["message"]) for e in items]


def secret_keys(kube: Any, ns: str) -> dict[str, bytes]:
    secret = kget(kube, ns, "secret", "example-com-dkim")
    assert secret is not None
    return {
        k.removesuffix(".pem"): base64.b64decode(v) for k, v in (secret.get("data") or {}).items()
    }


def publish(dns: DnsServer, records: list[dict[str, str]], types: tuple[str, ...]) -> None:
    for r in records:
        if r["type"] not in types:
            continue
        dns.remove(r["name"])
        if r["type"] == "TXT":
            dns.add_txt(r["name"], r["value"])
        elif r["type"] == "PTR":
            ip = next(a for a, h in IPS if h == r["value"])
            dns.remove(ip)
            dns.add_ptr(ip, r["value"])
        else:
            dns.add_a(r["name"], r["value"])


def pool_keys(kube: Any, ns: str) -> list[tuple[str, str, str]] | None:
    """(domain, selector, key file) of the DKIM keys in the pool's rendered engine config."""
    cm = kget(kube, ns, "configmap", "outbound-config")
    if cm is None:
        return None
    config = parse_config(yaml.safe_load(cm["data"]["engine.yaml"]))
    return [(k.domain, k.selector, str(k.key_file)) for k in config.dkim.keys]


def mounted_secrets(kube: Any, ns: str) -> list[str]:
    sts = kget(kube, ns, "statefulset", "outbound") or {}
    volumes = sts.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", [])
    return [v["secret"]["secretName"] for v in volumes if "secret" in v]


def sign_and_verify(kube: Any, ns: str, dns: DnsServer, selector: str, tmp: Path) -> str:
    """Sign a message with the Secret's key of `selector` (the engine's signer); Mail::DKIM's
    verdict from the records DNS serves."""
    pem = secret_keys(kube, ns)[selector]
    path = tmp / f"{selector}.pem"
    path.write_bytes(pem)
    key = DKIMKey(domain=DOMAIN, selector=selector, key_file=path, algorithm="rsa-sha256")
    msg = (
        b"From: Billing <billing@example.com>\r\nTo: a@example.net\r\nSubject: invoice\r\n"
        b"Date: Mon, 30 Nov 2026 09:00:00 +0000\r\nMessage-ID: <x@example.com>\r\n\r\nHello.\r\n"
    )
    signed = DKIMSigner(DKIMConfig(keys=[key])).sign(msg) + msg
    results = dkim_verify(signed, dns)
    assert [(r["selector"], r["domain"]) for r in results] == [(selector, DOMAIN)]
    return str(results[0]["result"])


def test_new_domain_tells_what_to_publish_and_goes_green(
    mailfleet_crds: Any, kube_namespace: str, run_operator: RunOperator, dns_server: DnsServer
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    apply(kube, ns, pool_doc())
    op = run_operator(ns)
    apply(kube, ns, domain_doc(dns_server))

    # Nothing published: every check fails and says why, naming the record or the IP.
    wait_for("the first check", lambda: "Ready" in conds(kube, ns), timeout=60)
    c = conds(kube, ns)
    assert c["DKIMPublished"][:2] == ("False", "AwaitingPublication")
    assert c["SPFValid"][:2] == ("False", "NoSPFRecord") and DOMAIN in c["SPFValid"][2]
    assert c["DMARCAligned"][:2] == ("False", "NoDMARCRecord")
    assert c["ReverseDNS"][:2] == ("False", "NoPTR") and "192.0.2.10" in c["ReverseDNS"][2]
    assert c["Ready"][0] == "False"
    st = status(kube, ns)
    sels = {s["algorithm"]: s for s in st["selectors"]}
    assert {s["state"] for s in sels.values()} == {"pending"}
    assert st["secretName"] == "example-com-dkim" and not st.get("activeSelectors")

    # The keys are in a Secret the domain owns; the records shown publish exactly them (the
    # engine's own helper computes the same TXT values from the Secret's keys).
    secret = kget(kube, ns, "secret", "example-com-dkim")
    owner = secret["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == (
        "SendingDomain",
        "example-com",
        True,
    )
    keys = secret_keys(kube, ns)
    assert set(keys) == {s["selector"] for s in st["selectors"]}
    by_name = {r["name"]: r for r in st["records"]}
    for algorithm, sel in sels.items():
        want = dns_txt_record(parse_private_key(keys[sel["selector"]], algorithm))
        assert by_name[f"{sel['selector']}._domainkey.{DOMAIN}"]["value"] == want
    assert by_name[DOMAIN]["value"] == "v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 -all"
    assert (
        by_name[f"_dmarc.{DOMAIN}"]["value"]
        == "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"
    )
    assert f"_domainkey.{DOMAIN}. IN TXT" in st["zone"]
    assert "10.2.0.192.in-addr.arpa. IN PTR mta1.example.com." in st["zone"]

    # Wrong records: each condition names what is wrong.
    dns_server.add_txt(DOMAIN, "v=spf1 ip4:192.0.2.10 include:spf.example.net -all")
    dns_server.add_txt("spf.example.net", "v=spf1 ip4:198.51.100.0/24 -all")
    dns_server.add_txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=none; rua=mailto:dmarc@example.com")
    dns_server.add_ptr("192.0.2.10", "mta1.example.com")
    dns_server.add_a("mta1.example.com", "192.0.2.99")
    dns_server.add_ptr("192.0.2.11", "host-11.isp.example")
    dns_server.add_txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=20261130")
    wait_for(
        "the wrong records reported",
        lambda: (
            reasons(kube, ns).get("SPFValid") == "IPNotAuthorized"
            and reasons(kube, ns).get("DMARCAligned") == "PolicyMismatch"
            and reasons(kube, ns).get("ReverseDNS") in ("ForwardMismatch", "PTRMismatch")
        ),
        timeout=60,
    )
    c = conds(kube, ns)
    assert "192.0.2.11 (pool outbound)" in c["SPFValid"][2]
    assert "192.0.2.10" not in c["SPFValid"][2]  # authorised directly
    assert "p=none; expected p=quarantine" in c["DMARCAligned"][2]
    assert "mta1.example.com A is 192.0.2.99, not 192.0.2.10" in c["ReverseDNS"][2]
    assert "PTR of 192.0.2.11 (pool outbound) is host-11.isp.example" in c["ReverseDNS"][2]

    # The pool whose IPs fail is warned too.
    def pool_warnings() -> dict[str, str] | None:
        out = kube.kubectl(
            "get", "events", "-n", ns, "--field-selector",
            "involvedObject.kind=SendingPool,involvedObject.name=outbound,type=Warning",
            "-o", "json",
        ).stdout  # fmt: skip
        got = {e["reason"]: e["message"] for e in yaml.safe_load(out)["items"]}
        return got if {"IPNotAuthorized", "NoPTR"} <= set(got) else None

    warned = wait_for("the pool's warnings", pool_warnings, timeout=30)
    assert "192.0.2.11 (pool outbound)" in warned["IPNotAuthorized"]
    assert warned["NoPTR"].startswith("SendingDomain example-com (ReverseDNS): ")
    # A wrong DKIM key under a pending selector's name is a mismatch, not "waiting".
    rsa_sel = sels["rsa-sha256"]["selector"]
    dns_server.add_txt(f"{rsa_sel}._domainkey.{DOMAIN}", "v=DKIM1; k=rsa; p=AAAAB3NzaC1yc2E")
    wait_for("a DKIM mismatch", lambda: reasons(kube, ns).get("DKIMPublished") == "KeyMismatch")
    assert rsa_sel in conds(kube, ns)["DKIMPublished"][2]
    assert status(kube, ns)["selectors"][0]["state"] == "pending"  # a wrong record never activates

    # Publish what the status says: every condition goes green, the keys sign.
    dns_server.remove("mta1.example.com")
    dns_server.remove("spf.example.net")
    publish(dns_server, st["records"], ("TXT", "PTR", "A"))
    wait_for("Ready", lambda: conds(kube, ns).get("Ready", ("",))[0] == "True", timeout=60)
    c = conds(kube, ns)
    assert {t: v[:2] for t, v in c.items()} == {
        "DKIMPublished": ("True", "Published"),
        "SPFValid": ("True", "Valid"),
        "DMARCAligned": ("True", "Aligned"),
        "ReverseDNS": ("True", "ForwardConfirmed"),
        "Ready": ("True", "Ready"),
    }
    st = status(kube, ns)
    assert {s["state"] for s in st["selectors"]} == {"active"}
    assert st["transportSecurity"] == {
        "mtaSts": "v=STSv1; id=20261130",
        "tlsRpt": f"none (_smtp._tls.{DOMAIN} has no TLSRPTV1 record)",
    }
    assert set(st["activeSelectors"].split(",")) == set(keys)
    got = [r for r, _ in events(kube, ns)]
    assert got.count("DKIMKeyGenerated") == 2 and got.count("DKIMKeyActivated") == 2
    assert {"NoSPFRecord", "NoDMARCRecord", "NoPTR", "IPNotAuthorized", "PolicyMismatch"} <= set(
        got
    )
    table = kube.kubectl("get", "mfdomain", "-n", ns).stdout
    assert "example.com" in table and "True" in table, table

    # Checks go on (every second here); with nothing new they write nothing.
    version = kget(kube, ns, "sendingdomain", "example-com")["metadata"]["resourceVersion"]

    def last_check() -> float:
        m = op.metrics()
        return next(v for k, v in m.items() if k.startswith("mailfleet_domain_last_check"))

    before = last_check()
    wait_for("two more checks", lambda: last_check() >= before + 2, timeout=60)
    assert kget(kube, ns, "sendingdomain", "example-com")["metadata"]["resourceVersion"] == version


def test_rotation_switches_only_once_published_and_keeps_the_old_key_for_the_grace_period(
    mailfleet_crds: Any,
    kube_namespace: str,
    run_operator: RunOperator,
    dns_server: DnsServer,
    tmp_path: Path,
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    apply(kube, ns, pool_doc())
    op = run_operator(ns)
    apply(
        kube,
        ns,
        domain_doc(dns_server, algorithms=["rsa-sha256"], rotateEvery="8s", gracePeriod="4s"),
    )
    wait_for("a pending key", lambda: status(kube, ns).get("selectors"), timeout=60)
    publish(dns_server, status(kube, ns)["records"], ("TXT", "PTR", "A"))
    wait_for("Ready", lambda: conds(kube, ns).get("Ready", ("",))[0] == "True", timeout=60)
    first = status(kube, ns)["selectors"][0]["selector"]
    assert sign_and_verify(kube, ns, dns_server, first, tmp_path) == "pass"
    # The pool that sends for the domain signs with its active key, from the domain's Secret.
    key_dir = "/var/run/secrets/mailfleet/dkim/example-com-dkim"
    wait_for(
        "the pool signing with the active key",
        lambda: pool_keys(kube, ns) == [(DOMAIN, first, f"{key_dir}/{first}.pem")],
        timeout=60,
    )
    assert "example-com-dkim" in mounted_secrets(kube, ns)
    metrics = op.metrics()
    assert any(
        k.startswith("mailfleet_domain_condition{") and 'type="Ready"' in k and 'status="True"' in k
        for k in metrics
    ), metrics

    # Rotation falls due: a new selector, pending; the old key keeps signing meanwhile.
    def two() -> list[dict[str, Any]] | None:
        sels = status(kube, ns).get("selectors") or []
        return sels if len(sels) == 2 else None

    sels = {s["state"]: s["selector"] for s in wait_for("a new selector", two, timeout=60)}
    assert sels["active"] == first and sels["pending"] != first
    second = sels["pending"]
    assert pool_keys(kube, ns) == [(DOMAIN, first, f"{key_dir}/{first}.pem")]  # not yet
    assert status(kube, ns)["activeSelectors"] == first
    assert reasons(kube, ns)["DKIMPublished"] == "RotationPending"
    assert sign_and_verify(kube, ns, dns_server, first, tmp_path) == "pass"

    # Its record published: it signs, the old one is retiring but still verifies.
    publish(dns_server, status(kube, ns)["records"], ("TXT",))
    wait_for("the switch", lambda: status(kube, ns).get("activeSelectors") == second, timeout=60)
    states = {s["selector"]: s["state"] for s in status(kube, ns)["selectors"]}
    if states.get(first) == "retiring":
        assert sign_and_verify(kube, ns, dns_server, first, tmp_path) == "pass"
    assert sign_and_verify(kube, ns, dns_server, second, tmp_path) == "pass"
    wait_for(
        "the pool signing with the new key",
        lambda: pool_keys(kube, ns) == [(DOMAIN, second, f"{key_dir}/{second}.pem")],
        timeout=60,
    )

    # After the grace period the old selector leaves status and the Secret.
    wait_for(
        "the old key removed",
        lambda: (
            first not in {s["selector"] for s in status(kube, ns).get("selectors", [])}
            and first not in secret_keys(kube, ns)
        ),
        timeout=60,
    )
    got = [r for r, _ in events(kube, ns)]
    for reason in ("DKIMKeyGenerated", "DKIMKeyActivated", "DKIMKeyRetiring", "DKIMKeyRemoved"):
        assert reason in got, got
    removed = next(m for r, m in events(kube, ns) if r == "DKIMKeyRemoved")
    assert f"{first}._domainkey.{DOMAIN}" in removed


def post(url: str, data: bytes, token: str | None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, method="POST")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_dmarc_reports_become_metrics_and_events(
    mailfleet_crds: Any,
    kube_namespace: str,
    run_operator: RunOperator,
    dns_server: DnsServer,
    tmp_path: Path,
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    token_file = tmp_path / "dmarc-token"
    token_file.write_text("s3cret-upload-token\n")
    port = free_port()
    apply(kube, ns, pool_doc())
    op = run_operator(
        ns, args=["--dmarc-listen", f"127.0.0.1:{port}", "--dmarc-token-file", str(token_file)]
    )
    apply(kube, ns, domain_doc(dns_server))
    wait_for("the first check", lambda: "Ready" in conds(kube, ns), timeout=60)
    url = f"http://127.0.0.1:{port}/dmarc/{ns}/example-com"
    xml = (REPO / "tests/data/dmarc/google.com!example.com!1764460800!1764547199.xml").read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("google.com!example.com!1764460800!1764547199.xml", xml)
    report = buf.getvalue()

    assert post(url, report, None)[0] == 401
    assert post(url, report, "wrong")[0] == 401
    assert post(url, b"<feedback>", "s3cret-upload-token")[0] == 400
    other = gzip.compress(xml.replace(b"<domain>example.com</domain>", b"<domain>x.test</domain>"))
    code, text = post(url, other, "s3cret-upload-token")
    assert code == 422 and "x.test" in text
    assert post(f"http://127.0.0.1:{port}/dmarc/{ns}/nope", report, "s3cret-upload-token")[0] == 404
    code, text = post(url, report, "s3cret-upload-token")
    assert code == 200 and "1203 messages, 3 failing DMARC" in text, text
    assert post(url, report, "s3cret-upload-token") == (
        200,
        "report google.com/10485761234567890123 was counted already\n",
    )

    metrics = op.metrics()
    rows = {k: v for k, v in metrics.items() if k.startswith("mailfleet_dmarc_messages_total{")}

    def value(ip: str) -> tuple[str, float]:
        k = next(k for k in rows if f'source_ip="{ip}"' in k)
        return ('ours="true"' in k), rows[k]

    assert value("192.0.2.10") == (True, 1180.0)
    assert value("192.0.2.11") == (True, 20.0)
    assert value("203.0.113.66") == (False, 3.0)
    assert any(
        'reporter="google.com"' in k and v == 1.0
        for k, v in metrics.items()
        if k.startswith("mailfleet_dmarc_reports_total{")
    )
    got = dict(events(kube, ns))
    assert "1203 messages" in got["DMARCReport"]
    assert "203.0.113.66" in got["DMARCForeignSources"]
    assert "192.0.2.10" not in got["DMARCForeignSources"]


def test_kubectl_explain_documents_the_kind(mailfleet_crds: Any) -> None:
    out = mailfleet_crds.kubectl("explain", "sendingdomain.spec.dkim").stdout
    assert "rotateEvery" in out and "gracePeriod" in out and "algorithms" in out
    assert "How long a key signs before a new selector replaces it (at least checkInterval)." in (
        " ".join(out.split())
    )
    spec = " ".join(mailfleet_crds.kubectl("explain", "mfdomain.spec.onFailingIP").stdout.split())
    assert "StopSending: also, the pools stop sending the domain's mail" in spec
    stopped = mailfleet_crds.kubectl("explain", "mfdomain.status.stoppedIPs").stdout
    assert "Pool IPs that do not send the domain's mail now" in " ".join(stopped.split())
    mailed = mailfleet_crds.kubectl("explain", "mfdomain.spec.dmarc.acceptReportsFrom").stdout
    assert "dkimDomains" in mailed and "--dmarc-url" in mailed
    status = mailfleet_crds.kubectl("explain", "mfdomain.status.selectors.state").stdout
    assert "pending: generated, waiting for its record in DNS" in " ".join(status.split())
