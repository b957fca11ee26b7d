"""DMARC aggregate reports as providers mail them: the attachment found in each shape (Google's
single-part zip, Microsoft's multipart with a gzip, octet-stream named .zip), and what is
refused. The report files are the real samples in tests/data/dmarc."""

from __future__ import annotations

import gzip
import io
import zipfile
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest

from mailfleet.mta.config import ConfigError, parse_config
from mailfleet.mta.dmarcmail import MAX_ATTACHMENTS, NotAReport, report_attachments
from mailfleet.operator.api.crd_models import SendingDomain
from mailfleet.operator.decide import dmarcreport
from mailfleet.operator.decide import domainplan as p

DATA = Path(__file__).resolve().parents[1] / "data" / "dmarc"
GOOGLE = DATA / "google.com!example.com!1764460800!1764547199.xml"
OUTLOOK = DATA / "enterprise.protection.outlook.com!example.com!1764460800!1764547200.xml"


def zipped(path: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(path.name, path.read_bytes())
    return buf.getvalue()


def google_mail() -> bytes:
    """As Google mails it: the whole body is the zip (application/zip, base64)."""
    part = MIMEApplication(zipped(GOOGLE), "zip", name=GOOGLE.name + ".zip")
    part["From"] = "noreply-dmarc-support@google.com"
    part["To"] = "dmarc@example.com"
    part["Subject"] = "Report domain: example.com Submitter: google.com Report-ID: 1048576"
    part.add_header("Content-Disposition", "attachment", filename=GOOGLE.name + ".zip")
    return part.as_bytes()


def outlook_mail() -> bytes:
    """As Microsoft mails it: multipart/mixed, a text part and the report as .xml.gz."""
    msg = MIMEMultipart("mixed")
    msg["From"] = "dmarcreport@microsoft.com"
    msg["Subject"] = "Report Domain: example.com Submitter: enterprise.protection.outlook.com"
    msg.attach(MIMEText("This is a DMARC aggregate report from Microsoft Corporation."))
    gz = MIMEApplication(gzip.compress(OUTLOOK.read_bytes()), "gzip", name=OUTLOOK.name + ".gz")
    gz.add_header("Content-Disposition", "attachment", filename=OUTLOOK.name + ".gz")
    msg.attach(gz)
    return msg.as_bytes()


def octet_mail(name: str, payload: bytes) -> bytes:
    msg = MIMEMultipart("mixed")
    msg.attach(MIMEText("report attached"))
    part = MIMEApplication(payload, "octet-stream")
    part.add_header("Content-Disposition", "attachment", filename=name)
    msg.attach(part)
    return msg.as_bytes()


@pytest.mark.parametrize(
    ("mail", "org", "messages"),
    [
        (google_mail, "google.com", 1203),
        (outlook_mail, "Enterprise Outlook", None),
        (lambda: octet_mail("google.com!example.com.zip", zipped(GOOGLE)), "google.com", 1203),
    ],
)
def test_the_report_is_found_and_parses(mail: Any, org: str, messages: int | None) -> None:
    (attachment,) = report_attachments(mail())
    report = dmarcreport.parse(attachment)
    assert report.domain == "example.com"
    assert report.org_name == org
    if messages is not None:
        assert report.messages == messages


def test_the_outlook_sample_reads_like_the_xml_it_came_from() -> None:
    (attachment,) = report_attachments(outlook_mail())
    assert dmarcreport.parse(attachment) == dmarcreport.parse(OUTLOOK.read_bytes())


@pytest.mark.parametrize(
    "mail",
    [
        MIMEText("Thanks for your report!").as_bytes(),
        octet_mail("invoice.pdf", b"%PDF-1.4"),
        b"Subject: empty\r\n\r\n",
        b"",
    ],
)
def test_no_report_attached_is_refused_saying_what_was_looked_for(mail: bytes) -> None:
    with pytest.raises(NotAReport, match=r"\.zip, \.xml\.gz or \.xml"):
        report_attachments(mail)


def test_at_most_a_few_attachments_are_taken() -> None:
    msg = MIMEMultipart("mixed")
    for i in range(MAX_ATTACHMENTS + 5):
        msg.attach(MIMEApplication(b"<feedback/>", "xml", name=f"{i}.xml"))
    assert len(report_attachments(msg.as_bytes())) == MAX_ATTACHMENTS


# --- the engine config -------------------------------------------------------------------------


def address(**over: Any) -> dict[str, Any]:
    return {
        "address": "DMARC@Example.com",
        "forwardURL": "http://127.0.0.1:8090/dmarc/ns/example",
        "sources": ["192.0.2.0/24"],
        **over,
    }


def test_engine_config_takes_addresses_lowercased() -> None:
    cfg = parse_config({"dmarcReports": {"addresses": [address()], "tokenFile": "/t"}})
    assert cfg.dmarc_reports.addresses[0].address == "dmarc@example.com"


@pytest.mark.parametrize(
    ("block", "words"),
    [
        ({"addresses": [address()]}, "dmarcReports.tokenFile is required"),
        ({"addresses": [address(sources=[])], "tokenFile": "/t"}, "needs sources"),
        ({"addresses": [address(forwardURL="ftp://x")], "tokenFile": "/t"}, "forwardURL"),
        ({"addresses": [address(address="nobody")], "tokenFile": "/t"}, "not an email address"),
    ],
)
def test_bad_engine_config_names_the_field(block: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match="dmarcReports") as e:
        parse_config({"dmarcReports": block})
    assert words in str(e.value)


# --- what the operator renders ----------------------------------------------------------------


def domain(name: str, pools: list[str], dmarc: dict[str, Any]) -> SendingDomain:
    return SendingDomain.model_validate(
        {
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"domain": f"{name}.example", "pools": pools, "dmarc": dmarc},
        }
    )


def test_pools_take_the_reports_of_their_domains_that_accept_them_by_mail() -> None:
    ds = [
        domain(
            "a",
            ["out"],
            {
                "reportAddress": "dmarc@a.example",
                "acceptReportsFrom": {"networks": ["192.0.2.0/24"], "dkimDomains": ["google.com"]},
            },
        ),
        domain("b", ["out"], {"reportAddress": "dmarc@b.example"}),  # by upload only
        domain(
            "c",
            ["other"],
            {"reportAddress": "dmarc@c.example", "acceptReportsFrom": {"dkimDomains": ["x.test"]}},
        ),
    ]
    out = p.dmarc_report_addresses("out", ds, "http://op.mailfleet:8090/")
    assert out == [
        {
            "address": "dmarc@a.example",
            "forwardURL": "http://op.mailfleet:8090/dmarc/ns/a",
            "sources": ["192.0.2.0/24"],
            "signedBy": ["google.com"],
        }
    ]
    assert p.dmarc_report_addresses("out", ds, None) == []  # the operator takes none
    cfg = parse_config({"dmarcReports": {"addresses": out, "tokenFile": "/t"}})
    assert cfg.dmarc_reports.addresses[0].signed_by == ["google.com"]
