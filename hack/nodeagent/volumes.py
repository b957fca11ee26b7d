"""The kubelet's atomic writer (pkg/volume/util/atomic_writer.go) for configMap, secret,
downwardAPI and projected volumes.

A volume directory holds a timestamped directory with the files, a ``..data`` symlink to it and,
for each top-level name, a symlink ``name -> ..data/name``. An update writes a new timestamped
directory and renames a fresh symlink over ``..data``, so a reader sees either the old or the new
set of files, never a mix; programs that watch the file (the engine polls its config) see the
change through the symlinks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

DATA = "..data"
DATA_TMP = "..data_tmp"

Payload = Mapping[str, tuple[bytes, int]]


def _timestamp_dir(parent: Path) -> Path:
    t = time.time_ns()
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime(t // 10**9)) + f".{t % 10**9:09d}"
    for n in range(1000):
        candidate = parent / f"..{stamp}{'' if n == 0 else f'_{n}'}"
        try:
            candidate.mkdir(mode=0o755)
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a timestamped directory in {parent}")


def current(target: Path) -> dict[str, tuple[bytes, int]] | None:
    """The payload the volume holds now (None if it was never written)."""
    data = target / DATA
    if not data.is_symlink():
        return None
    root = target / os.readlink(data)
    out: dict[str, tuple[bytes, int]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = (p.read_bytes(), p.stat().st_mode & 0o7777)
    return out


def write_atomic(target: Path, payload: Payload, *, gid: int | None = None) -> bool:
    """Make target's visible files equal payload; returns whether anything changed.

    gid (the pod's fsGroup): the files and directories are group-owned by it, as the kubelet
    does, so a non-root process in that group can read a 0440 secret."""
    target.mkdir(parents=True, exist_ok=True)
    old = current(target)
    if old is not None and old == dict(payload):
        _ensure_visible(target, payload)
        return False
    ts = _timestamp_dir(target)
    for rel, (content, mode) in payload.items():
        path = ts / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
        if gid is not None:
            os.chown(path, -1, gid)
    if gid is not None:
        for dirpath, dirs, _files in os.walk(ts):
            os.chown(dirpath, -1, gid)
            for d in dirs:
                os.chown(Path(dirpath) / d, -1, gid)
    old_ts = os.readlink(target / DATA) if (target / DATA).is_symlink() else None
    tmp = target / DATA_TMP
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(ts.name)
    tmp.replace(target / DATA)
    _ensure_visible(target, payload)
    # Names that were visible before and are not part of the payload any more.
    wanted = {rel.split("/", 1)[0] for rel in payload}
    for entry in target.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.name not in wanted and entry.is_symlink():
            entry.unlink()
    if old_ts is not None and old_ts != ts.name:
        shutil.rmtree(target / old_ts, ignore_errors=True)
    return True


def _ensure_visible(target: Path, payload: Payload) -> None:
    for top in {rel.split("/", 1)[0] for rel in payload}:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"{DATA}/{top}")
