"""Process helpers stop what they start, by PID, and Redis answers on its port."""

from __future__ import annotations

import socket
import time

import pytest
from fixtures.peers import ProcessRegistry, RedisServer, free_port
from fixtures.procs import Proc, pid_alive, port_accepts, stop_pid


def test_free_port_is_bindable_for_tcp_and_udp() -> None:
    port = free_port("127.0.0.1", udp=True)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))


def test_a_process_ignoring_sigterm_is_killed(tmp_path: object) -> None:
    proc = Proc(["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"], name="stubborn")
    time.sleep(0.2)  # let the shell install its trap
    start = time.monotonic()
    proc.stop(timeout=0.5)
    assert not proc.running()
    assert proc.popen.returncode == -9
    assert time.monotonic() - start < 10


def test_wait_port_reports_a_process_that_died() -> None:
    proc = Proc(["sh", "-c", "echo broken config >&2; exit 3"], name="dies")
    with pytest.raises(RuntimeError, match="exited with 3"):
        proc.wait_port("127.0.0.1", free_port(), timeout=5)


def test_registry_stops_everything_it_started(tmp_path: object) -> None:
    registry = ProcessRegistry()
    port = free_port()
    server = registry.spawn(
        ["python3", "-m", "http.server", "--bind", "127.0.0.1", str(port)], name="http"
    )
    sleeper = registry.spawn(["sleep", "300"])
    server.wait_port("127.0.0.1", port)
    daemon = Proc(["sleep", "300"])  # stands in for a daemon known only by its PID
    registry.add_pid(daemon.pid)
    registry.stop_all()
    daemon.popen.wait(5)  # reap our stand-in so its PID really disappears
    assert not server.running() and not sleeper.running()
    assert not pid_alive(daemon.pid)
    assert not port_accepts("127.0.0.1", port)


def test_stop_pid_of_a_gone_process_is_harmless() -> None:
    proc = Proc(["true"])
    proc.popen.wait(5)
    stop_pid(proc.pid, timeout=0.5)


def test_redis_answers_and_stores(redis_server: RedisServer) -> None:
    assert redis_server.command("PING") == b"+PONG\r\n"
    assert redis_server.command("SET", "peers:k", "v") == b"+OK\r\n"
    assert redis_server.command("GET", "peers:k") == b"$1\r\nv\r\n"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


def test_redis_has_no_persistence(redis_server: RedisServer) -> None:
    assert redis_server.command("CONFIG", "GET", "save").endswith(b"$0\r\n\r\n")
    assert b"no" in redis_server.command("CONFIG", "GET", "appendonly")


def test_redis_stops_by_pid() -> None:
    with RedisServer() as server:
        pid = server.pid
        assert pid is not None
    assert not pid_alive(pid)
    assert not port_accepts("127.0.0.1", server.port)
