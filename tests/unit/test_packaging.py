"""The package list in pyproject.toml names every folder of code: the editable install the tests
run from finds a subpackage missing from the list, the image's `pip install .` does not."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where each top-level import package lives (pyproject's package-dir).
FOLDERS = {"mailfleet": "src/mailfleet", "mailfleet.operator": "operator", "mailfleet.mta": "mta"}


def _on_disk() -> set[str]:
    out = set()
    for package, folder in FOLDERS.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            out.add(".".join([package, *rel.parts]))
    return out


def test_every_package_folder_is_listed() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == FOLDERS
    assert sorted(_on_disk()) == sorted(setuptools["packages"])
