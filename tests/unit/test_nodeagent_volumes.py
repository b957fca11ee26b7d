"""The atomic writer behind configMap/secret volumes (hack/nodeagent/volumes.py): the file layout
a kubelet produces, and updates that swap every file at once."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

_HACK = str(Path(__file__).resolve().parents[2] / "hack")
if _HACK not in sys.path:
    sys.path.insert(0, _HACK)
volumes: Any = importlib.import_module("nodeagent.volumes")


def listing(target: Path) -> dict[str, str]:
    """Visible entry -> what it is (symlink target or 'dir')."""
    return {
        e.name: os.readlink(e) if e.is_symlink() else "dir"
        for e in sorted(target.iterdir())
        if not e.name.startswith("..") or e.name == "..data"
    }


def test_first_write_has_the_kubelet_layout(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    changed = volumes.write_atomic(target, {"app.conf": (b"v1", 0o644), "sub/tok": (b"t", 0o400)})
    assert changed
    data = os.readlink(target / "..data")
    assert data.startswith("..") and (target / data).is_dir()
    assert listing(target) == {"..data": data, "app.conf": "..data/app.conf", "sub": "..data/sub"}
    assert (target / "app.conf").read_bytes() == b"v1"
    assert (target / "sub" / "tok").read_bytes() == b"t"
    assert (target / "sub" / "tok").stat().st_mode & 0o777 == 0o400
    assert volumes.current(target) == {"app.conf": (b"v1", 0o644), "sub/tok": (b"t", 0o400)}


def test_unchanged_payload_is_not_rewritten(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    volumes.write_atomic(target, {"a": (b"1", 0o644)})
    before = os.readlink(target / "..data")
    assert not volumes.write_atomic(target, {"a": (b"1", 0o644)})
    assert os.readlink(target / "..data") == before
    # A mode change alone is a change.
    assert volumes.write_atomic(target, {"a": (b"1", 0o600)})


def test_update_swaps_data_and_drops_old_keys(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    volumes.write_atomic(target, {"a": (b"1", 0o644), "gone": (b"x", 0o644)})
    old = os.readlink(target / "..data")
    held = (target / "a").open("rb")  # a reader holding the old file keeps reading it whole
    assert volumes.write_atomic(target, {"a": (b"2", 0o644), "new": (b"n", 0o644)})
    new = os.readlink(target / "..data")
    assert new != old and not (target / old).exists()
    assert listing(target) == {"..data": new, "a": "..data/a", "new": "..data/new"}
    assert (target / "a").read_bytes() == b"2"
    assert held.read() == b"1"
    held.close()
    assert not (target / "..data_tmp").exists()


def test_empty_payload_leaves_an_empty_volume(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    volumes.write_atomic(target, {"a": (b"1", 0o644)})
    assert volumes.write_atomic(target, {})
    assert listing(target) == {"..data": os.readlink(target / "..data")}
    assert volumes.current(target) == {}


def test_group_ownership_for_fs_group(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    gid = 4242 if os.geteuid() == 0 else os.getegid()
    volumes.write_atomic(target, {"d/s": (b"x", 0o440)}, gid=gid)
    data = target / os.readlink(target / "..data")
    assert (data / "d" / "s").stat().st_gid == gid
    assert (data / "d").stat().st_gid == gid
