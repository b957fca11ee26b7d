"""Config errors name the field; reload by file change or SIGHUP keeps sessions and queued mail;
a bad new config is refused and the old one kept."""

from __future__ import annotations

import copy
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixtures.engine import MAILFLEET, EngineProc, message
from fixtures.smtppeers import RecordingMX


@pytest.fixture
def two_mx() -> Iterator[tuple[RecordingMX, RecordingMX]]:
    with RecordingMX("127.0.0.1") as a, RecordingMX("127.0.0.1") as b:
        yield a, b


def test_bad_config_names_the_field_and_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "submission:\n  listen: 127.0.0.1:notaport\n  maxRecipents: 5\nretry: {maxAge: forever}\n"
    )
    done = subprocess.run(
        [MAILFLEET, "mta", "--config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    err = done.stderr
    assert "submission.listen" in err and "port" in err
    assert "submission.maxRecipents: unknown field" in err
    assert "retry.maxAge" in err and "'forever' is not a duration" in err
    check = subprocess.run(
        [MAILFLEET, "mta", "--check", "--config", "examples/mta/local.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr


def _routes(eng: EngineProc, mx: RecordingMX) -> dict[str, object]:
    cfg = copy.deepcopy(eng.config)
    cfg.setdefault("routing", {})["routes"] = {"*": f"{mx.host}:{mx.port}"}
    return cfg


def test_reload_on_file_change_and_sighup_keeps_open_sessions(
    mta_engine: Callable[..., EngineProc], two_mx: tuple[RecordingMX, RecordingMX]
) -> None:
    a, b = two_mx
    eng = mta_engine({"routing": {"routes": {"*": f"{a.host}:{a.port}"}}})
    session = eng.smtp()
    session.ehlo()
    eng.send("app@example.test", ["x@example.org"], message("to a"))
    a.wait_for(1)

    eng.write_config(_routes(eng, b))
    eng.wait_until(lambda: eng.status()["configGeneration"] == 2, what="reload by file change")
    # The session opened before the reload still works.
    session.mail("app@example.test")
    session.rcpt("y@example.org")
    assert session.data(message("same session, new route"))[0] == 250
    session.quit()
    b.wait_for(1)
    assert eng.metric("mailfleet_config_reloads_total", result="ok") == 1

    eng.config["routing"]["routes"] = {"*": f"{a.host}:{a.port}"}
    eng.config_path.write_text(__import__("yaml").safe_dump(eng.config))
    eng.sighup()
    eng.wait_until(lambda: eng.status()["configGeneration"] >= 3, what="reload by SIGHUP")
    eng.send("app@example.test", ["z@example.org"], message("back to a"))
    a.wait_for(2)


def test_bad_new_config_is_refused_and_old_kept(
    mta_engine: Callable[..., EngineProc], two_mx: tuple[RecordingMX, RecordingMX]
) -> None:
    a, b = two_mx
    a.script_rcpt("451 4.3.0 later")
    eng = mta_engine(
        {
            "routing": {"routes": {"*": f"{a.host}:{a.port}"}},
            "retry": {"initial": "1s", "max": "1s", "jitter": 0},
        }
    )
    eng.send("app@example.test", ["queued@example.org"], message("queued across reload"))
    broken = copy.deepcopy(eng.config)
    broken["routing"]["routes"] = {"*": "no-port-here:"}
    broken["delivery"] = {"tls": "sometimes"}
    eng.write_config(broken)
    eng.wait_until(
        lambda: eng.metric("mailfleet_config_reloads_total", result="failed") >= 1,
        what="refused reload",
    )
    errors = [ln for ln in eng.log_lines() if ln.get("level") == "error"]
    assert any("delivery.tls" in str(ln.get("error")) for ln in errors), errors
    assert eng.status()["configGeneration"] == 1
    # Still running on the old config: the queued message arrives, new mail is accepted.
    a.wait_for(1, timeout=30)
    eng.send("app@example.test", ["new@example.org"], message("after refused reload"))
    a.wait_for(2)
    assert b.messages() == []
    time.sleep(0)
