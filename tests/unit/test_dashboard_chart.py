"""The chart ships the Grafana dashboard as a ConfigMap for Grafana's sidecar, behind a value;
the JSON is dashboards/mailfleet.json as is (its queries are tested against a real Prometheus in
tests/operator/test_dashboard_queries.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailfleet"


def configmaps(helm: str, *sets: str) -> list[dict[str, Any]]:
    args = [helm, "template", "mf", str(CHART), "-n", "mail-system", "--kube-version", "1.34.4"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d and d["kind"] == "ConfigMap"]


def test_the_dashboard_configmap_is_behind_a_value(helm: str) -> None:
    assert configmaps(helm) == []
    (cm,) = configmaps(helm, "grafana.dashboard.enabled=true", "grafana.dashboard.namespace=obs")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "obs"
    shipped = json.loads(cm["data"]["mailfleet.json"])
    assert shipped == json.loads((CHART / "dashboards" / "mailfleet.json").read_text())
    assert shipped["uid"] == "mailfleet-overview"
    ids = [p["id"] for p in shipped["panels"]]
    assert len(ids) == len(set(ids))
