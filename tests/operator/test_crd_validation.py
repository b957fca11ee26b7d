"""The CRDs on a real kube-apiserver: the examples apply as is, every invalid manifest under
tests/operator/invalid/ is rejected with a message that names the field, and the status and
scale subresources, printer columns, short names and category work as a user would use them."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailfleet.operator.api import crd_models as m

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
INVALID = sorted((REPO / "tests/operator/invalid").glob("*.yaml"))
NS = "crd-validation"


def run(
    kube_cluster: Any, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = kube_cluster.kubectl(*args, check=False, input=input)
    return result


def ok(kube_cluster: Any, *args: str, input: str | None = None) -> str:
    proc = run(kube_cluster, *args, input=input)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}:\n{proc.stderr}{proc.stdout}"
    return proc.stdout


@pytest.fixture(scope="module")
def crds(kube_cluster: Any) -> Iterator[Any]:
    # Server-side apply: other test modules may apply the same CRDs to the shared cluster.
    ok(kube_cluster, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kube_cluster.control_plane.wait_crds_established([k.crd_name for k in m.KINDS])
    ok(kube_cluster, "create", "namespace", NS)
    yield kube_cluster
    run(kube_cluster, "delete", "namespace", NS, "--wait=false")


@pytest.fixture(scope="module")
def examples(crds: Any) -> Any:
    out = ok(crds, "apply", "-n", NS, "-f", str(REPO / "examples"))
    assert out.count("created") == 4, out
    return crds


def test_local_examples_apply_as_is(crds: Any) -> None:
    """examples/local/ (what `make demo` runs) is valid too, in a namespace of its own."""
    ns = f"{NS}-local"
    ok(crds, "create", "namespace", ns)
    try:
        proc = run(crds, "apply", "-n", ns, "-f", str(REPO / "examples" / "local"))
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert proc.stdout.count("created") == 3 and not proc.stderr, proc.stderr + proc.stdout
        listed = ok(crds, "get", "mailfleet", "-n", ns, "-o", "name")
        assert sorted(listed.split()) == [
            "deliverypolicy.mailfleet.io/simulated-providers",
            "ipwarmup.mailfleet.io/local-mta3",
            "sendingpool.mailfleet.io/local",
        ]
        pool = json.loads(ok(crds, "get", "-n", ns, "sendingpool", "local", "-o", "json"))
        # Nothing was pruned: the server kept every field the manifest sets.
        assert pool["spec"]["routing"]["mxPort"] == 10025
        m.parse_object(pool)
    finally:
        run(crds, "delete", "namespace", ns, "--wait=false")


def get(kube_cluster: Any, *what: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(ok(kube_cluster, "get", "-n", NS, *what, "-o", "json"))
    return obj


def test_crds_are_accepted_with_their_names(crds: Any) -> None:
    for k in m.KINDS:
        crd = json.loads(ok(crds, "get", "crd", k.crd_name, "-o", "json"))
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["NamesAccepted"] == "True" and conditions["Established"] == "True"
        assert crd["status"]["acceptedNames"]["shortNames"] == list(k.short_names)


def test_short_names_clash_with_nothing_in_the_cluster(crds: Any) -> None:
    ours = {s for k in m.KINDS for s in k.short_names}
    table = ok(crds, "api-resources", "--no-headers", "-o", "wide")
    others: set[str] = set()
    for line in table.splitlines():
        cols = line.split()
        if "mailfleet.io" in line or len(cols) < 5:
            continue
        # NAME [SHORTNAMES] APIVERSION NAMESPACED KIND VERBS...: shortnames hold commas or
        # a single word before the group/version column.
        if "/" not in cols[1] and cols[1] not in ("v1",):
            others |= set(cols[1].split(","))
    assert others, table  # the parse found the built-ins' short names (po, svc, ...)
    assert {"po", "svc", "deploy"} <= others
    assert not ours & others


def test_examples_apply_as_is_and_get_server_defaults(examples: Any) -> None:
    listed = ok(examples, "get", "mailfleet", "-n", NS, "-o", "name")
    assert sorted(listed.split()) == [
        "deliverypolicy.mailfleet.io/big-providers",
        "ipwarmup.mailfleet.io/transactional-mta3",
        "sendingdomain.mailfleet.io/example-com",
        "sendingpool.mailfleet.io/transactional",
    ]
    pool = get(examples, "sendingpool", "transactional")
    spec = pool["spec"]
    # Defaults come from the schema, not from the operator.
    assert spec["autoscaling"]["enabled"] is True  # as the example says
    assert spec["egress"] == {"mode": "bind"}
    assert spec["routing"] == {
        "routes": {},
        "mxPort": 25,
        "dns": {"nameservers": [], "port": 53},
        "allowPrivateMX": False,  # MX answers in private ranges are refused unless asked for
    }
    assert spec["ips"][0]["standby"] is False
    assert spec["submission"]["maxRecipients"] == 100
    assert spec["health"]["quarantine"]["minAttempts"] == 200
    policy = get(examples, "deliverypolicy", "big-providers")
    assert policy["spec"]["providers"][1]["adaptive"]["floor"] == "10/min"
    assert policy["spec"]["providers"][0]["retry"]["jitter"] == 0.2
    warmup = get(examples, "ipwarmup", "transactional-mta3")
    assert warmup["spec"]["paused"] is False and warmup["spec"]["overflow"] == "spill"
    # The operator's models read what the server stored.
    for obj in (pool, policy, warmup):
        m.parse_object(obj)
    # Applying again writes nothing. (kubectl may still say "configured": its merge patch
    # resends atomic lists whose items the server defaulted, and the server finds no change.)
    versions = ["-o", "jsonpath={.items[*].metadata.resourceVersion}"]
    before = ok(examples, "get", "mailfleet", "-n", NS, *versions)
    ok(examples, "apply", "-n", NS, "-f", str(REPO / "examples"))
    assert ok(examples, "get", "mailfleet", "-n", NS, *versions) == before


def test_short_names_and_category_work(examples: Any) -> None:
    out = ok(examples, "get", "-n", NS, "mfpool,mfpolicy,mfwarmup,mfdomain", "-o", "name")
    assert len(out.split()) == 4


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_naming_the_field(crds: Any, path: Path) -> None:
    text = path.read_text()
    field = re.search(r"^# invalid: (.+)$", text, re.M)
    expect = re.search(r"^# expect: (.+)$", text, re.M)
    assert field and expect
    proc = run(crds, "apply", "-n", NS, "-f", str(path))
    assert proc.returncode != 0, f"{path.name} was accepted:\n{proc.stdout}"
    assert expect.group(1) in proc.stderr
    assert field.group(1) in proc.stderr
    doc = yaml.safe_load(text)
    name = doc["metadata"]["name"]
    gone = run(crds, "get", "-n", NS, doc["kind"].lower(), name)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_scale_subresource_drives_replicas_desired(examples: Any) -> None:
    # A pool nobody scaled yet answers GET /scale (what an HPA does first): desired defaults.
    path = f"/apis/mailfleet.io/v1alpha1/namespaces/{NS}/sendingpools/transactional/scale"
    fresh = json.loads(ok(examples, "get", "--raw", path))
    assert fresh["spec"]["replicas"] == 1
    ok(examples, "scale", "-n", NS, "sendingpool/transactional", "--replicas=4")
    assert get(examples, "sendingpool", "transactional")["spec"]["replicas"] == {
        "min": 2,
        "max": 10,
        "desired": 4,
    }
    scale = json.loads(ok(examples, "get", "--raw", path))
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 4


STATUS = {
    "observedGeneration": 1,
    "conditions": [
        {
            "type": "Ready",
            "status": "False",
            "reason": "DKIMSecretMissing",
            "message": "Secret dkim-example-com not found",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
        }
    ],
    "replicas": 2,
    "desiredReplicas": 3,
    "readyReplicas": 1,
    "selector": "app.kubernetes.io/instance=transactional",
    "drainingPods": [],
    "handoffLeft": 0,
    "scaleReason": "queue 12000 messages is 6000 per pod over 2 pods, above the target of 5000",
    "lastScaleTime": "2026-01-02T03:04:05Z",
    "queueDepth": 1234,
    "configHash": "0123456789abcdef",
    "updatedPods": 1,
    "pods": [
        {
            "name": "transactional-0",
            "ip": "10.1.0.5",
            "ready": True,
            "configHash": "0123456789abcdef",
            "queued": 1200,
            "draining": False,
        },
        {"name": "transactional-1", "ready": False},
    ],
    "activeIPs": 2,
    "quarantinedIPs": 0,
    "ips": [
        {"address": "203.0.113.10", "state": "active", "since": "2026-01-02T03:04:05Z"},
        {"address": "203.0.113.11", "state": "standby"},
        {"address": "203.0.113.12", "state": "warming", "reason": "IPWarmup/transactional-mta3"},
    ],
}


def test_status_subresource_and_printer_columns(examples: Any) -> None:
    patch = json.dumps({"status": STATUS})
    ok(examples, "patch", "-n", NS, "sendingpool", "transactional", "--subresource=status",
       "--type=merge", "-p", patch)  # fmt: skip
    status = get(examples, "sendingpool", "transactional")["status"]
    assert status["queueDepth"] == 1234 and status["ips"][2]["state"] == "warming"
    m.SendingPoolStatus.model_validate(status)
    table = ok(examples, "get", "-n", NS, "mfpool", "transactional").splitlines()
    header, row = table[0].split(), table[1].split()
    assert header == [
        "NAME", "READY", "REASON", "REPLICAS", "DESIRED", "READY-PODS", "QUEUE", "CONFIG-CURRENT",
        "ACTIVE-IPS", "QUARANTINED", "AGE",
    ]  # fmt: skip
    assert row[:10] == [
        "transactional", "False", "DKIMSecretMissing", "2", "3", "1", "1234", "1", "2", "0"
    ]  # fmt: skip
    wide = ok(examples, "get", "-n", NS, "mfpool", "transactional", "-o", "wide")
    assert "Secret dkim-example-com not found" in wide
    # The scale subresource reports the status side and the selector HPA needs.
    path = f"/apis/mailfleet.io/v1alpha1/namespaces/{NS}/sendingpools/transactional/scale"
    scale = json.loads(ok(examples, "get", "--raw", path))
    assert scale["status"] == {
        "replicas": 2,
        "selector": "app.kubernetes.io/instance=transactional",
    }
    # A bad status is rejected too.
    bad = json.dumps({"status": {"ips": [{"address": "203.0.113.10", "state": "burning"}]}})
    proc = run(examples, "patch", "-n", NS, "sendingpool", "transactional",
               "--subresource=status", "--type=merge", "-p", bad)  # fmt: skip
    assert proc.returncode != 0 and "status.ips[0].state" in proc.stderr


def test_policy_and_warmup_columns(examples: Any) -> None:
    status = {"poolCount": 1, "providerCount": 3, "pools": ["transactional"]}
    ok(examples, "patch", "-n", NS, "deliverypolicy", "big-providers", "--subresource=status",
       "--type=merge", "-p", json.dumps({"status": status}))  # fmt: skip
    table = ok(examples, "get", "-n", NS, "mfpolicy").splitlines()
    assert table[0].split()[:3] == ["NAME", "PROVIDERS", "POOLS"]
    assert table[1].split()[:3] == ["big-providers", "3", "1"]
    warm = {"phase": "Warming", "day": 3, "todayCap": 250, "sentToday": {"gmail": 100}}
    ok(examples, "patch", "-n", NS, "ipwarmup", "transactional-mta3", "--subresource=status",
       "--type=merge", "-p", json.dumps({"status": warm}))  # fmt: skip
    table = ok(examples, "get", "-n", NS, "mfwarmup").splitlines()
    assert table[0].split()[:5] == ["NAME", "POOL", "PHASE", "DAY", "TODAY-CAP"]
    assert table[1].split()[:5] == ["transactional-mta3", "transactional", "Warming", "3", "250"]
