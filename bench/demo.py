"""`make demo`: a whole mail fleet on this machine, with a live summary.

    python -m bench.demo [--for SECONDS] [--rate MSGS_PER_S] [--state-dir DIR]

Builds the pinned Kubernetes control plane if it is missing (hack/envtest.sh, once), then starts,
all on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the node agent
(hack/cluster.py), dnsmasq serving the simulated providers' MX records and the example DKIM keys,
the ISP simulator (gmail-, outlook- and yahoo-like servers on 127.0.1.1-3 that throttle like the
real ones), and the operator. It applies crds/ and examples/local/ (with a DKIM Secret made from
examples/mta/dkim/), sends steady traffic to the pods' submission port, and refreshes a summary
every 2 seconds: pools, pods, IP states, rates per (IP, provider), queue depth, warmups, what the
simulator received, and the latest events.

Ctrl-C (or SIGTERM) stops everything it started, by PID. With --for SECONDS it ends by itself
and exits 0 only if mail was delivered (else 1, saying what went wrong). The first messages each
provider received are kept under <state-dir>/delivered/; <state-dir>/report.json holds the final
figures.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import importlib.util
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import yaml

from bench.demo_summary import (
    DkimCheck,
    SimCounts,
    Snapshot,
    Traffic,
    clock,
    pod_phase,
    pod_ready,
    ready_pod_ips,
    render_summary,
    verdict,
)
from mailfleet.mta.config import DKIMKey
from mailfleet.mta.dkimkeys import dns_txt_record
from tests.fixtures.dnsserver import DnsServer
from tests.fixtures.isp import IspSimulator
from tests.fixtures.procs import Proc, free_port, stop_pid

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "local"
CRDS = ROOT / "crds"
ENVTEST = ROOT / "hack" / "envtest.sh"
CLUSTER_PY = ROOT / "hack" / "cluster.py"
MAILFLEET = str(Path(sys.executable).parent / "mailfleet")
NAMESPACE = "default"
ADMIN_PORT = 8025
REFRESH = 2.0
# The DKIM Secret the pool in examples/local/ names, made from the committed example keys.
DKIM_SECRET = "dkim-example-test"
DKIM_FILES = {
    "rsa.pem": ROOT / "examples/mta/dkim/example.test.s2026a.rsa.pem",
    "ed25519.pem": ROOT / "examples/mta/dkim/example.test.s2026e.ed25519.pem",
}
# How the simulated providers throttle: transactions per source IP per minute (None: never).
SIM_LIMITS: dict[str, int | None] = {"gmail": 55, "outlook": 40, "yahoo": None}
SENDER = "app@example.test"
KEEP_PER_PROVIDER = 10  # delivered messages kept on disk (and DKIM-checked) per provider


class DemoError(RuntimeError):
    """The demo could not start; the message says what to do."""


def log(text: str) -> None:
    print(text, flush=True)


# --- what examples/local/ declares ------------------------------------------------------------


@dataclass(frozen=True)
class LocalFleet:
    pool: str
    submission_port: int
    mx_port: int
    dns_host: str
    dns_port: int
    ips: list[tuple[str, str]]  # (address, hostname)
    dkim: list[DKIMKey]


def read_examples(directory: Path = EXAMPLES) -> LocalFleet:
    docs = [d for p in sorted(directory.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    pools = [d for d in docs if d and d.get("kind") == "SendingPool"]
    if len(pools) != 1:
        raise DemoError(f"{directory} must hold exactly one SendingPool, found {len(pools)}")
    spec = pools[0]["spec"]
    routing = spec.get("routing") or {}
    dns = routing.get("dns") or {}
    keys = []
    for k in spec.get("dkim") or []:
        secret_key = k.get("secretKey", "private.key")
        if k.get("secretRef") != DKIM_SECRET or secret_key not in DKIM_FILES:
            raise DemoError(f"the demo makes Secret {DKIM_SECRET} ({', '.join(DKIM_FILES)}) only")
        keys.append(
            DKIMKey(
                domain=k["domain"],
                selector=k["selector"],
                key_file=DKIM_FILES[secret_key],
                algorithm=k.get("algorithm", "rsa-sha256"),
            )
        )
    return LocalFleet(
        pool=pools[0]["metadata"]["name"],
        submission_port=int((spec.get("submission") or {}).get("port", 2525)),
        mx_port=int(routing.get("mxPort", 25)),
        dns_host=str((dns.get("nameservers") or ["127.0.0.1"])[0]),
        dns_port=int(dns.get("port", 53)),
        ips=[(str(ip["address"]), str(ip["hostname"])) for ip in spec["ips"]],
        dkim=keys,
    )


# --- building and starting --------------------------------------------------------------------


def ensure_binaries() -> Path:
    """The pinned control plane's bin dir; builds it first (with progress) when missing."""
    check = subprocess.run([str(ENVTEST), "--check"], capture_output=True, text=True, check=False)
    if check.returncode == 0:
        return Path(check.stdout.strip().splitlines()[-1])
    log("  building Kubernetes from Go modules into ~/.cache/mailfleet (once; ~15 min on 2 cores)")
    proc = subprocess.Popen(
        [str(ENVTEST)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None and proc.stdout is not None
    lines: list[str] = []

    def relay() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            log(f"    {line.rstrip()}")

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    t0 = time.monotonic()
    while proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        if proc.poll() is None:
            log(f"    ... still compiling ({(time.monotonic() - t0) / 60:.0f} min)")
    reader.join(timeout=5)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise DemoError(f"hack/envtest.sh failed (exit {proc.returncode}):\n{''.join(lines[-30:])}")
    return Path(out.strip().splitlines()[-1])


def load_cluster_module() -> ModuleType:
    name = "mailfleet_hack_cluster"  # the same name tests/fixtures/kube.py uses
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, CLUSTER_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _short(path: Path) -> str:
    """A path relative to the current directory when it is under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def port_free(host: str, port: int, *, udp: bool = False) -> bool:
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# --- processes, by PID, across runs ------------------------------------------------------------


def process_start(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot), or None when it does not run: with the
    PID it identifies one process, even after the system reuses the number."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


class Ledger:
    """<state-dir>/run/pids.json: the demo's own PID and those of the processes it started
    outside the control plane (which keeps its own), so a demo that was killed without cleaning
    up has its leftovers stopped by the next one."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "run" / "pids.json"
        self.entries: list[dict[str, Any]] = []

    def _load(self) -> list[dict[str, Any]]:
        try:
            data: list[dict[str, Any]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return data

    def claim(self) -> list[str]:
        """Take the state dir over: refuse if its demo still runs, stop what an earlier one left
        running; returns what was stopped."""
        stopped = []
        old = self._load()
        for e in old:
            if e["name"] == "demo" and process_start(e["pid"]) == e["start"]:
                raise DemoError(f"a demo already runs with this state dir (pid {e['pid']})")
        for e in old:
            if process_start(e["pid"]) == e["start"]:
                stop_pid(e["pid"])
                stopped.append(f"{e['name']} (pid {e['pid']})")
        self.entries = []
        self.add("demo", os.getpid())
        return stopped

    def add(self, name: str, pid: int | None) -> None:
        start = process_start(pid) if pid else None
        if pid and start:
            self.entries.append({"name": name, "pid": pid, "start": start})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.entries, indent=1) + "\n")

    def clear(self) -> None:
        """Forget the PIDs once they are stopped (only a ledger this demo claimed)."""
        if self.entries:
            self.path.unlink(missing_ok=True)
            self.entries = []


def dkim_records(keys: list[DKIMKey]) -> dict[str, str]:
    """<selector>._domainkey.<domain> -> TXT value, for each key."""
    return {f"{k.selector}._domainkey.{k.domain}": dns_txt_record(k) for k in keys}


# --- traffic ----------------------------------------------------------------------------------


def demo_message(n: int, to: str) -> bytes:
    return (
        f"From: Demo App <{SENDER}>\r\n"
        f"To: <{to}>\r\n"
        f"Subject: mailfleet demo #{n}\r\n"
        f"Date: {email.utils.formatdate(localtime=False)}\r\n"
        f"Message-ID: <demo-{n}-{os.getpid()}@example.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"Hello from the local mailfleet demo, message {n}.\r\n"
    ).encode()


class TrafficGenerator(threading.Thread):
    """Submits `rate` messages per second, round-robin over the ready pods, to recipients at the
    simulated providers' domains. Stops when `stop` is set; never bursts to catch up."""

    def __init__(
        self,
        rate: float,
        port: int,
        domains: list[str],
        targets: Callable[[], dict[str, str]],
        stop: threading.Event,
        burst: tuple[float, float, float] | None = None,
    ) -> None:
        super().__init__(name="traffic", daemon=True)
        # (seconds after the start, messages per second, seconds long): a burst the autoscaler
        # answers with more pods, and then, once the queue is low for its window, with fewer.
        self.burst = burst
        self.started = time.monotonic()
        self.rate, self.port, self.domains, self.targets, self.stop = (
            rate,
            port,
            domains,
            targets,
            stop,
        )
        self.lock = threading.Lock()
        self.submitted = 0
        self.failed = 0
        self.last_error = ""
        self.per_pod: dict[str, int] = {}
        self._conns: dict[str, smtplib.SMTP] = {}

    def rate_now(self) -> float:
        if self.burst is not None:
            after, rate, length = self.burst
            into = time.monotonic() - self.started - after
            if 0 <= into < length:
                return rate
            if into >= length:
                # The burst is over and the load falls below what the providers take: the
                # backlog goes out and the autoscaler can give the pods back.
                return self.rate / 10
        return self.rate

    def snapshot(self) -> Traffic:
        with self.lock:
            return Traffic(
                rate=self.rate_now(),
                submitted=self.submitted,
                failed=self.failed,
                last_error=self.last_error,
                per_pod=dict(self.per_pod),
            )

    def _send(self, pod: str, ip: str, n: int) -> None:
        to = f"user{n % 97}@{self.domains[n % len(self.domains)]}"
        conn = self._conns.get(ip)
        try:
            if conn is None:
                conn = smtplib.SMTP(ip, self.port, local_hostname="demo-client", timeout=10)
                self._conns[ip] = conn
            conn.sendmail(SENDER, [to], demo_message(n, to))
        except (OSError, smtplib.SMTPException) as e:
            self._drop(ip)
            with self.lock:
                self.failed += 1
                self.last_error = f"{pod} ({ip}:{self.port}): {e}"
            return
        with self.lock:
            self.submitted += 1
            self.per_pod[pod] = self.per_pod.get(pod, 0) + 1

    def _drop(self, ip: str) -> None:
        conn = self._conns.pop(ip, None)
        if conn is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                conn.close()

    def run(self) -> None:
        n = 0
        due = time.monotonic()
        try:
            while not self.stop.is_set():
                targets = self.targets()
                for gone in set(self._conns) - set(targets.values()):
                    self._drop(gone)
                if not targets:
                    self.stop.wait(0.5)
                    due = time.monotonic()
                    continue
                names = sorted(targets)
                pod = names[n % len(names)]
                n += 1
                self._send(pod, targets[pod], n)
                due = max(due + 1.0 / self.rate_now(), time.monotonic() - 1.0)
                self.stop.wait(max(0.0, due - time.monotonic()))
        finally:
            for ip in list(self._conns):
                self._drop(ip)


# --- observing ----------------------------------------------------------------------------------


def sim_counts(sim: IspSimulator, now: float) -> list[SimCounts]:
    out = []
    for name, provider in sorted(sim.providers.items()):
        accepted = provider.accepted()
        refusals = [e for e in provider.events() if e.stage != "EHLO" and e.reply[:1] != "2"]
        ips = sorted({a.source_ip for a in accepted} | {e.source_ip for e in refusals})
        for ip in ips:
            mine = [a for a in accepted if a.source_ip == ip]
            refused = [e for e in refusals if e.source_ip == ip]
            out.append(
                SimCounts(
                    provider=name,
                    ip=ip,
                    delivered=len(mine),
                    last_minute=sum(1 for a in mine if a.at > now - 60),
                    refused=len(refused),
                    last_refusal=refused[-1].reply.splitlines()[-1] if refused else "",
                )
            )
    return out


class DkimChecker:
    """Checks (and keeps on disk) the first messages each provider received, with dkimpy and
    the keys dnsmasq serves: the same DNS lookups a receiver would make."""

    def __init__(self, dns: DnsServer, out_dir: Path) -> None:
        self.dns = dns
        self.out_dir = out_dir
        self.seen: dict[str, int] = {}
        self.checked = 0
        self.passed = 0
        self.last_failure = ""

    def _txt(self, name: bytes, timeout: int = 5) -> bytes | None:
        import dns.exception
        import dns.resolver

        try:
            answer = self.dns.resolver().resolve(name.decode().rstrip("."), "TXT")
        except dns.exception.DNSException:
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    def check(self, sim: IspSimulator, budget: int = 3) -> None:
        import dkim

        for name, provider in sorted(sim.providers.items()):
            done = self.seen.get(name, 0)
            if done >= KEEP_PER_PROVIDER or budget <= 0:
                continue
            accepted = provider.accepted()
            if len(accepted) <= done:
                continue
            a = accepted[done]
            self.seen[name] = done + 1
            budget -= 1
            raw = a.content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / f"{name}-{done + 1:02d}.eml").write_bytes(raw)
            sigs = raw.count(b"\r\nDKIM-Signature:") + raw.startswith(b"DKIM-Signature:")
            try:
                ok = [dkim.DKIM(raw).verify(idx=i, dnsfunc=self._txt) for i in range(sigs)]
            except Exception as e:  # dkimpy raises on malformed signatures
                ok, self.last_failure = [False], f"{name}: {e}"
            self.checked += 1
            if ok and all(ok):
                self.passed += 1
            elif not self.last_failure:
                self.last_failure = f"{name} message from {a.source_ip}: signatures {ok}"

    def snapshot(self) -> DkimCheck:
        return DkimCheck(self.checked, self.passed, self.last_failure)


def engine_status(ip: str, timeout: float = 1.0) -> dict[str, Any] | None:
    try:
        url = f"http://{ip}:{ADMIN_PORT}/v1/status"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data
    except (OSError, ValueError):
        return None


# --- the demo -----------------------------------------------------------------------------------


@dataclass
class Demo:
    state_dir: Path
    rate: float
    duration: float | None
    stop: threading.Event = field(default_factory=threading.Event)
    started_at: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)
    cp: Any = None
    dns: DnsServer | None = None
    sim: IspSimulator | None = None
    operator: Proc | None = None
    traffic: TrafficGenerator | None = None
    dkim: DkimChecker | None = None
    stopped: list[str] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    routing: dict[str, Any] = field(default_factory=dict)
    ledger: Ledger = field(init=False)
    incident_at: float | None = None
    incident_done: bool = False
    burst_at: float | None = None
    sending_ips: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.state_dir)

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        fleet = read_examples()
        self.sending_ips = [a for a, _ in fleet.ips]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        leftovers = self.ledger.claim()
        if leftovers:
            log(f"stopped what an earlier demo left running: {', '.join(leftovers)}")
        for d in ("log", "delivered"):
            shutil.rmtree(self.state_dir / d, ignore_errors=True)
        (self.state_dir / "log").mkdir()
        (self.state_dir / "report.json").unlink(missing_ok=True)

        log("[1/7] Kubernetes binaries (hack/envtest.sh)")
        bin_dir = ensure_binaries()
        log(f"  {bin_dir}")

        log("[2/7] control plane and local node on loopback")
        self._start_cluster(bin_dir)

        # The ports examples/local/ names, unless taken (another demo, a test): then free ones,
        # and the pool applied says so in its spec.routing.
        self.sim = IspSimulator()  # picks a port free on all its addresses
        mx_port = fleet.mx_port
        if not all(port_free(p.address, mx_port) for p in self.sim.providers.values()):
            mx_port = self.sim.port
            self.notes.append(f"port {fleet.mx_port} was taken: the simulator uses {mx_port}")
        self.sim.port = mx_port
        for p in self.sim.providers.values():
            p.port = mx_port
        host, dns_port = fleet.dns_host, fleet.dns_port
        if not (port_free(host, dns_port, udp=True) and port_free(host, dns_port)):
            dns_port = free_port(host, udp=True)
            self.notes.append(f"port {fleet.dns_port} was taken: DNS is on {host}:{dns_port}")
        self.routing = {"mxPort": mx_port, "dns": {"nameservers": [host], "port": dns_port}}

        log(f"[3/7] DNS: dnsmasq on {host}:{dns_port}")
        self._start_dns(fleet, dns_port)

        log(f"[4/7] ISP simulator on port {mx_port}")
        for name, provider in self.sim.providers.items():
            limit = SIM_LIMITS.get(name)
            if limit is not None:
                provider.set_limit(limit, 60.0)
        self.sim.start()
        for name, provider in self.sim.providers.items():
            limit = SIM_LIMITS.get(name)
            throttles = f"throttles above {limit}/min per IP" if limit else "never throttles"
            log(f"  {name:8} {provider.address}  MX of {provider.domain}, {throttles}")
        assert self.dns is not None
        self.dkim = DkimChecker(self.dns, self.state_dir / "delivered")

        log("[5/7] apply crds/, the DKIM Secret and examples/local/")
        self._apply()

        log("[6/7] operator")
        self._start_operator()

        log(f"[7/7] traffic: {self.rate:g} msg/s to the pods' port {fleet.submission_port}")
        self.traffic = TrafficGenerator(
            self.rate,
            fleet.submission_port,
            [p.domain for p in self.sim.providers.values()],
            lambda: ready_pod_ips(self.pods),
            self.stop,
            burst=(self.burst_at, self.rate * 4, 30.0) if self.burst_at is not None else None,
        )
        self.traffic.start()
        kubectl = f"{_short(self.cp.kubectl_path)} --kubeconfig {_short(self.cp.kubeconfig)}"
        self.notes.append(f"look around: {kubectl} get pods,sendingpools")
        log(f"\n{self.notes[-1]}\n")
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[2J")

    def _start_cluster(self, bin_dir: Path) -> None:
        cluster = load_cluster_module()
        cdir = self.state_dir / "cluster"
        old = cluster.ControlPlane.load(cdir)
        if old is not None and old.running():
            raise DemoError(
                f"a control plane from an earlier demo still runs ({old.running()}); "
                f"stop it with `python3 hack/cluster.py down --state-dir {cdir}`"
            )
        # A fresh cluster every time (the PKI is kept: making it takes a while).
        for d in ("etcd", "run"):
            shutil.rmtree(cdir / d, ignore_errors=True)
        self.cp = cluster.ControlPlane(bin_dir, cdir, fsync=False, die_with_parent=True)
        t0 = time.monotonic()
        self.cp.start()
        log(f"  {self.cp.server} ready in {time.monotonic() - t0:.1f}s; logs in {cdir / 'log'}")

    def _start_dns(self, fleet: LocalFleet, port: int) -> None:
        assert self.sim is not None
        dns = DnsServer(fleet.dns_host, port, ttl=60, workdir=self.state_dir / "dns")
        self.sim.add_to_dns(dns)
        for name, value in dkim_records(fleet.dkim).items():
            dns.add_txt(name, value)
        for address, hostname in fleet.ips:
            dns.add_a(hostname, address)  # dnsmasq adds the matching PTR
        self.dns = dns.start()
        self.ledger.add("dnsmasq", self.dns.pid)
        log(f"  MX: {', '.join(p.domain for p in self.sim.providers.values())}")
        log(f"  DKIM TXT: {', '.join(dkim_records(fleet.dkim))}; A/PTR for the pool's IPs")

    def kubectl(self, *args: str, input: str | None = None) -> str:
        proc = self.cp.kubectl(*args, check=False, input=input)
        if proc.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return str(proc.stdout)

    def _apply(self) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
        self.cp.wait_crds_established()
        secret = self.kubectl(
            "create", "secret", "generic", DKIM_SECRET, "-n", NAMESPACE,
            *(f"--from-file={k}={v}" for k, v in DKIM_FILES.items()),
            "--dry-run=client", "-o", "yaml",
        )  # fmt: skip
        self.kubectl("apply", "-f", "-", input=secret)
        out = self.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=self._manifests())
        for line in out.splitlines():
            log(f"  {line}")

    def _manifests(self) -> str:
        """examples/local/ as it is, but for the pool's routing when a port had to change."""
        docs = []
        for path in sorted(EXAMPLES.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "SendingPool":
                    routing = doc["spec"].setdefault("routing", {})
                    routing["mxPort"] = self.routing["mxPort"]
                    routing.setdefault("dns", {}).update(self.routing["dns"])
                if doc:
                    docs.append(doc)
        return yaml.safe_dump_all(docs, sort_keys=False)

    def _start_operator(self) -> None:
        port = free_port()
        self.operator = Proc(
            [
                MAILFLEET, "operator", "--standalone", "--namespace", NAMESPACE,
                "--metrics-port", str(port), "--metrics-addr", "127.0.0.1",
            ],
            name="operator",
            log_dir=self.state_dir / "log",
            env={"KUBECONFIG": str(self.cp.kubeconfig), "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
        )  # fmt: skip
        self.ledger.add("operator", self.operator.pid)
        self.operator.wait_port("127.0.0.1", port, timeout=60)
        log(f"  pid {self.operator.pid}, log {self.operator.stderr_path}")

    # -- observe -------------------------------------------------------------------------------
    def _list(self, path: str) -> list[dict[str, Any]]:
        try:
            status, body = self.cp.get(path)
        except OSError:
            return []
        if status != 200:
            return []
        items: list[dict[str, Any]] = json.loads(body).get("items", [])
        return items

    def snapshot(self) -> Snapshot:
        assert self.sim is not None and self.traffic is not None and self.dkim is not None
        group = f"/apis/mailfleet.io/v1alpha1/namespaces/{NAMESPACE}"
        pools = self._list(f"{group}/sendingpools")
        warmups = self._list(f"{group}/ipwarmups")
        self.pods = self._list(f"/api/v1/namespaces/{NAMESPACE}/pods")
        events = self._list(f"/api/v1/namespaces/{NAMESPACE}/events")
        engines = {}
        for pod in self.pods:
            ip = pod.get("status", {}).get("podIP")
            if ip and pod_phase(pod) == "Running":
                status = engine_status(ip)
                if status is not None:
                    engines[pod["metadata"]["name"]] = status
        self.dkim.check(self.sim)
        notes = list(self.notes)
        if self.operator is not None and not self.operator.running():
            notes.append(f"the operator exited ({self.operator.popen.returncode}): see its log")
        if self.pods and not any(pod_ready(p) for p in self.pods):
            notes.append("waiting for pods to become ready; traffic starts then")
        elapsed = time.monotonic() - self.started_at
        return Snapshot(
            now=datetime.now(UTC),
            elapsed=elapsed,
            pools=pools,
            pods=self.pods,
            warmups=warmups,
            events=events,
            engines=engines,
            sim=sim_counts(self.sim, time.time()),
            traffic=self.traffic.snapshot(),
            dkim=self.dkim.snapshot(),
            notes=notes,
            deadline=self.duration,
        )

    def watch(self, print_every: float) -> Snapshot:
        """Refresh the summary until stopped or the deadline; returns the last snapshot."""
        tty = sys.stdout.isatty()
        last_print = 0.0
        self.started_at = time.monotonic()  # --for counts from here: the fleet is applied
        while True:
            self._incident()
            snap = self.snapshot()
            done = self.stop.is_set() or (
                self.duration is not None and snap.elapsed >= self.duration
            )
            if tty:  # redraw in place: home, each line cleared to its end, the rest cleared
                text = render_summary(snap, shutil.get_terminal_size().columns)
                sys.stdout.write("\x1b[H" + text.replace("\n", "\x1b[K\n") + "\x1b[J")
                sys.stdout.flush()
            elif done or time.monotonic() - last_print >= print_every:
                log(f"\n{'=' * 100}\n{render_summary(snap)}")
                last_print = time.monotonic()
            if done:
                return snap
            self.stop.wait(REFRESH)

    def _incident(self) -> None:
        """--incident: at that time the outlook-like provider puts the pool's first IP on its
        block list (550 5.7.1 ... S3150), as Outlook does; the engines take that IP out of
        rotation for outlook and send from the others."""
        if self.incident_at is None or self.incident_done or self.sim is None:
            return
        if time.monotonic() - self.started_at < self.incident_at:
            return
        ip = self.sending_ips[0]
        self.sim["outlook"].block(ip)
        self.incident_done = True
        elapsed = time.monotonic() - self.started_at
        self.notes.append(f"incident at {clock(elapsed)}: outlook blocks {ip} (S3150)")

    # -- stop ----------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop everything that was started, newest first, each by its PID."""
        self.stop.set()
        if self.traffic is not None:
            self.traffic.join(timeout=15)
            self.stopped.append("traffic")
        if self.operator is not None:
            self.operator.stop(timeout=20)
            self.stopped.append(f"operator (pid {self.operator.pid})")
        if self.cp is not None:
            names = self.cp.stop()
            self.stopped += [n for n in names]
        if self.sim is not None:
            self.sim.close()
            self.stopped.append("ISP simulator")
        if self.dns is not None:
            pid = self.dns.pid
            self.dns.stop()
            self.stopped.append(f"dnsmasq (pid {pid})")
        self.ledger.clear()

    def report(self, snap: Snapshot, ok: bool, message: str) -> dict[str, Any]:
        return {
            "ok": ok,
            "message": message,
            "elapsedSeconds": round(snap.elapsed, 1),
            "pods": [
                {
                    "name": p["metadata"]["name"],
                    "phase": pod_phase(p),
                    "ip": p.get("status", {}).get("podIP"),
                    "ready": pod_ready(p),
                }
                for p in snap.pods
            ],
            "delivered": [asdict(c) for c in snap.sim],
            "traffic": asdict(snap.traffic),
            "dkim": asdict(snap.dkim),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--for",
        dest="duration",
        type=float,
        metavar="SECONDS",
        help="end after this long; exit 0 only if mail was delivered",
    )
    ap.add_argument("--rate", type=float, default=5.0, help="messages submitted per second")
    ap.add_argument(
        "--burst",
        type=float,
        metavar="SECONDS",
        help="after this long, 30 s at 4 x --rate, then a tenth of --rate: the autoscaler adds "
        "pods; once the backlog is delivered and the queue has stayed low for its stabilization "
        "window (2 min), it drains them away again (a whole cycle takes about 10 minutes)",
    )
    ap.add_argument("--state-dir", type=Path, default=ROOT / ".local" / "demo")
    ap.add_argument(
        "--incident",
        type=float,
        metavar="SECONDS",
        help="after this long, the outlook-like provider blocks the pool's first IP (S3150)",
    )
    ap.add_argument(
        "--print-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="when stdout is not a terminal: print the summary this often",
    )
    args = ap.parse_args(argv)  # fmt: skip
    if args.rate <= 0 or args.rate > 200:
        ap.error("--rate must be in (0, 200]")
    demo = Demo(
        args.state_dir.resolve(),
        args.rate,
        args.duration,
        incident_at=args.incident,
        burst_at=args.burst,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        demo.stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 1
    try:
        demo.start()
        if demo.stop.is_set():
            raise DemoError("stopped while starting")
        snap = demo.watch(args.print_every)
        ok, message = verdict(snap)
        (demo.state_dir / "report.json").write_text(
            json.dumps(demo.report(snap, ok, message), indent=2, default=str) + "\n"
        )
        if args.duration is None:
            code = 0
            log(f"\n{message}")
        else:
            code = 0 if ok else 1
            log(f"\n{'demo OK' if ok else 'demo FAILED'}: {message}")
        log(f"delivered messages kept in {demo.state_dir / 'delivered'}")
    except DemoError as e:
        log(f"\nmake demo: {e}")
    except Exception as e:  # any failure to start still stops what was started
        log(f"\nmake demo: {type(e).__name__}: {e}")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        log("stopping what the demo started (Ctrl-C again abandons it; the next demo cleans up)")
        demo.shutdown()
        log(f"stopped: {', '.join(demo.stopped) or 'nothing was running'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
