"""DMARC aggregate reports mailed to a SendingDomain's report address: the pool's engine takes
them at submission from the configured reporters only (here: DKIM-signed by reporter.test), and
forwards the attachment to the operator, which counts it in its metrics per source IP, ours or
not. Real peers: dnsmasq serves the reporter's DKIM key, the engine verifies it, the operator
parses a real report sample."""

from __future__ import annotations

import io
import json
import smtplib
import urllib.request
import zipfile
from collections.abc import Callable
from email.mime.application import MIMEApplication
from pathlib import Path
from typing import Any

import dkim
import pytest
import yaml
from fixtures.dnsserver import DnsServer
from fixtures.fleet import SUBMISSION_PORT, apply, pool_manifest, wait_pods
from fixtures.keys import RSA_KEY
from fixtures.operator import OperatorProcess, free_port, kget, wait_for
from fixtures.smtppeers import RecordingMX

from mailfleet.mta.config import config_digest
from mailfleet.mta.dkimkeys import dns_txt_record, parse_private_key

pytestmark = [pytest.mark.kube, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests/data/dmarc/google.com!example.com!1764460800!1764547199.xml"
OURS = "127.0.6.31"
ADDRESS = "dmarc@example.com"


def zipped(name: str, xml: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, xml)
    return buf.getvalue()


def report_mail(xml: bytes, sign: bool) -> bytes:
    """As Google mails a report: the zip is the body; signed with d=reporter.test."""
    part = MIMEApplication(zipped(SAMPLE.name, xml), "zip", name=SAMPLE.name + ".zip")
    part["From"] = "noreply-dmarc-support@reporter.test"
    part["To"] = ADDRESS
    part["Subject"] = "Report domain: example.com Submitter: reporter.test"
    data = part.as_bytes().replace(b"\n", b"\r\n")
    if not sign:
        return data
    sig = dkim.sign(
        data,
        RSA_KEY.selector.encode(),
        b"reporter.test",
        RSA_KEY.key_file.read_bytes(),
        include_headers=[b"from", b"to", b"subject", b"content-type"],
    )
    return sig + data


def mail(ip: str, data: bytes) -> tuple[int, str]:
    """One message to the report address; the reply to DATA (or to RCPT, when refused)."""
    with smtplib.SMTP(ip, SUBMISSION_PORT, local_hostname="mx.reporter.test", timeout=60) as s:
        s.ehlo()
        s.mail("noreply-dmarc-support@reporter.test")
        code, text = s.rcpt(ADDRESS)
        if code != 250:
            return code, text.decode()
        code, text = s.data(data)
        return code, text.decode()


def test_reports_mailed_to_the_pool_are_counted_by_the_operator(
    kube_cluster: Any,
    kube_namespace: str,
    run_operator: Callable[..., OperatorProcess],
    recording_mx: Callable[..., RecordingMX],
    dns_server: DnsServer,
    tmp_path: Path,
) -> None:
    kube, ns = kube_cluster, kube_namespace
    mx = recording_mx("127.0.0.1")
    key = parse_private_key(RSA_KEY.key_file.read_bytes(), "rsa-sha256")
    dns_server.add_txt(f"{RSA_KEY.selector}._domainkey.reporter.test", dns_txt_record(key))
    dns_server.add_txt("_dmarc.example.com", f"v=DMARC1; p=quarantine; rua=mailto:{ADDRESS}")
    token = tmp_path / "dmarc-token"
    token.write_text("upload-token-for-mailboxes\n")
    port = free_port()
    op = run_operator(
        ns,
        args=[
            "--dmarc-listen", f"127.0.0.1:{port}",
            "--dmarc-token-file", str(token),
            "--dmarc-url", f"http://127.0.0.1:{port}",
            # The domain names no resolvers: the operator-wide ones are asked.
            "--dns-nameservers", dns_server.host,
            "--dns-port", str(dns_server.port),
        ],
    )  # fmt: skip
    apply(
        kube,
        pool_manifest(
            ns,
            "rep",
            mx,
            [OURS],
            replicas={"min": 1, "max": 1, "desired": 1},
            dkim=[],
            routing={
                "routes": {"*": f"{mx.host}:{mx.port}"},
                "dns": {"nameservers": [dns_server.host], "port": dns_server.port},
            },
        ),
    )
    apply(
        kube,
        {
            "apiVersion": "mailfleet.io/v1alpha1",
            "kind": "SendingDomain",
            "metadata": {"name": "example-com", "namespace": ns},
            "spec": {
                "domain": "example.com",
                "pools": ["rep"],
                "dmarc": {
                    "expectedPolicy": "quarantine",
                    "reportAddress": ADDRESS,
                    # Not our network: only the DKIM signature lets a report in.
                    "acceptReportsFrom": {
                        "networks": ["10.99.0.0/16"],
                        "dkimDomains": ["reporter.test"],
                    },
                },
                "checkInterval": "1s",
            },
        },
    )
    (pod,) = wait_pods(kube, ns, "rep", 1)
    ip = pod["status"]["podIP"]

    def engine_takes_reports() -> bool:
        text = kget(kube, ns, "configmap", "rep-config")["data"]["engine.yaml"]
        addresses = yaml.safe_load(text).get("dmarcReports", {}).get("addresses", [])
        with urllib.request.urlopen(f"http://{ip}:8025/v1/status", timeout=10) as r:
            running = json.load(r).get("configHash")
        return [a["address"] for a in addresses] == [ADDRESS] and running == config_digest(text)

    wait_for("the engine takes reports", engine_takes_reports, timeout=90, every=1.0)

    def dmarc_condition() -> tuple[str, str] | None:
        status = kget(kube, ns, "sendingdomain", "example-com").get("status") or {}
        c = {c["type"]: c for c in status.get("conditions", [])}.get("DMARCAligned")
        return (c["status"], c["reason"]) if c else None

    # Only the dnsmasq of --dns-nameservers serves this record.
    wait_for("the domain checked", lambda: dmarc_condition() == ("True", "Aligned"), timeout=60)
    xml = SAMPLE.read_bytes().replace(b"192.0.2.10", OURS.encode())

    code, text = mail(ip, report_mail(xml, sign=False))
    assert code == 550 and "DMARC report refused" in text, text

    code, text = mail(ip, report_mail(xml, sign=True))
    assert code == 250 and "1203 messages, 3 failing DMARC" in text, text
    code, text = mail(ip, report_mail(xml, sign=True))
    assert code == 250 and "counted already" in text, text

    other = xml.replace(b"<domain>example.com</domain>", b"<domain>x.test</domain>", 1)
    code, text = mail(ip, report_mail(other, sign=True))
    assert code == 554 and "x.test" in text, text

    rows = {k: v for k, v in op.metrics().items() if k.startswith("mailfleet_dmarc_messages_total")}

    def counted(source: str) -> tuple[str, float]:
        k = next(k for k in rows if f'source_ip="{source}"' in k)
        return k.split('ours="')[1].split('"')[0], rows[k]

    assert counted(OURS) == ("true", 1180.0)
    assert counted("203.0.113.66") == ("false", 3.0)
    events = kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    assert "DMARCForeignSources" in events and "203.0.113.66" in events
    assert not mx.messages(), "a report was relayed instead of taken in"
