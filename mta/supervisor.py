"""`mailfleet mta --processes N`: N engine processes on one submission port (SO_REUSEPORT), so
that a pod uses every core it is given; this process starts them, restarts one that dies, passes
SIGTERM and SIGHUP on, and serves the configured admin address as if it were one engine.

Worker i runs with `spool.path/<i>`, its share of every limit (mailfleet.mta.workers) and an
admin API on a loopback port of its own. State-changing admin calls go to every worker with the
caller's Authorization header (each worker checks the token, as one engine would), and their
answers are merged. What only the caller's request shows (its Host, an Origin header) is checked
here, as an engine checks it: the workers see the supervisor's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest
from pydantic import ValidationError

from mailfleet.mta.admin import body_refusal, page_refusal
from mailfleet.mta.adminapi import (
    AdoptResult,
    Answer,
    DrainState,
    EngineStatus,
    ErrorAnswer,
    QueueActionResult,
    ReloadResult,
    ShapingAdoption,
    WorkerState,
)
from mailfleet.mta.adminclient import ensure_generated_token, generated_token_path
from mailfleet.mta.config import (
    ConfigError,
    EngineConfig,
    is_loopback_host,
    load_config,
    parse_hostport,
)
from mailfleet.mta.metrics import SupervisorMetrics
from mailfleet.mta.workers import (
    adoption_share,
    merge_metrics,
    merge_status,
    usable_processes,
)

log = logging.getLogger("mailfleet.mta.supervisor")

# A worker that dies is started again after this pause (doubling while it keeps dying soon
# after its start, up to the maximum), so a broken config does not spin a core.
RESTART_PAUSE = 0.5
RESTART_PAUSE_MAX = 30.0
STABLE_AFTER = 30.0
STOP_TIMEOUT = 60.0
# Probes and scrapes are short; a drain with a handoff or a pushed reload may take a while.
READ_TIMEOUT = aiohttp.ClientTimeout(total=10)
WORKER_TIMEOUT = aiohttp.ClientTimeout(total=120)
FORWARDED_HEADERS = ("Authorization", "Content-Type")


# `--processes auto`: one engine process per CPU this process may use.
AUTO = "auto"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# A limit a hair under a whole CPU (1999m as 1.999) is not one CPU fewer.
_CPU_SLACK = 1e-9


def _quota(text: str, period_text: str | None = None) -> float | None:
    """CPUs from a cgroup quota: v2 `cpu.max` ("max 100000", "200000 100000") when
    `period_text` is None, else v1 `cpu.cfs_quota_us` (-1: none) and `cpu.cfs_period_us`."""
    try:
        if period_text is None:
            fields = text.split()
            if not fields or fields[0] == "max":
                return None
            quota, period = float(fields[0]), float(fields[1]) if len(fields) > 1 else 100000.0
        else:
            quota, period = float(text.strip()), float(period_text.strip())
    except ValueError:
        return None  # unreadable: no limit known, the affinity decides
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _ancestors(mount: Path, cgroup_path: str) -> list[Path]:
    """The process's cgroup directory under `mount` and every parent up to the mount (each may
    cap the CPU). A path that is not under the mount (a container's view of cgroup v1 shows the
    host's path) leaves the mount itself: the container's own cgroup."""
    parts = [p for p in cgroup_path.strip().split("/") if p and p != ".."]
    dirs = [mount]
    for i in range(len(parts)):
        d = mount.joinpath(*parts[: i + 1])
        if not d.is_dir():
            break
        dirs.append(d)
    return dirs


def cgroup_cpu_limit(root: Path, proc_cgroup: str) -> float | None:
    """The CPUs the cgroup allows (the smallest quota from this process's cgroup up to the
    root), or None when nothing limits it. `root`: where cgroups are mounted (/sys/fs/cgroup);
    `proc_cgroup`: the text of /proc/self/cgroup. Reads cgroup v2 `cpu.max`, and v1
    `cpu.cfs_quota_us`/`cpu.cfs_period_us` (hybrid hosts: both; the smaller wins)."""
    limits: list[float] = []
    for line in proc_cgroup.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":
            mounts = [root, root / "unified"]
            for mount in mounts:
                for d in _ancestors(mount, path):
                    text = _read(d / "cpu.max")
                    q = _quota(text) if text is not None else None
                    if q is not None:
                        limits.append(q)
        elif "cpu" in controllers.split(","):
            for mount in dict.fromkeys([root / "cpu", root / controllers, root / "cpu,cpuacct"]):
                for d in _ancestors(mount, path):
                    quota = _read(d / "cpu.cfs_quota_us")
                    period = _read(d / "cpu.cfs_period_us")
                    q = _quota(quota, period) if quota is not None and period is not None else None
                    if q is not None:
                        limits.append(q)
    return min(limits) if limits else None


def cpus_for_processes(limit: float | None, affinity: int) -> int:
    """Engine processes for `affinity` CPUs this process may run on and a cgroup quota of
    `limit` CPUs (None: none): one per whole CPU, at least one. A fraction of a CPU is better
    used by one process than by two that the quota throttles (as the operator counts a pod's
    request)."""
    cpus = max(affinity, 1)
    if limit is not None:
        cpus = min(cpus, int(limit + _CPU_SLACK))
    return max(cpus, 1)


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """The whole CPUs this process may use: its CPU affinity, capped by its cgroup's quota."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    proc_cgroup = _read(Path("/proc/self/cgroup")) or ""
    return cpus_for_processes(cgroup_cpu_limit(root, proc_cgroup), affinity)


def choose_processes(requested: int | str, cpus: int, cfg: EngineConfig) -> tuple[int, str | None]:
    """How many engine processes to run, and why fewer than asked (None: as asked).

    `requested`: --processes (a number, or "auto": one per CPU, `cpus`). More than one process
    share the submission port with SO_REUSEPORT: under "auto", a config that sets
    `submission.reusePort: false` itself gets one process (an explicit --processes N sets it, as
    it always has). And never more processes than the smallest connection limit."""
    if requested == AUTO:
        wanted = cpus
        # Set to false in the config (not merely left at its default): no port sharing.
        explicit = "reuse_port" in cfg.submission.model_fields_set
        if wanted > 1 and explicit and not cfg.submission.reuse_port:
            return 1, "submission.reusePort is false: one process (no port sharing)"
    else:
        wanted = int(requested)
    n = usable_processes(cfg, wanted)
    if n < wanted:
        return n, "a connection limit is smaller than the processes asked for"
    return n, None


def _loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Supervisor:
    def __init__(self, config_path: Path, cfg: EngineConfig, n: int, listen_host: str | None):
        self.config_path = config_path
        self.cfg = cfg
        self.n = n
        self.listen_host = listen_host
        # Chosen once: a restarted worker comes back on the same port.
        self.admin = [f"127.0.0.1:{_loopback_port()}" for _ in range(n)]
        self.procs: list[asyncio.subprocess.Process | None] = [None] * n
        self.restarts = [0] * n
        self.metrics = SupervisorMetrics(n)
        self.stopping = False
        self._next_handoff = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # The last drain (its headers and body) until an undrain: a worker restarted meanwhile
        # is drained too, or it would take mail in a pod that is going away.
        self.drain_request: tuple[dict[str, str], bytes | None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def command(self, i: int) -> list[str]:
        cmd = [sys.executable, "-m", "mailfleet.cli", "mta", "--config", str(self.config_path)]
        if self.listen_host:
            cmd += ["--listen-address", self.listen_host]
        return [*cmd, "--worker", f"{i}/{self.n}", "--worker-admin", self.admin[i]]

    async def _keep(self, i: int) -> None:
        pause = RESTART_PAUSE
        while not self.stopping:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*self.command(i))
            self.procs[i] = proc
            log.info("worker started", extra={"worker": i, "pid": proc.pid})
            if self.drain_request is not None and self.restarts[i]:
                task = asyncio.create_task(self._drain_restarted(i, proc))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            rc = await proc.wait()
            if self.stopping:
                return
            self.restarts[i] += 1
            self.metrics.restarts.labels(str(i)).inc()
            if time.monotonic() - started > STABLE_AFTER:
                pause = RESTART_PAUSE
            log.error("worker exited; restarting it", extra={"worker": i, "rc": rc})
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_PAUSE_MAX)

    async def _drain_restarted(self, i: int, proc: asyncio.subprocess.Process) -> None:
        while proc.returncode is None and self.drain_request is not None:
            headers, body = self.drain_request
            status, _, _ = await self._ask(i, "POST", "/v1/drain", headers, body)
            if status == 200:
                return
            await asyncio.sleep(0.2)

    def signal_all(self, sig: int) -> None:
        for p in self.procs:
            if p is not None and p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)

    # -- the admin API -------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=WORKER_TIMEOUT)
        return self._session

    async def _ask(
        self, i: int, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, bytes, str]:
        try:
            async with self.session.request(
                method,
                f"http://{self.admin[i]}{path}",
                headers=headers,
                data=body,
                timeout=READ_TIMEOUT if method == "GET" else WORKER_TIMEOUT,
            ) as rsp:
                return rsp.status, await rsp.read(), rsp.content_type
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            err = json.dumps({"error": f"engine process {i} does not answer: {e}"}).encode()
            return 503, err, "application/json"

    async def _ask_all(self, request: web.Request) -> list[tuple[int, bytes, str]]:
        headers = _forwarded(request)
        body = await request.read() if request.can_read_body else None
        return list(
            await asyncio.gather(
                *(
                    self._ask(i, request.method, request.path_qs, headers, body)
                    for i in range(self.n)
                )
            )
        )

    def app(self) -> web.Application:
        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "processes": self.n})

        async def readyz(request: web.Request) -> web.Response:
            answers = await self._ask_all(request)
            reasons = []
            for i, (status, body, _) in enumerate(answers):
                if status != 200:
                    reasons.append(f"process {i}: {_json(body).get('reason', status)}")
            ready = not reasons
            return web.json_response(
                {"ready": ready, "reason": "; ".join(reasons) or "ready"},
                status=200 if ready else 503,
            )

        async def status(request: web.Request) -> web.Response:
            answers = await self._ask_all(request)
            statuses = [
                _answer(EngineStatus, b) if s == 200 else EngineStatus() for s, b, _ in answers
            ]
            merged = _merge(EngineStatus, statuses)
            merged.processes = len(statuses)
            merged.workers = [
                WorkerState(
                    process=i,
                    pid=p.pid if p is not None else None,
                    restarts=self.restarts[i],
                    ready=statuses[i].ready,
                    reason=statuses[i].reason
                    if "reason" in statuses[i].model_fields_set
                    else "no answer",
                )
                for i, p in enumerate(self.procs)
            ]
            if any(s != 200 for s, _, _ in answers):
                merged.ready = False
            return web.json_response(merged.wire())

        async def metrics(request: web.Request) -> web.Response:
            answers = await self._ask_all(request)
            text = merge_metrics([b.decode() if s == 200 else "" for s, b, _ in answers])
            text += generate_latest(self.metrics.registry).decode()
            return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={})

        async def first(request: web.Request) -> web.Response:
            # The suppression list is one file for the whole pod: any process lists it.
            headers = _forwarded(request)
            status_, body, ctype = await self._ask(
                0, request.method, request.path_qs, headers, None
            )
            return web.Response(body=body, status=status_, content_type=ctype)

        async def found(request: web.Request) -> web.Response:
            # One recipient: found if any process has it (each caches what it added itself).
            answers = await self._ask_all(request)
            status_, body, ctype = min(answers, key=lambda a: 0 if a[0] == 200 else a[0])
            return web.Response(body=body, status=status_, content_type=ctype)

        async def handoff(request: web.Request) -> web.Response:
            # A draining pod's messages go to one process: to all would deliver them N times.
            headers = _forwarded(request)
            body = await request.read()
            answer: tuple[int, bytes, str] = (503, b"{}", "application/json")
            for k in range(self.n):
                i = (self._next_handoff + k) % self.n
                answer = await self._ask(i, "POST", request.path_qs, headers, body)
                if answer[0] != 503:  # 503: this process drains or does not answer
                    break
            self._next_handoff = (self._next_handoff + 1) % self.n
            return web.Response(body=answer[1], status=answer[0], content_type=answer[2])

        async def adopt_shaping(request: web.Request) -> web.Response:
            headers = _forwarded(request)
            raw = await request.read()
            try:
                adopted = ShapingAdoption.model_validate_json(raw).model_dump(by_alias=True)
            except ValidationError:
                # Each process refuses it (naming the field) or asks for the token first.
                adopted = None

            def share(i: int) -> bytes:
                return (
                    raw
                    if adopted is None
                    else json.dumps(adoption_share(adopted, i, self.n)).encode()
                )

            answers = await asyncio.gather(
                *(self._ask(i, "POST", request.path_qs, headers, share(i)) for i in range(self.n))
            )
            return _merged(list(answers), "POST", request.path)

        async def every(request: web.Request) -> web.Response:
            answers = await self._ask_all(request)
            if all(s == 200 for s, _, _ in answers):
                if request.path == "/v1/drain":
                    self.drain_request = (_forwarded(request), await request.read() or None)
                elif request.path == "/v1/undrain":
                    self.drain_request = None
            return _merged(answers, request.method, request.path)

        loopback = is_loopback_host(parse_hostport(self.cfg.admin.listen)[0])

        @web.middleware
        async def guard(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            # The token is each process's to check; a page's request is refused here already.
            refused = page_refusal(request, loopback) or body_refusal(request)
            return refused if refused is not None else await handler(request)

        app = web.Application(middlewares=[guard])
        app.add_routes(
            [
                web.get("/healthz", healthz),
                web.get("/readyz", readyz),
                web.get("/v1/status", status),
                web.get("/metrics", metrics),
                web.get("/v1/suppressions", first),
                web.get("/v1/suppressions/{recipient}", found),
                web.post("/v1/handoff", handoff),
                web.post("/v1/shaping/adopt", adopt_shaping),
                web.route("*", "/{tail:.*}", every),
            ]
        )
        return app

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.signal_all(signal.SIGHUP))
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        host, port = parse_hostport(self.cfg.admin.listen)
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        keepers = [asyncio.create_task(self._keep(i)) for i in range(self.n)]
        log.info("engine processes started", extra={"processes": self.n})
        await stop.wait()
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        procs = [p for p in self.procs if p is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), STOP_TIMEOUT)
        except TimeoutError:
            self.signal_all(signal.SIGKILL)
        for k in keepers:
            k.cancel()
        if self._session is not None:
            await self._session.close()
        await runner.cleanup()


def _forwarded(request: web.Request) -> dict[str, str]:
    """The caller's headers a worker needs: its bearer token and the body's type."""
    return {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}


def _merged(answers: list[tuple[int, bytes, str]], method: str, path: str) -> web.Response:
    codes = [s for s, _, _ in answers]
    if method == "DELETE" and 200 in codes and set(codes) <= {200, 404}:
        # Removed from the file by the first process; the others only dropped their cache.
        return web.json_response({"removed": True})
    worst = max(codes)
    if any(not 200 <= c < 300 for c in codes):
        # One answer that is not a success is the answer (401, 400...): the caller sees what
        # the failing process said.
        s, b, ctype = next(a for a in answers if a[0] == worst)
        return web.Response(body=b, status=s, content_type=ctype)
    kind = _ANSWERS.get(path, ErrorAnswer)
    if kind is ErrorAnswer:
        # An answer without a model (a suppression added): merged as the JSON it is.
        merged = merge_status([_json(b) for _, b, _ in answers])
        merged.pop("processes", None)
        return web.json_response(merged, status=codes[0])
    typed = _merge(kind, [_answer(kind, b) for _, b, _ in answers])
    return web.json_response(typed.wire(), status=codes[0])


A = TypeVar("A", bound=Answer)

# The state-changing calls every process answers, by path: their answers are merged as one.
_ANSWERS: dict[str, type[Answer]] = {
    "/v1/drain": DrainState,
    "/v1/undrain": DrainState,
    "/v1/reload": ReloadResult,
    "/v1/queue/retry": QueueActionResult,
    "/v1/queue/bounce": QueueActionResult,
    "/v1/shaping/adopt": AdoptResult,
}


def _answer(kind: type[A], body: bytes) -> A:
    """One process's answer as its model (a body that is no JSON object reads as empty)."""
    try:
        return kind.parse(_json(body))
    except ValidationError:
        return kind()


def _merge(kind: type[A], answers: list[A]) -> A:
    """The processes' answers as one (workers.merge_values: counts summed, `ready` all, times
    the latest, the same pair's rows one row), typed again."""
    merged = merge_status([a.wire() for a in answers])
    merged.pop("processes", None)
    return kind.model_validate(merged)


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def run_supervisor(
    config_path: Path,
    processes: int | str,
    listen_host: str | None = None,
    pod_name: str | None = None,
) -> int:
    """`mailfleet mta --processes N|auto`. When one process is what runs (one CPU, a connection
    limit of one, reusePort: false under auto), the engine runs here, as without --processes:
    on `spool.path` itself and the configured admin address."""
    from mailfleet.mta.engine import check_config, run_engine
    from mailfleet.mta.logs import setup_logging

    try:
        # The workers refuse a bad config too, but only once each: better said once, here.
        check_config(config_path, listen_host)
        cfg = load_config(config_path, listen_host)
    except ConfigError as e:
        print(f"mailfleet mta: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level, cfg.logging.format)
    cpus = available_cpus() if processes == AUTO else 0
    n, why = choose_processes(processes, cpus, cfg)
    if why is not None:
        log.warning(
            "fewer engine processes than asked",
            extra={"asked": processes, "cpus": cpus or None, "processes": n, "reason": why},
        )
    if n == 1:
        return run_engine(config_path, listen_host, pod_name=pod_name)
    if cfg.admin.token_file is None:
        # Made once before the processes start, so that they all find (and check) the same one.
        try:
            ensure_generated_token(generated_token_path(cfg.spool.path))
        except OSError as e:
            print(f"mailfleet mta: cannot write the admin token: {e}", file=sys.stderr)
            return 2
    log.info(
        "engine processes",
        extra={"asked": processes, "cpus": cpus or None, "processes": n},
    )
    asyncio.run(Supervisor(config_path, cfg, n, listen_host).run())
    return 0
