"""How the operator sizes a pod's engine processes from its CPU request: one per whole CPU, at
least one; the command and the engine config say so only when there are several."""

from __future__ import annotations

import pytest
import yaml
from fixtures.objects import child, inputs, pool

from mailfleet.mta.config import parse_config
from mailfleet.operator.api import naming
from mailfleet.operator.decide import render


@pytest.mark.parametrize(
    ("cpu", "processes"),
    [
        (None, 1),
        ("100m", 1),
        ("999m", 1),
        ("1", 1),
        ("1500m", 1),
        ("1.9", 1),
        ("2", 2),
        ("2000m", 2),
        ("2.5", 2),
        (3, 3),
        ("4", 4),
        ("2e0", 2),
        ("0", 1),
    ],
)
def test_one_process_per_whole_cpu_requested(cpu: str | int | None, processes: int) -> None:
    requests = {"memory": "256Mi"} | ({"cpu": cpu} if cpu is not None else {})
    p = pool(resources={"requests": requests})
    assert naming.engine_processes(p.spec) == processes
    out = render.render_pool(inputs(p))
    (c,) = child(out, "StatefulSet", "transactional")["spec"]["template"]["spec"]["containers"]
    cm = child(out, "ConfigMap", "transactional-config")
    cfg = parse_config(yaml.safe_load(cm["data"]["engine.yaml"]))
    if processes == 1:
        # Today's pods, unchanged: no flag, no reusePort.
        assert "--processes" not in c["command"]
        assert cfg.submission.reuse_port is False
    else:
        assert c["command"][-2:] == ["--processes", str(processes)]
        assert cfg.submission.reuse_port is True


def test_a_pool_without_resources_gets_the_default_request() -> None:
    assert naming.engine_processes(pool().spec) == 1
