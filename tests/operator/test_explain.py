"""`kubectl explain` on the local API server describes every field of the four kinds: each
object's own description and every field under it, with the words of the models' docstrings
(the CRDs are generated from them). A field added without a docstring fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
CRDS = sorted((REPO / "crds").glob("*.mailfleet.io.yaml"))
FIELD = re.compile(r"^  (\S+)\s+<[^>]+>")


def objects(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object node with properties, by its explain path (arrays are transparent)."""
    if "items" in schema:
        schema = schema["items"]
    props = schema.get("properties") or {}
    if props:
        yield path, props
    for name, sub in props.items():
        if path.count(".") == 0 and name == "metadata":
            continue  # ObjectMeta: the API server's own documentation
        yield from objects(sub, f"{path}.{name}")


def explained_fields(text: str) -> dict[str, str]:
    """FIELDS of `kubectl explain` output: name -> its description (joined lines)."""
    fields: dict[str, list[str]] = {}
    current: str | None = None
    in_fields = False
    for line in text.splitlines():
        if line.startswith("FIELDS:"):
            in_fields = True
            continue
        if not in_fields:
            continue
        m = FIELD.match(line)
        if m:
            current = m.group(1)
            fields[current] = []
        elif current is not None and line.startswith("    "):
            fields[current].append(line.strip())
    return {k: " ".join(v).strip() for k, v in fields.items()}


def words(description: str) -> str:
    return " ".join(description.split()[:6])


@pytest.mark.parametrize("crd_file", CRDS, ids=[p.name.split(".")[0] for p in CRDS])
def test_kubectl_explain_describes_every_field(mailfleet_crds: Any, crd_file: Path) -> None:
    crd = yaml.safe_load(crd_file.read_text())
    plural = crd["spec"]["names"]["plural"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    nodes = list(objects(schema, plural))

    def explain(path: str) -> str:
        proc = mailfleet_crds.kubectl("explain", path, check=False, timeout=60)
        assert proc.returncode == 0, f"kubectl explain {path}: {proc.stderr}"
        return str(proc.stdout)

    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(explain, [p for p, _ in nodes]))
    undocumented = []
    for (path, props), out in zip(nodes, outputs, strict=True):
        shown = explained_fields(out)
        for name, sub in props.items():
            where = f"{path}.{name}"
            assert name in shown, f"kubectl explain {path} does not list {name}:\n{out}"
            if not shown[name]:
                undocumented.append(where)
            elif sub.get("description"):
                # The description kubectl shows is the model's docstring.
                assert words(sub["description"]) in shown[name], (where, shown[name])
    assert undocumented == [], "fields kubectl explain shows without a description"
    assert len(nodes) >= 5
