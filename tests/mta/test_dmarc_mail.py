"""DMARC reports mailed to an engine (dmarcReports): who may send them, what is not a report,
and that a report the operator cannot take now is deferred (451), never accepted and lost. The
forward to a live operator is tested end to end in tests/e2e/test_dmarc_by_mail.py."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from email.mime.application import MIMEApplication
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

from fixtures.engine import EngineProc
from fixtures.procs import free_port

SAMPLE = (
    Path(__file__).resolve().parents[1]
    / "data/dmarc/google.com!example.com!1764460800!1764547199.xml"
)
ADDRESS = "dmarc@example.com"


def config(tmp_path: Path, sources: list[str]) -> dict[str, Any]:
    token = tmp_path / "token"
    token.write_text("engine-admin-token-0123456789\n")
    closed = free_port()  # nothing listens: the operator is down
    return {
        "routing": {"routes": {"*": "127.0.0.1:9"}},
        "dmarcReports": {
            "tokenFile": str(token),
            "timeout": "5s",
            "addresses": [
                {
                    "address": ADDRESS,
                    "forwardURL": f"http://127.0.0.1:{closed}/dmarc/ns/example-com",
                    "sources": sources,
                }
            ],
        },
    }


def report() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(SAMPLE.name, SAMPLE.read_bytes())
    part = MIMEApplication(buf.getvalue(), "zip", name=SAMPLE.name + ".zip")
    part["From"] = "noreply-dmarc-support@google.com"
    part["Subject"] = "Report domain: example.com"
    return part.as_bytes().replace(b"\n", b"\r\n")


def mail(eng: EngineProc, data: bytes) -> tuple[int, str]:
    with eng.smtp() as s:
        s.ehlo()
        s.mail("noreply-dmarc-support@google.com")
        code, text = s.rcpt(ADDRESS)
        if code != 250:
            return code, text.decode()
        code, text = s.data(data)
        return code, text.decode()


def test_reports_from_elsewhere_are_refused_at_rcpt(
    mta_engine: Callable[..., EngineProc], tmp_path: Path
) -> None:
    eng = mta_engine(config(tmp_path, ["10.99.0.0/16"]))
    code, text = mail(eng, report())
    assert code == 550 and "configured reporters only" in text
    assert eng.metric("mailfleet_submission_rejections_total", reason="dmarc-source") == 1
    assert eng.status()["queue"]["messages"] == 0


def test_a_report_the_operator_cannot_take_is_deferred_and_not_a_report_refused(
    mta_engine: Callable[..., EngineProc], tmp_path: Path
) -> None:
    eng = mta_engine(config(tmp_path, ["127.0.0.0/8"]))
    code, text = mail(eng, report())
    assert code == 451 and "try again later" in text, text
    assert eng.metric("mailfleet_dmarc_reports_mailed_total", result="4xx") == 1
    code, text = mail(eng, MIMEText("thanks!").as_bytes().replace(b"\n", b"\r\n"))
    assert code == 554 and ".zip, .xml.gz or .xml" in text, text
    # Neither was queued for delivery: the report address is local.
    assert eng.status()["queue"]["messages"] == 0
