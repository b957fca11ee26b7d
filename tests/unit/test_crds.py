"""The CRDs: generated files match the models, schemas are structural, models validate like the
API server does (the same manifests, the same messages), defaults agree on both sides."""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path
from typing import Any, Literal, get_args

import pytest
import yaml
from pydantic import BaseModel, Field, ValidationError

from mailfleet.mta import units
from mailfleet.mta.config import DKIMKey
from mailfleet.mta.units import Duration, Size
from mailfleet.operator import crdgen
from mailfleet.operator.api import crd_models as m

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# examples/local/: the pool, policy and warmup `make demo` runs on this machine.
LOCAL_EXAMPLES = sorted((REPO / "examples" / "local").glob("*.yaml"))
INVALID = sorted((REPO / "tests/operator/invalid").glob("*.yaml"))
ALL_RULE_MESSAGES = [
    r.message
    for model in (
        m.Replicas,
        m.Egress,
        m.Routing,
        m.Submission,
        m.LabelSelectorRequirement,
        m.SendingPoolSpec,
        m.ProviderMatch,
        m.ResponseRule,
        m.DeliveryPolicySpec,
        m.WarmupSchedule,
        m.IPWarmupSpec,
        m.DomainDKIM,
        m.SendingDomainSpec,
        m.DomainDMARC,
        m.ReportSenders,
    )
    for r in model.cel_rules
] + [r.message for k in m.KINDS for r in k.root_rules]


def crd_docs() -> dict[str, dict[str, Any]]:
    return {name: yaml.safe_load(text) for name, text in crdgen.render().items()}


def schema_of(kind: str) -> dict[str, Any]:
    doc = crd_docs()[f"{kind}.mailfleet.io.yaml"]
    schema: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path or "(root)", node)]
    for name, sub in node.get("properties", {}).items():
        out += walk(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        out += walk(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        out += walk(node["items"], f"{path}[]")
    return out


def manifest(path: Path) -> tuple[dict[str, Any], str, str]:
    text = path.read_text()
    field = re.search(r"^# invalid: (.+)$", text, re.M)
    expect = re.search(r"^# expect: (.+)$", text, re.M)
    assert field and expect, f"{path.name}: needs '# invalid: <field>' and '# expect: <message>'"
    return yaml.safe_load(text), field.group(1), expect.group(1)


# --- generated files -----------------------------------------------------------------------


def test_committed_crds_match_the_models() -> None:
    stale = [str(p.relative_to(REPO)) for p in crdgen.drift(REPO)]
    assert stale == [], f"out of date, run `make crds`: {stale}"


def test_drift_is_detected(tmp_path: Path) -> None:
    crdgen.write(tmp_path)
    assert crdgen.drift(tmp_path) == []
    victim = tmp_path / "charts/mailfleet/crds/ipwarmups.mailfleet.io.yaml"
    victim.write_text(victim.read_text().replace("maximum: 1", "maximum: 2"))
    (tmp_path / "crds/old.mailfleet.io.yaml").write_text("{}")
    assert sorted(p.name for p in crdgen.drift(tmp_path)) == [
        "ipwarmups.mailfleet.io.yaml",
        "old.mailfleet.io.yaml",
    ]
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    assert crdgen.drift(tmp_path) == []


def test_one_crd_per_kind_with_names_and_subresources() -> None:
    docs = {d["spec"]["names"]["kind"]: d for d in crd_docs().values()}
    assert set(docs) == {"SendingPool", "DeliveryPolicy", "IPWarmup", "SendingDomain"}
    for kind, doc in docs.items():
        assert doc["metadata"]["name"] == f"{doc['spec']['names']['plural']}.mailfleet.io"
        assert doc["spec"]["names"]["categories"] == ["mailfleet"]
        version = doc["spec"]["versions"][0]
        assert version["name"] == "v1alpha1" and version["storage"] is True
        assert version["subresources"]["status"] == {}
        assert ("scale" in version["subresources"]) == (kind == "SendingPool")
    scale = docs["SendingPool"]["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas.desired",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


# Short names of the built-in resources of Kubernetes 1.34 (`kubectl api-resources`).
BUILTIN_SHORT_NAMES = {
    "cs", "cm", "ep", "ev", "limits", "ns", "no", "pvc", "pv", "po", "pt", "rc", "quota", "sa",
    "svc", "crd", "crds", "ds", "deploy", "rs", "sts", "hpa", "cj", "csr", "ing", "netpol",
    "pdb", "pc", "sc", "ipa", "vac", "rcc", "dcc",
}  # fmt: skip


def test_short_names_are_unique_and_do_not_shadow_builtins() -> None:
    names = [s for k in m.KINDS for s in k.short_names]
    assert len(names) == len(set(names))
    assert not set(names) & BUILTIN_SHORT_NAMES
    assert all(s.startswith("mf") for s in names)


def test_printer_columns_say_whether_it_is_ok() -> None:
    pool = next(k for k in m.KINDS if k.kind == "SendingPool")
    wide = {c.name for c in pool.columns}
    normal = [c.name for c in pool.columns if c.priority == 0]
    assert normal == [
        "Ready", "Reason", "Replicas", "Desired", "Ready-Pods", "Queue", "Config-Current",
        "Active-IPs", "Quarantined", "Age"
    ]  # fmt: skip
    assert {"Min", "Max", "Message"} <= wide
    warmup = next(k for k in m.KINDS if k.kind == "IPWarmup")
    assert [c.name for c in warmup.columns][:4] == ["Pool", "Phase", "Day", "Today-Cap"]
    # Every column points at a field the schemas define.
    for kind in m.KINDS:
        paths = {p for p, _ in walk(schema_of(kind.plural))}
        for c in kind.columns:
            if c.json_path.startswith(".metadata"):
                continue
            plain = re.sub(r"\[\?\(@\.type==\"\w+\"\)\]|\[\*\]", "[]", c.json_path)
            assert plain in paths, f"{kind.kind} column {c.name}: {c.json_path} not in the schema"


# --- structural schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("plural", [k.plural for k in m.KINDS])
def test_schema_is_structural(plural: str) -> None:
    schema = schema_of(plural)
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "$defs" not in text
    for path, node in walk(schema):
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        assert "type" in node or int_or_string, f"{path}: no type"
        if int_or_string:
            assert "type" not in node
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "anyOf" not in node and "oneOf" not in node and "allOf" not in node, path
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert "uniqueItems" not in node and "nullable" not in node, path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{path}: {bound} must be boolean"
        if node.get("type") == "array":
            # CEL cost estimation needs a bound on every list.
            assert "maxItems" in node, f"{path}: list without maxItems"
        if node.get("type") == "object" and path.startswith(".spec"):
            assert "properties" in node or "additionalProperties" in node, path


def _check_default(value: Any, node: dict[str, Any], path: str) -> None:
    """The default must validate against its own schema (the API server checks the same)."""
    if node.get("x-kubernetes-int-or-string"):
        assert isinstance(value, int | str), path
        if isinstance(value, str) and "pattern" in node:
            assert re.search(node["pattern"], value), f"{path}: default {value!r} misses pattern"
        return
    expected: Any = {
        "string": str, "integer": int, "number": int | float, "boolean": bool, "object": dict,
        "array": list,
    }[node["type"]]  # fmt: skip
    assert isinstance(value, expected), f"{path}: default {value!r} is not {node['type']}"
    if "pattern" in node:
        assert re.search(node["pattern"], value), f"{path}: default {value!r} misses pattern"
    if "enum" in node:
        assert value in node["enum"], path
    for key in node.get("required", []) if isinstance(value, dict) else []:
        # A required field may be missing from the default only if its own default fills it.
        assert key in value or "default" in node["properties"][key], f"{path}: default lacks {key}"


@pytest.mark.parametrize("plural", [k.plural for k in m.KINDS])
def test_defaults_match_their_schema(plural: str) -> None:
    n = 0
    for path, node in walk(schema_of(plural)):
        if "default" in node:
            _check_default(node["default"], node, path)
            n += 1
    assert n > 5


def test_duration_and_rate_defaults_are_written_as_strings() -> None:
    spec = schema_of("sendingpools")["properties"]["spec"]["properties"]
    assert spec["autoscaling"]["properties"]["scaleDownStabilization"]["default"] == "10m"
    assert spec["health"]["properties"]["window"]["default"] == "1h"
    assert spec["replicas"]["default"] == {"min": 1, "max": 1, "desired": 1}
    assert spec["submission"]["properties"]["maxMessageSize"]["default"] == 26214400
    policy = schema_of("deliverypolicies")["properties"]["spec"]["properties"]
    adaptive = policy["default"]["properties"]["adaptive"]["properties"]
    assert adaptive["increase"]["default"] == "10/min"
    retry = policy["default"]["properties"]["retry"]["properties"]
    assert (retry["initial"]["default"], retry["maxAge"]["default"]) == ("5m", "3d")


def test_cel_rules_land_where_the_models_declare_them() -> None:
    spec = schema_of("sendingpools")["properties"]["spec"]
    rules = {r["message"]: r for r in spec["x-kubernetes-validations"]}
    assert rules["ips: at least one address must not be a standby"]["fieldPath"] == ".ips"
    replicas = spec["properties"]["replicas"]["x-kubernetes-validations"]
    assert replicas == [
        {
            "rule": "self.min <= self.max",
            "message": "replicas.min must be less than or equal to replicas.max",
            "fieldPath": ".min",
        }
    ]
    root = schema_of("sendingpools")["x-kubernetes-validations"]
    assert root[0]["rule"] == f"size(self.metadata.name) <= {m.POOL_NAME_MAX}"
    # Every CEL rule has a message that names a field.
    all_rules = [
        r
        for k in m.KINDS
        for _, node in walk(schema_of(k.plural))
        for r in node.get("x-kubernetes-validations", [])
    ]
    assert {r["message"] for r in all_rules} == set(ALL_RULE_MESSAGES)
    for r in all_rules:
        assert re.match(r"^[a-zA-Z]+(\[\])?[.:]|^[a-z]+ ", r["message"]), r["message"]


# --- the conversion itself -----------------------------------------------------------------


class _Inner(BaseModel):
    """Inner doc."""

    n: int = Field(default=3, gt=0, lt=10)


class _Outer(BaseModel):
    inner: _Inner = Field(default=_Inner(n=4), description="Field doc wins.")
    maybe: _Inner | None = None
    size: Size = 1024
    wait: Duration = 90.0
    mode: Literal["on"] = "on"
    tags: dict[str, str] = {}


def test_conversion_inlines_refs_and_drops_optional_and_null_defaults() -> None:
    raw = crdgen.json_schema(_Outer)
    assert "$defs" in raw  # pydantic's own output has refs...
    s = crdgen.structural(raw)  # ...the structural one none
    inner = s["properties"]["inner"]
    assert inner["type"] == "object" and inner["description"] == "Field doc wins."
    assert inner["default"] == {"n": 4}
    n = inner["properties"]["n"]
    assert (n["minimum"], n["exclusiveMinimum"], n["maximum"], n["exclusiveMaximum"]) == (
        0,
        True,
        10,
        True,
    )
    maybe = s["properties"]["maybe"]
    assert maybe["type"] == "object" and "default" not in maybe and "anyOf" not in maybe
    assert maybe["description"] == "Inner doc."
    size = s["properties"]["size"]
    assert size["x-kubernetes-int-or-string"] is True and "type" not in size
    assert size["pattern"] == r"^[0-9]+(k|K|M|G|Ki|Mi|Gi)?$"
    assert s["properties"]["wait"] == {
        "type": "string",
        "default": "90s",
        "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$",
    }
    assert s["properties"]["mode"]["enum"] == ["on"]
    assert s["properties"]["tags"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in s and "title" not in s


def test_conversion_refuses_what_kubernetes_rejects() -> None:
    class Union(BaseModel):
        x: int | list[int]

    class Unique(BaseModel):
        x: set[int]

    class Free(BaseModel):
        x: Any

    with pytest.raises(crdgen.SchemaError, match=r"\.x: a union"):
        crdgen.structural(crdgen.json_schema(Union))
    with pytest.raises(crdgen.SchemaError, match="uniqueItems"):
        crdgen.structural(crdgen.json_schema(Unique))
    with pytest.raises(crdgen.SchemaError, match=r"\.x: no type"):
        crdgen.structural(crdgen.json_schema(Free))


# --- the models ----------------------------------------------------------------------------


MINIMAL_POOL = {"ips": [{"address": "192.0.2.1", "hostname": "mta1.example.com"}]}


def test_minimal_pool_gets_the_documented_defaults() -> None:
    spec = m.SendingPoolSpec.model_validate(MINIMAL_POOL)
    assert (spec.replicas.min, spec.replicas.max, spec.replicas.desired) == (1, 1, 1)
    assert not spec.autoscaling.enabled and spec.autoscaling.target_queue_per_pod == 5000
    assert spec.autoscaling.scale_down_stabilization == 600
    assert spec.egress.mode == "bind" and spec.egress.proxy is None
    assert spec.submission.port == 2525 and spec.submission.max_message_size == 25 * 1024**2
    assert spec.health.quarantine.bounce_rate == 0.05
    assert spec.storage.size == "10Gi" and spec.policy_selector is None
    assert spec.ips[0].address == ipaddress.ip_address("192.0.2.1") and not spec.ips[0].standby


def apply_schema_defaults(value: Any, node: dict[str, Any]) -> Any:
    """What the API server stores for `value`: schema defaults, top-down, nested ones too."""
    if isinstance(value, dict) and "properties" in node:
        out = dict(value)
        for name, sub in node["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_schema_defaults(out[name], sub)
        return out
    if isinstance(value, list) and "items" in node:
        return [apply_schema_defaults(v, node["items"]) for v in value]
    return value


@pytest.mark.parametrize(
    ("plural", "model", "spec"),
    [
        ("sendingpools", m.SendingPoolSpec, MINIMAL_POOL),
        ("deliverypolicies", m.DeliveryPolicySpec, {}),
        (
            "deliverypolicies",
            m.DeliveryPolicySpec,
            {"providers": [{"name": "gmail", "match": {"mxSuffixes": ["google.com"]}}]},
        ),
        ("ipwarmups", m.IPWarmupSpec, {"poolRef": "p", "addresses": ["192.0.2.1"]}),
        ("sendingdomains", m.SendingDomainSpec, {"domain": "example.com"}),
    ],
)
def test_server_defaults_equal_model_defaults(
    plural: str, model: type[m.CRDModel], spec: dict[str, Any]
) -> None:
    """The operator reads objects the API server defaulted; they must mean what the model means."""
    stored = apply_schema_defaults(spec, schema_of(plural)["properties"]["spec"])
    from_server = model.model_validate(stored)
    assert from_server == model.model_validate(spec)
    # And the server filled in everything the model would: dumping adds nothing new.
    dumped = from_server.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert apply_schema_defaults(dumped, schema_of(plural)["properties"]["spec"]) == dumped
    assert set(dumped) == set(stored)


@pytest.mark.parametrize(
    "path", EXAMPLES + LOCAL_EXAMPLES, ids=lambda p: str(p.relative_to(REPO / "examples"))
)
def test_examples_parse(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs
    for doc in docs:
        m.parse_object(doc)


def test_examples_cover_every_kind_and_the_big_providers() -> None:
    objs = [m.parse_object(d) for p in EXAMPLES for d in yaml.safe_load_all(p.read_text())]
    assert {o.kind for o in objs} == {"SendingPool", "DeliveryPolicy", "IPWarmup", "SendingDomain"}
    policy = next(o for o in objs if isinstance(o, m.DeliveryPolicy))
    assert [p.name for p in policy.spec.providers] == ["gmail", "outlook", "yahoo"]
    pool = next(o for o in objs if isinstance(o, m.SendingPool))
    warmup = next(o for o in objs if isinstance(o, m.IPWarmup))
    assert warmup.spec.pool_ref == pool.metadata["name"]
    assert set(warmup.spec.addresses) <= {ip.address for ip in pool.spec.ips}


def test_local_examples_fit_together_on_loopback() -> None:
    """The local fleet: its pool selects its policy, its warmup warms one of its sending IPs,
    every address is loopback, loopback clients may relay, and the DKIM keys are the examples'."""
    objs = [m.parse_object(d) for p in LOCAL_EXAMPLES for d in yaml.safe_load_all(p.read_text())]
    assert sorted(o.kind for o in objs) == ["DeliveryPolicy", "IPWarmup", "SendingPool"]
    pool = next(o for o in objs if isinstance(o, m.SendingPool))
    policy = next(o for o in objs if isinstance(o, m.DeliveryPolicy))
    warmup = next(o for o in objs if isinstance(o, m.IPWarmup))
    spec = pool.spec
    assert (spec.replicas.min, spec.replicas.max) == (2, 4)
    assert all(ipaddress.ip_address(str(ip.address)).is_loopback for ip in spec.ips)
    assert [ip.standby for ip in spec.ips].count(True) == 1
    assert any(
        ipaddress.ip_address("127.10.0.1") in ipaddress.ip_network(str(c))
        for c in spec.submission.trusted_cidrs
    )
    assert policy.metadata["labels"].items() >= spec.policy_selector.match_labels.items()
    assert [p.name for p in policy.spec.providers] == ["gmail", "outlook", "yahoo"]
    assert warmup.spec.pool_ref == pool.metadata["name"]
    sending = {str(ip.address) for ip in spec.ips if not ip.standby}
    assert {str(a) for a in warmup.spec.addresses} <= sending
    keys = {(k.selector, k.algorithm) for k in spec.dkim}
    assert keys == {("s2026a", "rsa-sha256"), ("s2026e", "ed25519-sha256")}
    assert (REPO / "examples/mta/dkim/example.test.s2026a.rsa.pem").exists()


def _loc(err: Any) -> str:
    out = ""
    for part in err["loc"]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".")


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifests_are_rejected_by_the_models_too(path: Path) -> None:
    doc, field, expect = manifest(path)
    with pytest.raises((ValidationError, ValueError)) as info:
        m.parse_object(doc)
    text = str(info.value)
    if any(expect in msg for msg in ALL_RULE_MESSAGES):
        # A CEL rule: the Python twin says the very same thing.
        assert expect in text
    else:
        # A schema check: pydantic blames the same field the API server names.
        assert isinstance(info.value, ValidationError)
        assert [_loc(e) for e in info.value.errors()] == [field]


def test_there_is_an_invalid_manifest_for_every_rule() -> None:
    expects = [manifest(p)[2] for p in INVALID]
    for message in ALL_RULE_MESSAGES:
        assert any(e in message for e in expects), f"no invalid manifest for: {message}"


def test_rule_twins_agree_on_valid_edge_cases() -> None:
    # The same address twice only when canonical forms match; standby IPs alongside active ones.
    m.SendingPoolSpec.model_validate(
        {
            "ips": [
                {"address": "2001:db8::10", "hostname": "a.example.com"},
                {"address": "2001:db8::11", "hostname": "a.example.com", "standby": True},
            ],
            "egress": {"mode": "socks5", "proxy": "socks5://egress.mail.svc:1080"},
            "submission": {"authSecretRef": "users", "tlsSecretRef": "tls"},
            "dkim": [
                {"domain": "example.com", "selector": "s1", "secretRef": "rsa"},
                {"domain": "example.com", "selector": "s2", "secretRef": "ed",
                 "algorithm": "ed25519-sha256"},
            ],
            "replicas": {"min": 0, "max": 3, "desired": 7},  # clamped by the operator
        }
    )  # fmt: skip
    m.WarmupSchedule.model_validate({"days": [1]})
    m.ResponseRule.model_validate({"match": "x", "action": "suspend", "duration": "2h"})
    with pytest.raises(ValidationError, match="not a regular expression"):
        m.ResponseRule.model_validate({"match": "([", "action": "throttle"})


# --- scalar types ----------------------------------------------------------------------------

IP_SAMPLES = [
    "0.0.0.0", "192.0.2.1", "255.255.255.255", "256.1.1.1", "1.2.3", "01.2.3.4", "1.2.3.4.5",
    "::", "::1", "1::", "2001:db8::10", "2001:db8:0:0:0:0:0:10", "2001:DB8::a:b:c:d",
    "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1::8", "1:2:3:4:5:6:7:8:9",
    "1:::2", "12345::", "g::1", "2001:db8::10/64", " 192.0.2.1", "",
]  # fmt: skip


@pytest.mark.parametrize("text", IP_SAMPLES)
def test_ip_pattern_accepts_exactly_what_ipaddress_does(text: str) -> None:
    try:
        ipaddress.ip_address(text)
        valid = True
    except ValueError:
        valid = False
    assert bool(re.fullmatch(m.IP_PATTERN, text)) == valid


@pytest.mark.parametrize(
    ("text", "valid"),
    [("10.0.0.0/8", True), ("10.1.2.3/8", True), ("10.0.0.0/33", False), ("::/0", True),
     ("2001:db8::/128", True), ("2001:db8::/129", False), ("10.0.0.0", False)],
)  # fmt: skip
def test_cidrs(text: str, valid: bool) -> None:
    assert bool(re.fullmatch(m.CIDR_PATTERN, text)) == valid
    if valid:
        sub = m.Submission.model_validate({"trustedCIDRs": [text]})
        # Host bits cleared, so the engine config (strict networks) accepts it as is.
        assert str(sub.trusted_cidrs[0]) == str(ipaddress.ip_network(text, strict=False))


def test_ipv4_mapped_and_zoned_addresses_are_refused() -> None:
    with pytest.raises(ValidationError, match="IPv4-mapped"):
        m.PoolIP.model_validate({"address": "::ffff:c000:201", "hostname": "a.example.com"})


@pytest.mark.parametrize(
    ("text", "per_second", "written"),
    [("5/s", 5, "5/s"), ("300/min", 5, "5/s"), ("10/min", 1 / 6, "10/min"),
     ("1000/h", 1000 / 3600, "1000/h"), ("50000/d", 50000 / 86400, "50000/d"),
     ("1.5/s", 1.5, "90/min")],
)  # fmt: skip
def test_rates(text: str, per_second: float, written: str) -> None:
    assert units.parse_rate(text) == pytest.approx(per_second)
    assert units.format_rate(units.parse_rate(text)) == written
    assert units.parse_rate(written) == pytest.approx(per_second)


@pytest.mark.parametrize("bad", ["5", "5/sec", "/min", "5 /min", "-5/s", "5/m"])
def test_bad_rates_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="not a rate"):
        units.parse_rate(bad)


def test_hostnames_are_lowercased_and_checked() -> None:
    ip = m.PoolIP.model_validate({"address": "192.0.2.1", "hostname": "MTA1.Example.COM"})
    assert ip.hostname == "mta1.example.com"
    for bad in [
        "mta_1.example.com",
        "-a.example.com",
        "a..example.com",
        "a.example.com.",
        "a" * 64,
    ]:
        with pytest.raises(ValidationError, match="not a host name"):
            m.PoolIP.model_validate({"address": "192.0.2.1", "hostname": bad})


def test_engine_types_are_reused() -> None:
    assert set(get_args(m.DKIMAlgorithm)) == set(
        get_args(DKIMKey.model_fields["algorithm"].annotation)
    )
    engine_selector = DKIMKey.model_fields["selector"].metadata[0].pattern
    assert engine_selector == m.DKIM_SELECTOR_PATTERN
    retry = m.ProviderSettings.model_validate({"retry": {"initial": "1m", "max": "10m"}}).retry
    assert (retry.initial, retry.max, retry.max_age) == (60, 600, 3 * 86400)
    with pytest.raises(ValidationError, match=r"retry\.max must be at least retry\.initial"):
        m.ProviderSettings.model_validate({"retry": {"initial": "1h", "max": "10m"}})


def test_status_round_trips_in_camel_case() -> None:
    status = m.SendingPoolStatus.model_validate(
        {
            "observedGeneration": 3,
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "DKIMSecretMissing",
                 "message": "secret dkim-a not found", "lastTransitionTime": "2026-01-02T03:04:05Z"}
            ],
            "replicas": 2, "readyReplicas": 1, "queueDepth": 10, "activeIPs": 1,
            "quarantinedIPs": 1, "selector": "app=mta",
            "ips": [{"address": "192.0.2.1", "state": "quarantined", "reason": "BounceRate",
                     "since": "2026-01-02T03:04:05Z", "pod": "transactional-0"}],
        }
    )  # fmt: skip
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["conditions"][0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert dumped["activeIPs"] == 1 and dumped["ips"][0]["address"] == "192.0.2.1"
    with pytest.raises(ValidationError):
        m.Condition.model_validate(
            {
                "type": "Ready",
                "status": "Maybe",
                "reason": "X",
                "lastTransitionTime": "2026-01-02T03:04:05Z",
            }
        )
