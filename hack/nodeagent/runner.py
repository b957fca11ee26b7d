"""Start one container process: ``unshare --mount --propagation private python3 runner.py SPEC``.

Runs inside the container's fresh mount namespace: bind-mounts each volume onto its mountPath
(creating a missing mount point, read-only where asked), drops to the pod's uid/gid/groups,
changes to the working directory and execs the command with exactly the container's env. With
``"mounts": []`` it only does the rest, e.g. for a preStop or exec probe entered with
``nsenter -t PID -m``. Any failure is written to spec["errfile"] and ends with exit code 128, so
the agent can report a StartError with the reason. Standard library only, run by path.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(src: str, dst: str, flags: int) -> None:
    if _libc.mount(src.encode(), dst.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")


def _bind(m: dict[str, Any]) -> None:
    src, dst = m["src"], m["dst"]
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        if not os.path.exists(dst):
            Path(dst).touch()
    _mount(src, dst, MS_BIND | MS_REC)
    if m.get("readOnly"):
        _mount(src, dst, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)


def main(spec_path: str) -> int:
    spec: dict[str, Any] = json.loads(Path(spec_path).read_text())
    try:
        for m in spec.get("mounts", []):
            _bind(m)
        if spec.get("hostname"):
            socket.sethostname(spec["hostname"])  # in the container's own UTS namespace
        groups = spec.get("groups")
        if groups is not None and (spec.get("gid") is not None or spec.get("uid") is not None):
            os.setgroups([int(g) for g in groups])
        if spec.get("gid") is not None:
            os.setgid(int(spec["gid"]))
        if spec.get("uid") is not None:
            os.setuid(int(spec["uid"]))
        os.chdir(spec.get("cwd") or "/")
        os.umask(0o022)
        argv: list[str] = spec["argv"]
        if not argv:
            raise RuntimeError("no command: the container has neither command nor args")
        os.execvpe(argv[0], argv, spec["env"])
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        print(f"nodeagent runner: {msg}", file=sys.stderr)
        errfile = spec.get("errfile")
        if errfile:
            Path(errfile).write_text(msg)
        return 128
    return 0  # not reached: exec replaced the process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
