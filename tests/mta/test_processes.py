"""`mailfleet mta --processes 2` with real engine processes and real peers: one submission port,
every message delivered, the admin API answering for both processes, a worker killed with -9
restarted with nothing lost, a smaller N adopting the spools of a larger one, and a per-IP rate
that two processes together keep to (the ISP simulator counts per source IP).

Figures (`pytest -s`): `processes: limit L/min, observed max M in a 60 s window`.
"""

from __future__ import annotations

import os
import signal
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixtures.dnsserver import DnsServer
from fixtures.engine import EngineProc, message
from fixtures.isp import IspSimulator, max_in_window
from fixtures.procs import free_port, pid_alive
from fixtures.smtppeers import RecordingMX
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "processes-test-token-0123456789"


@pytest.fixture
def isp() -> Iterator[IspSimulator]:
    with IspSimulator(["gmail"]) as sim:
        sim["gmail"].set_limit(None)  # the simulator only counts; the limit is ours
        yield sim


def _config(route: str, tmp_path: Path) -> dict[str, object]:
    token = tmp_path / "admin-token"
    token.write_text(TOKEN)
    return {
        "routing": {"routes": {"*": route}},
        "retry": {"initial": "500ms", "max": "1s", "maxAge": "1h", "jitter": 0},
        "admin": {"tokenFile": str(token)},
    }


def _two(mta_engine: Callable[..., EngineProc], cfg: dict[str, object]) -> EngineProc:
    eng = mta_engine(cfg, start=False)
    eng.args = ["--processes", "2"]
    eng.admin_token = TOKEN
    return eng.start()


def _send_each_on_its_own_connection(eng: EngineProc, n: int, tag: str) -> None:
    # SO_REUSEPORT spreads connections, not messages, over the processes.
    for i in range(n):
        eng.send("app@example.test", [f"user{i}@example.org"], message(f"{tag} {i}"))


def _received_by_process(eng: EngineProc) -> dict[str, float]:
    families = {f.name: f for f in text_string_to_metric_families(eng.metrics_text())}
    return {
        s.labels["process"]: s.value
        for s in families["mailfleet_messages_received"].samples
        if s.name.endswith("_total")
    }


def test_two_processes_share_a_port_deliver_everything_and_answer_as_one(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, tmp_path: Path
) -> None:
    eng = _two(mta_engine, _config(f"{mx.host}:{mx.port}", tmp_path))
    _send_each_on_its_own_connection(eng, 24, "shared port")
    mx.wait_for(24, timeout=60)
    eng.wait_queue_empty()
    assert sorted(m.rcpt_tos[0] for m in mx.messages()) == sorted(
        f"user{i}@example.org" for i in range(24)
    )
    status = eng.status()
    assert status["processes"] == 2
    assert status["ready"] is True
    assert [w["ready"] for w in status["workers"]] == [True, True]
    received = _received_by_process(eng)
    assert sum(received.values()) == 24
    assert set(received) == {"0", "1"}
    assert all(v > 0 for v in received.values())  # the kernel spread the 24 connections
    # Each worker has its own spool below spool.path.
    spool = Path(str(eng.config["spool"]["path"]))  # type: ignore[index]
    assert (spool / "0" / "spool.db").exists() and (spool / "1" / "spool.db").exists()

    # State-changing calls need the token, as on one engine, and reach both processes.
    assert "error" in eng.post("/v1/drain", token="wrong-token-wrong-token")
    assert eng.get("/readyz")["ready"] is True
    drained = eng.post("/v1/drain")
    assert drained["draining"] is True and drained["empty"] is True
    assert eng.get("/readyz")["ready"] is False
    assert [w["reason"] for w in eng.status()["workers"]] == ["draining", "draining"]
    with pytest.raises((smtplib.SMTPException, OSError)):
        eng.send("app@example.test", ["late@example.org"], message("after drain"))
    # A worker that dies while the pod drains comes back draining.
    os.kill(eng.status()["workers"][0]["pid"], signal.SIGKILL)
    eng.wait_until(
        lambda: (w := eng.status()["workers"][0])["restarts"] == 1 and w["reason"] == "draining",
        what="worker 0 back, draining",
    )
    assert eng.get("/readyz")["ready"] is False
    assert eng.post("/v1/undrain")["draining"] is False
    eng.wait_ready()


def test_a_killed_worker_is_restarted_and_delivers_its_spool(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: everything waits in the spools
    eng = _two(mta_engine, _config(dead, tmp_path))
    _send_each_on_its_own_connection(eng, 16, "killed")
    queued = eng.status()["queue"]["messages"]
    assert queued == 16
    victim = eng.status()["workers"][1]
    os.kill(victim["pid"], signal.SIGKILL)
    eng.wait_until(
        lambda: (w := eng.status()["workers"][1])["restarts"] == 1 and w["ready"],
        what="worker 1 restarted",
    )
    assert not pid_alive(victim["pid"])
    assert eng.status()["queue"]["messages"] == 16
    # The route to the MX, by SIGHUP to the supervisor (passed on to both workers).
    eng.config["routing"] = {"routes": {"*": f"{mx.host}:{mx.port}"}}
    eng.write_config(eng.config)
    assert eng.proc is not None
    os.kill(eng.proc.pid, signal.SIGHUP)
    mx.wait_for(16, timeout=60)
    eng.wait_queue_empty()
    assert len({m.rcpt_tos[0] for m in mx.messages()}) == 16


def test_one_process_adopts_the_spools_of_two(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    eng = _two(mta_engine, _config(dead, tmp_path))
    _send_each_on_its_own_connection(eng, 12, "stranded")
    workers_queue = eng.status()["queue"]["messages"]
    assert workers_queue == 12
    eng.stop()

    eng.config["routing"] = {"routes": {"*": f"{mx.host}:{mx.port}"}}
    eng.write_config(eng.config)
    eng.args = []  # the pod's CPU request shrank to one core
    eng.start()
    mx.wait_for(12, timeout=60)
    eng.wait_queue_empty()
    assert len({m.rcpt_tos[0] for m in mx.messages()}) == 12
    spool = Path(str(eng.config["spool"]["path"]))  # type: ignore[index]
    assert not (spool / "0" / "spool.db").exists()
    assert not (spool / "1" / "spool.db").exists()
    assert "processes" not in eng.status()  # one engine, as before


LIMIT = 60  # messages a minute per (source IP, gmail): the per-IP rate the engine is given
IP = "127.0.0.2"


def test_two_processes_keep_to_one_per_ip_rate(
    mta_engine: Callable[..., EngineProc], isp: IspSimulator, dns: DnsServer, tmp_path: Path
) -> None:
    cfg = isp.engine_config(
        dns,
        [IP],
        {"gmail": {"perIP": {"maxMessageRate": f"{LIMIT}/min", "maxConnections": 4}}},
    )
    eng = mta_engine(cfg, start=False)
    eng.args = ["--processes", "2"]
    eng.start()
    for i in range(30):
        r = isp.rcpt("gmail", f"rate{i}")
        eng.send("app@example.test", [r], message(f"rate {i}", to=r))
    gmail = isp["gmail"]
    gmail.wait(lambda: gmail.count(IP) > 0, timeout=30, what="first delivery")
    time.sleep(20)
    times = [a.at for a in gmail.accepted(IP)]
    # Unsplit, two processes would send twice the rate: 40 in 20 s. Split, 20 plus a bucket's
    # message per process.
    observed = max_in_window(times, 20.0)
    print(f"processes: limit {LIMIT}/min, observed max {observed} in a 20 s window")
    assert observed <= LIMIT * 20 // 60 + 2
    assert eng.status()["queue"]["messages"] > 0


def test_an_ip_moving_in_brings_its_warmup_count_to_the_pod_not_to_each_process(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, tmp_path: Path
) -> None:
    cfg = _config(f"{mx.host}:{mx.port}", tmp_path)
    cfg["delivery"] = {"sourceIPs": [{"address": "127.0.0.2"}]}
    cfg["shaping"] = {
        "warmup": [{"address": "127.0.0.2", "provider": "*", "day": 3, "dailyCap": 100}]
    }
    eng = _two(mta_engine, cfg)
    (row,) = eng.status()["warmup"]
    assert (row["sent"], row["cap"]) == (0, 100)  # 50 + 50: the cap is split, not doubled
    answer = eng.post(
        "/v1/shaping/adopt", {"warmup": [{"ip": "127.0.0.2", "provider": "*", "sent": 31}]}
    )
    assert answer["adopted"] == 2  # one row in each process
    (row,) = eng.status()["warmup"]
    assert (row["sent"], row["cap"]) == (31, 100)
    # Back to one process: the counts of both spools come along, the cap still holds.
    eng.stop()
    eng.args = []
    eng.start()
    (row,) = eng.status()["warmup"]
    assert (row["sent"], row["cap"]) == (31, 100)


def test_two_processes_adopt_the_spool_of_one(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    eng = mta_engine(_config(dead, tmp_path))
    eng.admin_token = TOKEN
    _send_each_on_its_own_connection(eng, 8, "grown")
    assert eng.status()["queue"]["messages"] == 8
    eng.stop()

    eng.config["routing"] = {"routes": {"*": f"{mx.host}:{mx.port}"}}
    eng.write_config(eng.config)
    eng.args = ["--processes", "2"]  # the pod's CPU request grew to two cores
    eng.start()
    mx.wait_for(8, timeout=60)
    eng.wait_queue_empty()
    assert len({m.rcpt_tos[0] for m in mx.messages()}) == 8
    spool = Path(str(eng.config["spool"]["path"]))  # type: ignore[index]
    assert not (spool / "spool.db").exists()
