"""`make demo DEMO_ARGS='--for 60'`: the fleet demo runs a pool whose pods really run on the local
node, the ISP simulator receives DKIM-signed mail from the pool's IPs, the demo says so and
exits 0, and every process it started is gone afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from fixtures.dkimverify import DkimVerifier
from fixtures.dnsserver import DnsServer
from fixtures.keys import ED_KEY, RSA_KEY
from fixtures.procs import wait_until

from mailfleet.mta.dkimkeys import dns_txt_record

pytestmark = [pytest.mark.kube, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEMO_SECONDS = 60


def _stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name: [state, ppid, ...], or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time): a PID the system reuses for another process is not ours any more."""
    fields = _stat(pid)
    return None if fields is None else (pid, fields[19])


def descendants(root: int) -> set[tuple[int, str]]:
    """Every live descendant of `root` (read from /proc), as identities."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        fields = _stat(entry) if entry.isdigit() else None
        if fields is not None:
            parent[int(entry)] = int(fields[1])
    found = {root}
    while True:
        more = {p for p, pp in parent.items() if pp in found and p not in found}
        if not more:
            break
        found |= more
    found.discard(root)
    return {i for i in (identity(p) for p in found) if i is not None}


def alive(ident: tuple[int, str]) -> bool:
    fields = _stat(ident[0])
    return fields is not None and fields[0] != "Z" and fields[19] == ident[1]


def describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


def mentions(pid: int, text: str) -> bool:
    """Whether the process's command line or working directory names `text`."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = ""
    return text in describe(pid) or cwd.startswith(text)


class DemoRun:
    """`python -m bench.demo ARGS` in the background, with every process it starts remembered
    (the pods' engines are the node agent's children) while it runs."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.state = tmp_path / "demo"
        self.out_path = tmp_path / "demo.out"
        self.seen: set[tuple[int, str]] = set()
        with self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.demo", "--state-dir", str(self.state), *args],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._done = threading.Event()
        self._tracker = threading.Thread(target=self._track, daemon=True)
        self._tracker.start()

    def _track(self) -> None:
        while not self._done.wait(0.5):
            self.seen.update(descendants(self.proc.pid))

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._done.set()
            self._tracker.join()
            if self.proc.poll() is None:  # as Ctrl-C would: the demo stops what it started
                self.proc.terminate()
                self.proc.wait(timeout=120)

    def assert_nothing_left(self) -> None:
        assert self.seen, "no child process of the demo was ever seen"
        left = {pid: describe(pid) for pid, start in self.seen if alive((pid, start))}
        assert not left, left
        state = str(self.state)
        strays = {
            int(p): describe(int(p))
            for p in os.listdir("/proc")
            if p.isdigit() and mentions(int(p), state) and (ident := identity(int(p)))
            and alive(ident)
        }  # fmt: skip
        assert not strays, strays


def last_frame(text: str) -> str:
    return text.rsplit("=" * 100, 1)[-1]


def pod_rows(frame: str) -> list[list[str]]:
    rows = frame.split("\nPODS\n", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    return [r.split() for r in rows]


def test_make_demo_runs_a_fleet_that_delivers_signed_mail(
    tmp_path: Path, dns_server: DnsServer, dkim_verifier: DkimVerifier
) -> None:
    demo = DemoRun(tmp_path, "--for", str(DEMO_SECONDS), "--print-every", "15")
    code = demo.wait(timeout=DEMO_SECONDS + 600)
    text = demo.output()
    assert code == 0, text[-8000:]

    # What the user reads at the end: a fleet that ran and delivered.
    assert "demo OK: delivered" in text, text[-4000:]
    # The pool's minimum of pods runs and is ready (the autoscaler may be adding one more).
    final = last_frame(text)
    running = [row for row in pod_rows(final) if row[1] == "Running" and row[3] == "yes"]
    assert len(running) >= 2, final
    assert "stopped: traffic, operator" in text

    # The report agrees, and the mail came from the pool's sending IPs.
    report = json.loads((demo.state / "report.json").read_text())
    assert report["ok"] is True
    assert sum(p["phase"] == "Running" and p["ready"] for p in report["pods"]) >= 2
    pool = yaml.safe_load((REPO / "examples/local/sendingpool.yaml").read_text())
    sending = {ip["address"] for ip in pool["spec"]["ips"] if not ip.get("standby")}
    delivered = [d for d in report["delivered"] if d["delivered"] > 0]
    assert delivered, report
    assert {d["ip"] for d in delivered} <= sending
    assert {d["provider"] for d in delivered} <= {"gmail", "outlook", "yahoo"}

    # The kept messages are DKIM-signed with the keys of the pool's Secret: Perl Mail::DKIM
    # verifies both signatures against the example keys' records.
    for key in (RSA_KEY, ED_KEY):
        dns_server.add_txt(f"{key.selector}._domainkey.{key.domain}", dns_txt_record(key))
    kept = sorted((demo.state / "delivered").glob("*.eml"))
    assert kept, "the demo kept no delivered message"
    for path in kept[:3]:
        sigs = dkim_verifier(path.read_bytes())
        assert [s["result"] for s in sigs] == ["pass", "pass"], (path.name, sigs)
        assert {s["domain"] for s in sigs} == {"example.test"}
        assert {s["selector"] for s in sigs} == {RSA_KEY.selector, ED_KEY.selector}

    # Nothing the demo started is left running.
    demo.assert_nothing_left()


def test_sigterm_stops_a_running_demo_and_everything_it_started(tmp_path: Path) -> None:
    """Without --for the demo runs until Ctrl-C or SIGTERM; then it stops what it started."""
    demo = DemoRun(tmp_path, "--print-every", "2")

    def delivering() -> bool:
        if demo.proc.poll() is not None:
            raise AssertionError(f"the demo exited early:\n{demo.output()[-4000:]}")
        frame = last_frame(demo.output())
        return "demo ·" in frame and " · delivered 0" not in frame

    try:
        wait_until(delivering, timeout=600, interval=1.0, what="the demo showing deliveries")
    finally:
        demo.proc.send_signal(signal.SIGTERM)
        code = demo.wait(timeout=180)
    text = demo.output()
    assert code == 0, text[-4000:]
    assert "\ndelivered " in text  # the verdict, said once more at the end
    assert "stopped: traffic, operator" in text
    demo.assert_nothing_left()
