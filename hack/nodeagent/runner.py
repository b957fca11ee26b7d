"""Start one container process: ``unshare --mount --uts --propagation private python3 runner.py``
with the spec (JSON) on stdin.

Runs inside the container's fresh mount namespace: bind-mounts each volume onto its mountPath
(creating a missing mount point, read-only where asked), drops to the pod's uid/gid/groups,
changes to the working directory and execs the command with exactly the container's env. With
``"mounts": []`` it only does the rest, e.g. for a preStop or exec probe entered with
``nsenter -t PID -m -u``. The spec comes on stdin, not as a file: it holds the container's env
(secrets), and inside a container's mount namespace the agent's state dir may be covered by a
volume (an emptyDir on /tmp). Any failure is written to the inherited fd spec["errfd"] and ends
with exit code 128, so the agent can report a StartError with the reason. Standard
library only, run by path.
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
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
# Per-mount flags a read-only remount must keep (dropping them would loosen the mount).
_KEEP = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}
MS_BIND = 4096
MS_REC = 16384

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(src: str | None, dst: str, flags: int) -> None:
    if _libc.mount(None if src is None else src.encode(), dst.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")


def _bind(m: dict[str, Any], fd: int) -> None:
    # Mount from the fd opened before any mount: an earlier mount (an emptyDir on /tmp) may
    # cover the path of a later volume's source (the agent's state dir under /tmp).
    src, dst = f"/proc/self/fd/{fd}", m["dst"]
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        if not os.path.exists(dst):
            Path(dst).touch()
    _mount(src, dst, MS_BIND | MS_REC)
    if m.get("readOnly"):
        _mount(src, dst, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)


def _read_only_root(volumes: set[str]) -> None:
    """securityContext.readOnlyRootFilesystem: every mount of this namespace except the
    volumes, /proc, /sys and /dev becomes read-only (the volumes are bound before, since a bind
    mount takes over its source mount's read-only flag)."""
    with open("/proc/self/mountinfo") as f:
        entries = [line.split() for line in f]
    for fields in entries:
        target = fields[4].encode().decode("unicode_escape")
        options = fields[5].split(",")
        special = any(target == p or target.startswith(p + "/") for p in ("/proc", "/sys", "/dev"))
        if "ro" in options or special or target in volumes:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for o in options:
            flags |= _KEEP.get(o, 0)
        try:
            _mount(None, target, flags)
        except FileNotFoundError:
            # A mount no path reaches any more (its mount point removed or covered by a later
            # mount, e.g. a real kubelet's volumes on the same machine): nothing in this
            # namespace can write through it either.
            continue


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    errfd: int | None = spec.get("errfd")
    try:
        for procs in spec.get("cgroupProcs", []):
            # Joined before anything else runs: the container's every process is accounted.
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        mounts = spec.get("mounts", [])
        fds = [os.open(m["src"], os.O_PATH | os.O_CLOEXEC) for m in mounts]
        # The node's programs (the repository and its venv) stand in for the image: a volume
        # mounted over where they live (an emptyDir on /tmp, with the checkout under /tmp) must
        # not hide them.
        keep = [
            (k, os.open(k, os.O_PATH | os.O_CLOEXEC), os.stat(k))
            for k in spec.get("keep", [])
            if os.path.isdir(k)
        ]
        for m, fd in zip(mounts, fds, strict=True):
            _bind(m, fd)
            os.close(fd)
        for path, fd, before in keep:
            try:
                now = os.stat(path)
                hidden = (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino)
            except OSError:
                hidden = True
            if hidden:
                os.makedirs(path, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", path, MS_BIND | MS_REC)
            os.close(fd)
        if spec.get("readOnlyRoot"):
            _read_only_root({os.path.normpath(m["dst"]) for m in mounts})
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
        if errfd is not None:
            os.set_inheritable(errfd, False)  # closed by a successful exec: no start error
        if spec.get("readyfd") is not None:
            os.write(spec["readyfd"], b"1")
            os.close(spec["readyfd"])
        try:
            os.execvpe(argv[0], argv, spec["env"])
        except FileNotFoundError:
            # As container runtimes word it.
            raise RuntimeError(f'exec: "{argv[0]}": executable file not found in $PATH') from None
    except Exception as e:
        msg = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
        print(f"nodeagent runner: {msg}", file=sys.stderr)
        if errfd is not None:
            os.write(errfd, msg.encode())
            os.close(errfd)
        return 128
    return 0  # not reached: exec replaced the process


if __name__ == "__main__":
    sys.exit(main())
