"""`make demo-engine`: one engine (examples/mta/local.yaml), a local sink, one DKIM-signed message.

    python -m bench.demo_engine [--once]

Starts smtp-sink on 127.0.0.1:2526 (dumping messages under .local/demo-engine/sink/), the engine
with examples/mta/local.yaml, sends a message with swaks, shows it as the sink received it with its
DKIM signatures checked, then keeps running until Ctrl-C (or exits with --once).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import dkim

from mailfleet.mta.config import load_config
from mailfleet.mta.dkimkeys import dns_txt_record
from tests.fixtures.procs import Proc
from tests.fixtures.smtppeers import SmtpSink, swaks

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples/mta/local.yaml"
MAILFLEET = str(Path(sys.executable).parent / "mailfleet")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--once", action="store_true", help="exit after the first message")
    args = ap.parse_args()
    cfg = load_config(CONFIG)
    work = ROOT / ".local/demo-engine"
    shutil.rmtree(work / "sink", ignore_errors=True)
    sink = SmtpSink("127.0.0.1", 2526, dump_dir=work / "sink", workdir=work / "sink-work").start()
    engine = Proc(
        [MAILFLEET, "mta", "--config", str(CONFIG)], name="engine", log_dir=work, cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:8025/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if not engine.running() or time.monotonic() > deadline:
                print(f"the engine did not start:\n{engine.output()}", file=sys.stderr)
                return 1
            time.sleep(0.1)
        print("engine ready: submission 127.0.0.1:2525, admin http://127.0.0.1:8025")
        cmd = "swaks --server 127.0.0.1:2525 --from app@example.test --to someone@example.org"
        print(f"$ {cmd} --header 'Subject: hello from mailfleet'")
        done = swaks(
            "127.0.0.1:2525",
            from_="app@example.test",
            to="someone@example.org",
            headers=["Subject: hello from mailfleet"],
        )
        for ln in done.stdout.splitlines():
            if ln.lstrip().startswith("<-") and "queued as" in ln:
                print(ln.strip())
        sink.wait_for(1, timeout=30)
        msg = sink.messages()[0]
        raw = msg.content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        head = raw.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        print("\n--- the message as the sink received it (headers) ---")
        print(head)
        records = {
            f"{k.selector}._domainkey.{k.domain}.".encode(): dns_txt_record(k).encode()
            for k in cfg.dkim.keys
        }
        sigs = raw.count(b"DKIM-Signature:")
        results = [
            dkim.DKIM(raw).verify(idx=i, dnsfunc=lambda name, timeout=5: records.get(name))
            for i in range(sigs)
        ]
        print(f"\nDKIM: {sigs} signature(s), verified: {results}")
        with urllib.request.urlopen("http://127.0.0.1:8025/v1/status", timeout=5) as r:
            print("status:", json.dumps(json.loads(r.read())["queue"]))
        if args.once:
            return 0 if results and all(results) else 1
        print("\nrunning; send more with the swaks line above. Ctrl-C stops the engine and sink.")
        while engine.running():
            time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        engine.stop()
        sink.stop()


if __name__ == "__main__":
    sys.exit(main())
