"""The admin API: probes and metrics open, everything that changes state behind a bearer token,
JSON bodies only, never served beyond loopback without a token; a config pushed through reload
runs at once and its hash is what /v1/status reports."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml
from fixtures.engine import MAILFLEET, EngineProc
from fixtures.procs import Proc

from mailfleet.mta.config import config_digest

TOKEN = "s3cret-admin-token-0123456789"


def _engine_with_token(mta_engine: Callable[..., EngineProc], tmp_path: Path) -> EngineProc:
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    eng = mta_engine({"admin": {"tokenFile": str(token_file)}}, start=False)
    eng.admin_token = TOKEN
    return eng.start()


def _raw(eng: EngineProc, method: str, path: str, headers: dict[str, str], data: bytes) -> int:
    req = urllib.request.Request(eng.url(path), method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_state_changes_need_the_token_and_probes_stay_open(
    mta_engine: Callable[..., EngineProc], tmp_path: Path
) -> None:
    eng = _engine_with_token(mta_engine, tmp_path)
    for path in ("/healthz", "/readyz", "/metrics", "/v1/status"):
        assert _raw(eng, "GET", path, {}, b"") in (200, 503), path
    assert _raw(eng, "POST", "/v1/drain", {}, b"") == 401
    assert _raw(eng, "POST", "/v1/drain", {"Authorization": "Bearer wrong-token"}, b"") == 401
    assert _raw(eng, "GET", "/v1/suppressions", {}, b"") == 401
    assert _raw(eng, "DELETE", "/v1/suppressions/a@example.org", {}, b"") == 401
    # A form post, as a browser page could send it cross-origin, is refused even with a token.
    form = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}
    assert _raw(eng, "POST", "/v1/suppressions", form, b'{"recipient": "a@example.org"}') == 415
    assert eng.status()["draining"] is False
    added = eng.post("/v1/suppressions", {"recipient": "a@example.org", "reason": "test"})
    assert added["recipient"] == "a@example.org"
    assert eng.post("/v1/drain")["draining"] is True
    assert eng.status()["draining"] is True


def test_no_admin_api_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    cfg = tmp_path / "engine.yaml"
    cfg.write_text(yaml.safe_dump({"admin": {"listen": "0.0.0.0:8025"}}))
    done = subprocess.run(
        [MAILFLEET, "mta", "--check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "admin.tokenFile is required" in done.stderr
    # The same config with the pod's address passed on the command line: still refused.
    done = subprocess.run(
        [MAILFLEET, "mta", "--check", "--config", str(cfg), "--listen-address", "127.10.0.9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_listen_address_overrides_the_config_hosts(
    mta_engine: Callable[..., EngineProc], tmp_path: Path
) -> None:
    eng = mta_engine(start=False)
    eng.config["submission"]["listen"] = f"0.0.0.0:{eng.smtp_port}"
    eng.config["admin"]["listen"] = f"0.0.0.0:{eng.admin_port}"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    eng.config["admin"]["tokenFile"] = str(token_file)
    eng.write_config(eng.config)
    # A pod passes its own address: the engine answers there, not on every address.
    eng.host = "127.10.0.9"
    eng.admin_token = TOKEN
    eng.proc = Proc(
        [MAILFLEET, "mta", "--config", str(eng.config_path), "--listen-address", "127.10.0.9"],
        name="mta-listen",
        log_dir=eng.workdir / "logs",
    )
    eng.wait_ready()
    assert eng.status()["submission"]["listen"].startswith("127.10.0.9:")


def test_pushed_config_applies_before_the_file_changes(
    mta_engine: Callable[..., EngineProc], tmp_path: Path
) -> None:
    eng = _engine_with_token(mta_engine, tmp_path)
    text = eng.config_path.read_text()
    assert eng.status()["configHash"] == config_digest(text)
    new = dict(eng.config)
    new["submission"] = {**new["submission"], "maxRecipients": 7}
    pushed = yaml.safe_dump(new)
    assert eng.post("/v1/reload", {"config": "{not: [valid"})["reloaded"] is False
    assert eng.post("/v1/reload", {"config": pushed}, token="nope").get("reloaded") is None
    result = eng.post("/v1/reload", {"config": pushed})
    assert result["reloaded"] is True, result
    assert result["configHash"] == config_digest(pushed)
    assert eng.status()["configHash"] == config_digest(pushed)
    # The file still holds the old text; when it catches up, nothing is reloaded twice.
    generation = eng.status()["configGeneration"]
    eng.config_path.write_text(pushed)
    eng.sighup()
    eng.wait_until(lambda: eng.status()["configGeneration"] > generation, 10, "sighup reload")
    assert eng.status()["configHash"] == config_digest(pushed)
