"""The egress proxy (`mailfleet egress-proxy`) as a real process between a real engine and a
recording MX: mail leaves from the address the engine reached the proxy on; wrong credentials,
another pool's address and a port not allowed are refused with a reply the engine's deferral
names; readiness follows the addresses and listeners; a reload adds an address; SIGTERM drains;
a proxy killed under load loses nothing once it is back.

Loopback gives the addresses: 127.0.0.21-23 are on every Linux host (127.0.0.0/8 is local),
192.0.2.1 (TEST-NET-1) on none.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.engine import EngineProc, json_log_lines, message, metric_sum
from fixtures.procs import Proc, free_port, wait_until
from fixtures.smtppeers import RecordingMX, SmtpCall

from mailfleet.mta import socks5

MAILFLEET = str(Path(sys.executable).parent / "mailfleet")
A1, A2, B1 = "127.0.0.21", "127.0.0.22", "127.0.0.23"
ABSENT = "192.0.2.1"
POOL_A, POOL_B = "mail/pool-a", "mail/pool-b"
PASSWORDS = {POOL_A: "pool-a-password-0123456789", POOL_B: "pool-b-password-0123456789"}


def sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


class ProxyProc:
    """`mailfleet egress-proxy --config FILE` on `port` at every client address."""

    def __init__(self, workdir: Path, clients: list[dict[str, Any]], **extra: Any) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.admin_port = free_port()
        self.config_path = workdir / "proxy.yaml"
        self.config: dict[str, Any] = {
            "port": self.port,
            "adminListen": f"127.0.0.1:{self.admin_port}",
            "connectTimeout": "5s",
            # Short, so a test's teardown does not wait for an engine's pooled connections.
            "drainTimeout": "2s",
            **extra,
        }
        self.write(clients)
        self.proc: Proc | None = None
        self.runs = 0

    def write(self, clients: list[dict[str, Any]], **extra: Any) -> None:
        self.config = {**self.config, **extra, "clients": clients}
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.config))
        os.replace(tmp, self.config_path)

    def start(self, wait_ready: bool = True) -> ProxyProc:
        self.runs += 1
        self.proc = Proc(
            [MAILFLEET, "egress-proxy", "--config", str(self.config_path)],
            name=f"proxy-{self.runs}",
            log_dir=self.workdir,
        )
        wait_until(lambda: self._admin_up(), 15, what="the proxy's admin port")
        if wait_ready:
            wait_until(lambda: self.readyz()[0] == 200, 15, what="the proxy ready")
        return self

    def _admin_up(self) -> bool:
        assert self.proc is not None
        if not self.proc.running():
            raise RuntimeError(f"egress proxy exited {self.proc.popen.returncode}:\n{self.log()}")
        try:
            self.readyz()
        except OSError:
            return False
        return True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.url("/readyz"), timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as r:
            return metric_sum(r.read().decode(), name, **labels)

    def log(self) -> str:
        return self.proc.output() if self.proc else ""

    def log_lines(self) -> list[dict[str, Any]]:
        assert self.proc is not None and self.proc.stderr_path is not None
        return json_log_lines(self.proc.stderr_path)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.popen.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)


# Tests take this fixture before mta_engine: engines stop first, their pooled relays end with
# QUIT, and the proxy's drain has nothing to wait for.
@pytest.fixture
def egress_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProc]]:
    started: list[ProxyProc] = []

    def make(clients: list[dict[str, Any]], start: bool = True, **extra: Any) -> ProxyProc:
        proxy = ProxyProc(tmp_path / f"proxy{len(started)}", clients, **extra)
        started.append(proxy)
        if start:
            proxy.start()
        return proxy

    yield make
    for proxy in reversed(started):
        proxy.stop()


def client(name: str, addresses: list[str], ports: list[int], **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tokenSHA256": sha(PASSWORDS[name]),
        "addresses": addresses,
        "ports": ports,
        **kw,
    }


def auth_file(tmp_path: Path, user: str, password: str) -> str:
    path = tmp_path / f"egress-auth-{len(list(tmp_path.glob('egress-auth-*')))}"
    path.write_text(f"{user}:{password}\n")
    path.chmod(0o600)
    return str(path)


def engine_config(
    mx: RecordingMX, proxy: ProxyProc, sources: list[str], auth: str, **delivery: Any
) -> dict[str, Any]:
    return {
        "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
        "retry": {"initial": "300ms", "max": "1s", "jitter": 0},
        "delivery": {
            "sourceIPs": [
                {
                    "address": a,
                    "hostname": f"out{a.rsplit('.', 1)[1]}.mta.test",
                    "proxy": f"socks5://{a}:{proxy.port}",
                }
                for a in sources
            ],
            "egress": {"authFile": auth},
            **delivery,
        },
    }


def first_attempt_reply(eng: EngineProc) -> str:
    eng.wait_until(
        lambda: eng.metric("mailfleet_delivery_attempts_total", result="deferred") >= 1,
        what="a deferred attempt",
    )
    attempt = next(ln for ln in eng.log_lines() if ln.get("msg") == "delivery attempt")
    return str(attempt["reply"])


# --------------------------------------------------------------------------- delivery
def test_mail_leaves_from_each_address_the_engine_reaches_the_proxy_on(
    tmp_path: Path,
    egress_proxy: Callable[..., ProxyProc],
    mta_engine: Callable[..., EngineProc],
    mx: RecordingMX,
) -> None:
    proxy = egress_proxy([client(POOL_A, [A1, A2], [mx.port])])
    auth = auth_file(tmp_path, POOL_A, PASSWORDS[POOL_A])
    eng = mta_engine(engine_config(mx, proxy, [A1, A2], auth))
    for i in range(12):
        eng.send("app@example.test", [f"r{i}@example.org"], message(f"via proxy {i}"))
    got = mx.wait_for(12)
    assert {m.peer_ip for m in got} == {A1, A2}
    assert {m.helo for m in got} == {"out21.mta.test", "out22.mta.test"}
    for source in (A1, A2):
        relayed = proxy.metric(
            "mailfleet_egress_connections_total", source=source, client=POOL_A, result="relayed"
        )
        assert relayed >= 1
        sent = sum(1 for m in got if m.peer_ip == source)
        body = sum(len(m.content) for m in got if m.peer_ip == source)
        assert proxy.metric("mailfleet_egress_bytes_total", source=source, direction="out") > body
        assert proxy.metric("mailfleet_egress_bytes_total", source=source, direction="in") > 0
        assert sent >= 1
    assert proxy.metric("mailfleet_egress_connections_total", result="auth_failed") == 0
    # The password is in no log line of either side.
    assert PASSWORDS[POOL_A] not in proxy.log() + eng.log()


def test_a_wrong_password_is_a_deferral_naming_the_proxys_refusal(
    tmp_path: Path,
    egress_proxy: Callable[..., ProxyProc],
    mta_engine: Callable[..., EngineProc],
    mx: RecordingMX,
) -> None:
    proxy = egress_proxy([client(POOL_A, [A1], [mx.port])])
    auth = auth_file(tmp_path, POOL_A, "not-the-password")
    eng = mta_engine(engine_config(mx, proxy, [A1], auth) | {"retry": {"initial": "1h"}})
    eng.send("app@example.test", ["r@example.org"], message("wrong password"))
    reply = first_attempt_reply(eng)
    assert reply.startswith("451 4.4.1")
    assert f"SOCKS5 proxy socks5://{A1}:{proxy.port}: refused by the proxy" in reply
    assert "authentication failure" in reply
    assert mx.messages() == []
    wait_until(
        lambda: (
            proxy.metric(
                "mailfleet_egress_connections_total", source=A1, client=POOL_A, result="auth_failed"
            )
            >= 1
        ),
        10,
        what="auth_failed counted",
    )
    assert "not-the-password" not in proxy.log()


def test_another_pools_address_is_not_allowed(
    tmp_path: Path,
    egress_proxy: Callable[..., ProxyProc],
    mta_engine: Callable[..., EngineProc],
    mx: RecordingMX,
) -> None:
    proxy = egress_proxy([client(POOL_A, [A1], [mx.port]), client(POOL_B, [B1], [mx.port])])
    # Pool A's credentials, reaching the proxy on pool B's address.
    auth = auth_file(tmp_path, POOL_A, PASSWORDS[POOL_A])
    eng = mta_engine(engine_config(mx, proxy, [B1], auth) | {"retry": {"initial": "1h"}})
    eng.send("app@example.test", ["r@example.org"], message("not mine"))
    reply = first_attempt_reply(eng)
    assert "refused by the proxy: Connection not allowed by ruleset (reply 0x02)" in reply
    assert mx.messages() == []
    assert (
        proxy.metric(
            "mailfleet_egress_connections_total", source=B1, client=POOL_A, result="not_allowed"
        )
        >= 1
    )
    refusal = next(ln for ln in proxy.log_lines() if ln.get("result") == "not_allowed")
    assert refusal["reason"] == f"{POOL_A} may not send from {B1} (not one of its addresses)"


def test_a_port_not_allowed_and_a_closed_port(
    tmp_path: Path,
    egress_proxy: Callable[..., ProxyProc],
    mta_engine: Callable[..., EngineProc],
    mx: RecordingMX,
) -> None:
    unlisted, closed = free_port(), free_port()
    proxy = egress_proxy([client(POOL_A, [A1], [mx.port, closed])])
    auth = auth_file(tmp_path, POOL_A, PASSWORDS[POOL_A])
    config = engine_config(mx, proxy, [A1], auth) | {"retry": {"initial": "1h"}}
    config["routing"]["routes"] = {
        "unlisted.test": f"127.0.0.1:{unlisted}",
        "closed.test": f"127.0.0.1:{closed}",
        "*": f"{mx.host}:{mx.port}",
    }
    eng = mta_engine(config)
    eng.send("app@example.test", ["r@unlisted.test"], message("unlisted port"))
    eng.send("app@example.test", ["r@closed.test"], message("closed port"))
    eng.send("app@example.test", ["r@example.org"], message("fine"))
    mx.wait_for(1)
    eng.wait_until(
        lambda: eng.metric("mailfleet_delivery_attempts_total", result="deferred") >= 2,
        what="two deferred attempts",
    )
    attempts = [ln for ln in eng.log_lines() if ln.get("msg") == "delivery attempt"]
    by_domain = {ln["recipient_domain"]: ln["reply"] for ln in attempts}
    assert "Connection not allowed by ruleset (reply 0x02)" in by_domain["unlisted.test"]
    assert "Connection refused by destination host (reply 0x05)" in by_domain["closed.test"]
    m = proxy.metric
    assert m("mailfleet_egress_connections_total", client=POOL_A, result="not_allowed") == 1
    assert m("mailfleet_egress_connections_total", client=POOL_A, result="refused") == 1
    assert m("mailfleet_egress_connections_total", client=POOL_A, result="relayed") == 1
    reasons = [ln["reason"] for ln in proxy.log_lines() if ln.get("result") == "not_allowed"]
    assert reasons == [f"{POOL_A} may not connect to port {unlisted} (only {mx.port}, {closed})"]


# --------------------------------------------------------------------------- readiness, reload
def test_readiness_follows_the_addresses_and_their_listeners(
    egress_proxy: Callable[..., ProxyProc],
) -> None:
    proxy = egress_proxy([client(POOL_A, [A1, ABSENT], [25])], start=False).start(False)
    wait_until(lambda: proxy.readyz()[0] == 503, 10, what="not ready")
    _, body = proxy.readyz()
    assert body["missing"] == [ABSENT] and "not on this host" in body["reason"]
    assert proxy.metric("mailfleet_egress_address_present", source=ABSENT) == 0
    assert proxy.metric("mailfleet_egress_address_present", source=A1) == 1

    # Another process holds the port on A2: listed, on the host, but not listened on.
    blocker = socket.socket()
    blocker.bind((A2, proxy.port))
    blocker.listen()
    try:
        proxy.write([client(POOL_A, [A1, A2], [25])])
        wait_until(
            lambda: proxy.readyz()[1]["missing"] == [A2], 10, what="A2 missing, 192.0.2.1 gone"
        )
        assert "cannot listen" in proxy.readyz()[1]["reason"]
        assert proxy.metric("mailfleet_egress_address_present", source=A2) == 0
    finally:
        blocker.close()
    # Once the port is free the next check listens there.
    wait_until(lambda: proxy.readyz()[0] == 200, 10, what="ready once A2 is listened on")
    assert proxy.readyz()[1] == {"ready": True, "reason": "ready", "missing": []}
    assert proxy.metric("mailfleet_egress_address_present", source=A2) == 1
    with urllib.request.urlopen(proxy.url("/livez"), timeout=5) as r:
        assert r.status == 200


def test_a_reload_adds_an_address_and_a_bad_config_keeps_the_running_one(
    tmp_path: Path,
    egress_proxy: Callable[..., ProxyProc],
    mta_engine: Callable[..., EngineProc],
    mx: RecordingMX,
) -> None:
    proxy = egress_proxy([client(POOL_A, [A1], [mx.port])])
    auth = auth_file(tmp_path, POOL_A, PASSWORDS[POOL_A])
    # The engine sends from A2 only, which the proxy does not serve yet.
    eng = mta_engine(engine_config(mx, proxy, [A2], auth))
    eng.send("app@example.test", ["r@example.org"], message("waits for A2"))
    eng.wait_until(
        lambda: eng.metric("mailfleet_delivery_attempts_total", result="deferred") >= 1,
        what="a deferral while A2 is not served",
    )
    started = proxy.proc.pid if proxy.proc else 0
    proxy.write([client(POOL_A, [A1, A2], [mx.port])])
    got = mx.wait_for(1, timeout=15)
    assert got[0].peer_ip == A2
    assert proxy.proc is not None and proxy.proc.pid == started and proxy.proc.running()
    assert proxy.metric("mailfleet_egress_config_reloads_total", result="ok") == 1

    # A config that does not validate: logged, counted, the running one kept (SIGHUP too).
    proxy.config_path.write_text("clients: [{name: x}]\n")
    proxy.signal(signal.SIGHUP)
    wait_until(
        lambda: proxy.metric("mailfleet_egress_config_reloads_total", result="failed") >= 1,
        10,
        what="a refused reload",
    )
    refused = next(
        ln for ln in proxy.log_lines() if ln.get("msg", "").startswith("config reload r")
    )
    assert "clients.0.tokenSHA256: field required" in refused["error"]
    eng.send("app@example.test", ["r2@example.org"], message("still served"))
    assert mx.wait_for(2, timeout=15)[1].peer_ip == A2
    assert proxy.readyz()[0] == 200


# --------------------------------------------------------------------------- stopping
def test_sigterm_waits_for_a_relay_in_progress_then_exits_0(
    tmp_path: Path,
    egress_proxy: Callable[..., ProxyProc],
    mta_engine: Callable[..., EngineProc],
    mx: RecordingMX,
) -> None:
    proxy = egress_proxy([client(POOL_A, [A1], [mx.port])], drainTimeout="15s")
    auth = auth_file(tmp_path, POOL_A, PASSWORDS[POOL_A])
    # One message per connection: the engine ends its session (QUIT) once the message is sent.
    eng = mta_engine(engine_config(mx, proxy, [A1], auth, maxMessagesPerConnection=1))
    in_data = threading.Event()

    def slow_data(call: SmtpCall) -> str | None:
        in_data.set()
        time.sleep(2.0)  # a slow MX: the relay is busy while the proxy is told to stop
        return None

    mx.on_data = slow_data
    eng.send("app@example.test", ["r@example.org"], message("slow"))
    assert in_data.wait(15)
    assert proxy.metric("mailfleet_egress_active_connections", source=A1) == 1
    t0 = time.monotonic()
    proxy.signal(signal.SIGTERM)
    assert proxy.wait_exit(15) == 0
    took = time.monotonic() - t0
    assert 1.0 < took < 10, took  # waited for the relay, not for drainTimeout
    assert len(mx.messages()) == 1
    eng.wait_until(
        lambda: eng.metric("mailfleet_delivery_attempts_total", result="delivered") == 1,
        what="delivered through the draining proxy",
    )
    assert eng.metric("mailfleet_delivery_attempts_total", result="deferred") == 0
    stopped = next(ln for ln in proxy.log_lines() if ln.get("msg") == "stopped")
    assert stopped["relays_cut"] == 0


def test_a_relay_still_open_at_drain_timeout_is_cut(
    tmp_path: Path,
    egress_proxy: Callable[..., ProxyProc],
    mta_engine: Callable[..., EngineProc],
    mx: RecordingMX,
) -> None:
    proxy = egress_proxy([client(POOL_A, [A1], [mx.port])], drainTimeout="1s")
    auth = auth_file(tmp_path, POOL_A, PASSWORDS[POOL_A])
    # The engine keeps its connection in its pool for a minute after the message.
    eng = mta_engine(engine_config(mx, proxy, [A1], auth, idleTimeout="60s"))
    eng.send("app@example.test", ["r@example.org"], message("pooled"))
    mx.wait_for(1)
    assert proxy.metric("mailfleet_egress_active_connections", source=A1) == 1
    t0 = time.monotonic()
    proxy.signal(signal.SIGTERM)
    assert proxy.wait_exit(10) == 0
    assert 0.8 < time.monotonic() - t0 < 5
    stopped = next(ln for ln in proxy.log_lines() if ln.get("msg") == "stopped")
    assert stopped["relays_cut"] == 1


def test_a_proxy_killed_under_load_loses_nothing_once_it_is_back(
    tmp_path: Path,
    egress_proxy: Callable[..., ProxyProc],
    mta_engine: Callable[..., EngineProc],
    mx: RecordingMX,
) -> None:
    proxy = egress_proxy([client(POOL_A, [A1, A2], [mx.port])])
    auth = auth_file(tmp_path, POOL_A, PASSWORDS[POOL_A])
    eng = mta_engine(engine_config(mx, proxy, [A1, A2], auth, maxMessagesPerConnection=5))
    total = 80
    subjects = [f"load {i}" for i in range(total)]
    errors: list[BaseException] = []

    def send_all() -> None:
        try:
            for i, subject in enumerate(subjects):
                eng.send("app@example.test", [f"r{i}@example.org"], message(subject))
        except BaseException as e:  # reported by the test below
            errors.append(e)

    sender = threading.Thread(target=send_all)
    sender.start()
    mx.wait_for(10, timeout=20)
    assert proxy.proc is not None
    os.kill(proxy.proc.pid, signal.SIGKILL)
    proxy.wait_exit(5)
    eng.wait_until(
        lambda: eng.metric("mailfleet_delivery_attempts_total", result="deferred") >= 1,
        what="deferrals while the proxy is down",
    )
    before = len(mx.messages())
    proxy.start()
    sender.join(60)
    assert not errors, errors
    eng.wait_queue_empty(timeout=30)
    got = mx.messages()
    assert before < total
    # Every accepted message delivered; one cut after its DATA may arrive twice (RFC 5321 §6.1).
    assert {m.content.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for m in got} == set(
        subjects
    )
    assert eng.metric("mailfleet_messages_received_total") == total
    assert {m.peer_ip for m in got} == {A1, A2}


# --------------------------------------------------------------------------- --check
def test_check_names_a_bad_proxy_config_and_a_missing_auth_file(tmp_path: Path) -> None:
    good = tmp_path / "proxy.yaml"
    good.write_text(yaml.safe_dump({"clients": [client(POOL_A, [A1], [25])]}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"clients": [client(POOL_A, [A1], [25]), client(POOL_B, [A1], [25])]})
    )
    ok = subprocess.run(
        [MAILFLEET, "egress-proxy", "--config", str(good), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{good}: ok")
    refused = subprocess.run(
        [MAILFLEET, "egress-proxy", "--config", str(bad), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert "clients[1].addresses: 127.0.0.21 is also clients[0]'s" in refused.stderr

    engine = tmp_path / "engine.yaml"
    missing = tmp_path / "no-such-auth"
    engine.write_text(
        yaml.safe_dump(
            {
                "spool": {"path": str(tmp_path / "spool")},
                "delivery": {"egress": {"authFile": str(missing)}},
            }
        )
    )
    mta = subprocess.run(
        [MAILFLEET, "mta", "--config", str(engine), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mta.returncode == 2
    assert f"delivery.egress.authFile {missing}: cannot read it" in mta.stderr


# --------------------------------------------------------------------------- a raw client
def socks_connect(
    source: str, port: int, user: str, password: str, dest: tuple[str, int]
) -> tuple[socket.socket, int]:
    """A SOCKS5 CONNECT by hand: (the socket, the reply code)."""
    s = socket.create_connection((source, port), timeout=5)
    s.sendall(socks5.encode_greeting(b"\x02"))
    assert s.recv(2) == b"\x05\x02"
    s.sendall(socks5.encode_auth(user.encode(), password.encode()))
    assert s.recv(2) == b"\x01\x00"
    s.sendall(socks5.encode_request(ipaddress.ip_address(dest[0]), dest[1]))
    reply = recv_exactly(s, 10)
    return s, reply[1]


def recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_connection_limits_and_refusals_a_raw_client_sees(
    egress_proxy: Callable[..., ProxyProc], mx: RecordingMX
) -> None:
    proxy = egress_proxy(
        [client(POOL_A, [A1], [mx.port], maxConnections=1), client(POOL_B, [B1], [mx.port])],
        maxConnections=3,
    )
    dest = (mx.host, mx.port)
    first, code = socks_connect(A1, proxy.port, POOL_A, PASSWORDS[POOL_A], dest)
    assert code == 0 and first.recv(3) == b"220"  # the MX's banner, relayed
    # Pool A holds its one connection: the next is answered 0x01 and counted.
    second, code = socks_connect(A1, proxy.port, POOL_A, PASSWORDS[POOL_A], dest)
    assert code == socks5.Reply.GENERAL_FAILURE
    second.close()
    assert proxy.metric("mailfleet_egress_connections_total", client=POOL_A, result="limit") == 1
    # Pool B has its own limit; the proxy's three are used by A's relay and B's two.
    b1, code = socks_connect(B1, proxy.port, POOL_B, PASSWORDS[POOL_B], dest)
    assert code == 0
    b2, code = socks_connect(B1, proxy.port, POOL_B, PASSWORDS[POOL_B], dest)
    assert code == 0
    b3, code = socks_connect(B1, proxy.port, POOL_B, PASSWORDS[POOL_B], dest)
    assert code == socks5.Reply.GENERAL_FAILURE
    for s in (b1, b2, b3):
        s.close()
    first.close()
    wait_until(
        lambda: proxy.metric("mailfleet_egress_active_connections") == 0, 10, what="relays ended"
    )
    again, code = socks_connect(A1, proxy.port, POOL_A, PASSWORDS[POOL_A], dest)
    assert code == 0
    again.close()

    # No username/password offered: 0xFF. A domain name: 0x08. Not SOCKS5: closed unanswered.
    with socket.create_connection((A1, proxy.port), timeout=5) as s:
        s.sendall(socks5.encode_greeting(b"\x00"))
        assert s.recv(2) == b"\x05\xff" and s.recv(1) == b""
    with socket.create_connection((A1, proxy.port), timeout=5) as s:
        s.sendall(socks5.encode_greeting(b"\x02"))
        s.sendall(socks5.encode_auth(POOL_A.encode(), PASSWORDS[POOL_A].encode()))
        s.sendall(b"\x05\x01\x00\x03\x0emx.example.org\x00\x19")
        assert recv_exactly(s, 4 + 10)[4:6] == b"\x05\x08"
    with socket.create_connection((A1, proxy.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert s.recv(16) == b""
    wait_until(
        lambda: proxy.metric("mailfleet_egress_connections_total", result="bad_request") == 2,
        10,
        what="two bad requests counted",
    )
    assert proxy.metric("mailfleet_egress_connections_total", result="auth_failed") == 1


def test_a_relay_silent_both_ways_for_idle_timeout_is_closed(
    egress_proxy: Callable[..., ProxyProc], mx: RecordingMX
) -> None:
    proxy = egress_proxy([client(POOL_A, [A1], [mx.port])], idleTimeout="1s")
    s, code = socks_connect(A1, proxy.port, POOL_A, PASSWORDS[POOL_A], (mx.host, mx.port))
    assert code == 0
    with s:
        s.settimeout(10)
        assert s.recv(1024).startswith(b"220")
        t0 = time.monotonic()
        s.sendall(b"NOOP\r\n")  # activity: the second of silence counts from here
        assert s.recv(1024).startswith(b"250")
        assert s.recv(1024) == b""  # closed by the proxy, not by the MX
        assert 0.8 < time.monotonic() - t0 < 4
    closed = next(ln for ln in proxy.log_lines() if ln.get("msg") == "relay idle; closed")
    assert closed["client"] == POOL_A
    assert proxy.metric("mailfleet_egress_active_connections", source=A1) == 0
