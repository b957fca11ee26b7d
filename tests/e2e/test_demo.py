"""`make demo DEMO_ARGS='--for 60'`: the fleet demo runs a pool whose pods really run on the local
node, the ISP simulator receives DKIM-signed mail from the pool's IPs, the demo says so and
exits 0, and every process it started is gone afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from fixtures.dkimverify import DkimVerifier
from fixtures.dnsserver import DnsServer
from fixtures.keys import ED_KEY, RSA_KEY

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


def test_make_demo_runs_a_fleet_that_delivers_signed_mail(
    tmp_path: Path, dns_server: DnsServer, dkim_verifier: DkimVerifier
) -> None:
    state = tmp_path / "demo"
    out_path = tmp_path / "demo.out"
    seen: set[tuple[int, str]] = set()
    with out_path.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "bench.demo", "--for", str(DEMO_SECONDS), "--state-dir",
             str(state), "--print-every", "15"],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        # Remember every process the demo starts (the pods' engines are the node agent's
        # children) while it runs, to check afterwards that none is left.
        done = threading.Event()

        def track() -> None:
            while not done.wait(0.5):
                seen.update(descendants(demo.pid))

        tracker = threading.Thread(target=track, daemon=True)
        tracker.start()
        try:
            code = demo.wait(timeout=DEMO_SECONDS + 600)
        finally:
            done.set()
            tracker.join()
            if demo.poll() is None:  # as Ctrl-C would: the demo stops what it started
                demo.terminate()
                demo.wait(timeout=120)
    text = out_path.read_text(errors="replace")
    assert code == 0, text[-8000:]

    # What the user reads at the end: a fleet that ran and delivered.
    assert "demo OK: delivered" in text, text[-4000:]
    final = text.rsplit("=" * 100, 1)[-1]
    pods = final.split("\nPODS\n", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert len(pods) >= 2, final
    assert all(row.split()[1:2] == ["Running"] and row.split()[3] == "yes" for row in pods), final
    assert "stopped: traffic, operator" in text

    # The report agrees, and the mail came from the pool's sending IPs.
    report = json.loads((state / "report.json").read_text())
    assert report["ok"] is True
    assert {p["phase"] for p in report["pods"]} == {"Running"}
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
    kept = sorted((state / "delivered").glob("*.eml"))
    assert kept, "the demo kept no delivered message"
    for path in kept[:3]:
        sigs = dkim_verifier(path.read_bytes())
        assert [s["result"] for s in sigs] == ["pass", "pass"], (path.name, sigs)
        assert {s["domain"] for s in sigs} == {"example.test"}
        assert {s["selector"] for s in sigs} == {RSA_KEY.selector, ED_KEY.selector}

    # Nothing the demo started is left running.
    assert seen, "no child process of the demo was ever seen"
    left = {pid: describe(pid) for pid, start in seen if alive((pid, start))}
    assert not left, left
    strays = {
        int(p): describe(int(p))
        for p in os.listdir("/proc")
        if p.isdigit()
        and mentions(int(p), str(state))
        and (ident := identity(int(p)))
        and alive(ident)
    }
    assert not strays, strays
