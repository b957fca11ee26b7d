"""The operator's CPU per running pod for its status poll (every 5 s, POD_POLL_SECONDS).

    python -m bench.operator_poll [--pools 1000] [--pods-per-pool 2] [--engines 3] [--rounds 5]

The operator's own poll path, in this process: `Operator.poll_pool` for every pool in batches of
POD_POLL_CONCURRENCY, as its poll loop does (podpoll.ask through engine_admin.EngineAdmin over
HTTP, podpoll.decide, the status merge and the drift check; status writes go to an in-memory API,
and a re-render the poll asks for is counted, not run: bench.operator measures the reconcile).

The pods answering are real: `--engines` real engines (`mailfleet mta`, about 70 MB each), and for
the rest a stand-in: one aiohttp process that replays engine 0's /v1/status answer, recorded once,
on one loopback address per pod (127.79.x.y; the real engines on 127.78.0.x), all on the same
admin port as pods have. The stand-in runs in a process of its own, so `time.process_time()` here
is the operator's CPU alone; the wall time per round includes the stand-in's share of the cores.

Prints `operator poll: N pods, C ms CPU per pod per poll, one core polls P pods every 5 s` and a
line saying what answered. Everything it started is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from bench.operator import operator_command, pool_manifest, stop_process

POLL_SECONDS = 5.0
ENGINE_NET = "127.78.0.{}"
NAMESPACE = "bench"


def standin_ip(i: int) -> str:
    return f"127.79.{i // 250}.{i % 250 + 1}"


def common_free_port(hosts: list[str]) -> int:
    """A port free on every one of `hosts` (pods share the admin port, as in a cluster)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        ok = True
        for h in hosts[1:]:
            with socket.socket() as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no port free on every pod address")


# --------------------------------------------------------------------------- the stand-in


async def _serve(port: int, answer: bytes, count: int) -> None:
    from aiohttp import web

    async def status(_: web.Request) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for i in range(count):
        await web.TCPSite(runner, standin_ip(i), port, backlog=64).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


@contextlib.contextmanager
def standin(port: int, answer: bytes, count: int, workdir: Path) -> Iterator[None]:
    path = workdir / "status.json"
    path.write_bytes(answer)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.operator_poll", "--serve", str(port), "--answer", str(path),
         "--pods", str(count)],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the stand-in did not start (exit {proc.wait(10)})")
        yield
    finally:
        stop_process(proc)


# --------------------------------------------------------------------------- real engines


@contextlib.contextmanager
def engines(count: int, port: int, workdir: Path) -> Iterator[list[str]]:
    """`count` real engines, admin on ENGINE_NET.i:port; their addresses once ready."""
    procs: list[subprocess.Popen[bytes]] = []
    hosts = [ENGINE_NET.format(i + 1) for i in range(count)]
    try:
        for i, host in enumerate(hosts):
            d = workdir / f"engine-{i}"
            d.mkdir()
            with socket.socket() as s:
                s.bind((host, 0))
                smtp = s.getsockname()[1]
            config = {
                "hostname": f"mta{i}.bench.test",
                "submission": {"listen": f"{host}:{smtp}"},
                "admin": {"listen": f"{host}:{port}"},
                "spool": {"path": str(d / "spool")},
                "logging": {"level": "warning", "format": "json"},
            }
            (d / "engine.yaml").write_text(yaml.safe_dump(config))
            with (d / "engine.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [*operator_command(), "mta", "--config", str(d / "engine.yaml"),
                         "--processes", "1"],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )  # fmt: skip
        for host, proc in zip(hosts, procs, strict=True):
            _wait_ready(host, port, proc)
        yield hosts
    finally:
        for proc in procs:
            stop_process(proc)


def _wait_ready(host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"engine on {host} exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=2) as rsp:
                if json.load(rsp).get("ready"):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"engine on {host} not ready")


def record_status(host: str, port: int) -> bytes:
    with urllib.request.urlopen(f"http://{host}:{port}/v1/status", timeout=5) as rsp:
        return bytes(rsp.read())


# --------------------------------------------------------------------------- the operator side


class StatusOnlyApi:
    """The API server for status writes: each one counted, resourceVersions move."""

    def __init__(self) -> None:
        self.writes = 0

    async def get(self, res: Any, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def apply(self, res: Any, obj: Mapping[str, Any]) -> dict[str, Any]:
        return dict(obj)

    async def create(self, res: Any, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        return dict(obj)

    async def patch_status(
        self, res: Any, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        self.writes += 1
        meta = {"namespace": namespace, "name": name, "resourceVersion": str(1000 + self.writes)}
        return {"metadata": meta, "status": dict(status)}


async def poll_rounds(
    pools: int, per_pool: int, real: list[str], port: int, config_hash: str | None, rounds: int
) -> dict[str, Any]:
    from mailfleet.operator.clients.engine_admin import EngineAdmin
    from mailfleet.operator.decide import pods
    from mailfleet.operator.loops.reconciler import POD_POLL_CONCURRENCY, Indexes, Operator

    class PollOnly(Operator):
        """The Operator with the re-renders a poll asks for counted instead of run."""

        rerenders = 0

        def spawn(self, work: Coroutine[Any, Any, None], pool: Any = None) -> None:
            work.close()
            self.rerenders += 1

    api, admin = StatusOnlyApi(), EngineAdmin(port=port)
    op = PollOnly(api, lambda *_: None, engines=admin, image="bench")
    bodies: dict[tuple[str, str], list[dict[str, Any]]] = {}
    refs: dict[tuple[str, str], list[pods.PodRef]] = {}
    tokens: dict[tuple[str, str], list[str]] = {}
    n = 0
    for i in range(pools):
        body = pool_manifest(i, NAMESPACE)
        body["metadata"].update(uid=f"uid-{i}", resourceVersion="1", generation=1)
        key = (NAMESPACE, body["metadata"]["name"])
        bodies[key] = [body]
        refs[key] = []
        for j in range(per_pool):
            ip = real[n] if n < len(real) else standin_ip(n - len(real))
            refs[key].append(pods.PodRef(f"{key[1]}-{j}", ip, True))
            n += 1
        if all(r.ip not in real for r in refs[key]):
            tokens[key] = ["t" * 64]  # the real engines' configs differ: no pushes to them
        if config_hash is not None:
            op.memory.pool(key).config = (config_hash, "")
    idx = op.use(
        Indexes(
            pools=bodies, policies={}, warmups={}, secrets={}, statefulsets={},
            admin_tokens=tokens, pods=refs,
        )
    )  # fmt: skip

    async def one_round() -> None:
        keys = [k for k in sorted(idx.pods) if k in idx.pools and idx.pods.get(k)]
        for i in range(0, len(keys), POD_POLL_CONCURRENCY):
            batch = keys[i : i + POD_POLL_CONCURRENCY]
            await asyncio.gather(*(op.guarded("SendingPool", op.poll_pool(idx, *k)) for k in batch))

    try:
        for _ in range(2):  # the first writes every status; the second is steady
            await one_round()
        writes, rerenders = api.writes, op.rerenders
        cpu, wall = [], []
        for _ in range(rounds):
            c0, w0 = time.process_time(), time.perf_counter()
            await one_round()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        answered = sum(
            1
            for k in refs
            for pod in (op.memory.pools[k].pod_status or {}).get("pods", [])
            if "draining" in pod  # set for every pod that answered
        )
    finally:
        await admin.close()
        await op.close()
    return {
        "pods": n,
        "pools": pools,
        "cpu_s": sorted(cpu)[len(cpu) // 2],
        "wall_s": sorted(wall)[len(wall) // 2],
        "steady_writes": api.writes - writes,
        "steady_rerenders": op.rerenders - rerenders,
        "pods_answered": answered,
    }


def measure(
    pools: int = 1000, per_pool: int = 2, real_engines: int = 3, rounds: int = 5
) -> dict[str, Any]:
    pods_total = pools * per_pool
    real_engines = min(real_engines, pods_total)
    standins = pods_total - real_engines
    hosts = [ENGINE_NET.format(i + 1) for i in range(real_engines)]
    hosts += [standin_ip(i) for i in range(standins)]
    port = common_free_port(hosts)
    with tempfile.TemporaryDirectory(prefix="mailfleet-bench-poll-") as tmp:
        work = Path(tmp)
        with engines(real_engines, port, work) as real:
            answer = record_status(real[0], port) if real else b"{}"
            config_hash = json.loads(answer).get("configHash") if real else None
            with standin(port, answer, standins, work) if standins else contextlib.nullcontext():
                r = asyncio.run(poll_rounds(pools, per_pool, real, port, config_hash, rounds))
    r.update(real_engines=real_engines, standins=standins, answer_bytes=len(answer))
    return r


def lines(r: dict[str, Any]) -> list[str]:
    per_pod_ms = 1000 * r["cpu_s"] / max(r["pods"], 1)
    per_core = int(POLL_SECONDS * 1000 / per_pod_ms) if per_pod_ms else 0
    what = "a real engine's /v1/status" if r["real_engines"] else "an empty answer"
    return [
        f"operator poll: {r['pods']} pods, {per_pod_ms:.2f} ms CPU per pod per poll, "
        f"one core polls {per_core} pods every {POLL_SECONDS:.0f} s",
        f"  ({r['pools']} pools; {r['real_engines']} real engines and {r['standins']} pods "
        f"served by a stand-in replaying {what} ({r['answer_bytes']} bytes); "
        f"a round took {r['cpu_s']:.2f} s CPU, {r['wall_s']:.2f} s wall (median); "
        f"{r['pods_answered']} pods answered; steady-state writes {r['steady_writes']}, "
        f"re-renders asked {r['steady_rerenders']})",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pools", type=int, default=1000)
    ap.add_argument("--pods-per-pool", type=int, default=2)
    ap.add_argument("--engines", type=int, default=3, help="real engines (about 70 MB each)")
    ap.add_argument("--rounds", type=int, default=5, help="poll rounds measured (median)")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the stand-in's own process
    ap.add_argument("--answer", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--pods", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve is not None:
        asyncio.run(_serve(a.serve, a.answer.read_bytes(), a.pods))
        return 0
    # SIGTERM unwinds like Ctrl-C, so the engines and the stand-in are stopped by PID.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    r = measure(a.pools, a.pods_per_pool, a.engines, a.rounds)
    for line in lines(r):
        print(line, flush=True)
    return 0 if r["pods_answered"] == r["pods"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
