"""The README's engine-only quick start: `make demo-engine` (here `python -m bench.demo_engine
--once`) starts the engine with examples/mta/local.yaml and a local sink, sends a message with
swaks, and it arrives DKIM-signed (both example keys)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_demo_delivers_a_signed_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.demo_engine", "--once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "engine ready: submission 127.0.0.1:2525" in done.stdout
    assert "250 2.0.0 Ok: queued as" in done.stdout
    assert "DKIM: 2 signature(s), verified: [True, True]" in done.stdout
    assert "d=example.test" in done.stdout
