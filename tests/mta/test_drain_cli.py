"""`mailfleet mta drain`, as the pods' preStop hook runs it: the hook gets no $(VAR) expansion and
the image needs no shell, so the engine's address comes from the environment (POD_IP)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from fixtures.engine import MAILFLEET, EngineProc


def drain(eng: EngineProc, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [MAILFLEET, "mta", "drain", "--config", str(eng.config_path), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def test_drain_finds_the_engine_by_the_address_in_an_environment_variable(
    mta_engine: Callable[..., EngineProc],
) -> None:
    eng = mta_engine({"routing": {"routes": {"*": "127.0.0.1:9"}}}, host="127.0.0.7")
    base = {k: v for k, v in os.environ.items() if k != "POD_IP"}

    missing = drain(eng, base, "--listen-address-env", "POD_IP", "--wait", "5")
    assert missing.returncode == 2
    assert "--listen-address-env: $POD_IP is not set" in missing.stderr
    assert eng.status()["draining"] is False

    done = drain(eng, {**base, "POD_IP": "127.0.0.7"}, "--listen-address-env", "POD_IP",
                 "--wait", "5")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "empty" in done.stdout
    assert eng.status()["draining"] is True
