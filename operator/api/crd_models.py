"""The mailfleet.io/v1alpha1 API: SendingPool, DeliveryPolicy and IPWarmup as pydantic models.

These models are the single source of the CRDs: `make crds` (mailfleet.operator.crdgen) turns
them into OpenAPI v3 schemas. Field names are camelCase in YAML; attribute docstrings become the
schema descriptions that `kubectl explain` shows.

Cross-field checks are `Rule`s: one CEL expression for the API server and its Python twin for the
operator and the unit tests, sharing one message that names the field. The API server rejects a
bad manifest at `kubectl apply`; the Python twin rejects the same manifest when the operator (or a
test) parses it, so both sides agree on what is valid.

Durations ("5m", "3d") and sizes ("25Mi") use the engine's units; fields that end up in the
engine config use the engine's types (mailfleet.mta.config), so the operator renders them as is.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from mailfleet.mta.config import RetryConfig
from mailfleet.mta.units import Duration, Rate, Size

GROUP = "mailfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# --- patterns (RE2-compatible: the API server evaluates them with Go's regexp) -----------------

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}"
_H = r"[0-9a-fA-F]{1,4}"
# Every compressed and uncompressed IPv6 form, without embedded IPv4 or zone ids (neither is a
# usable source address for outbound mail, and the API server's isIP() rejects them too).
_IPV6 = (
    rf"({_H}:){{7}}{_H}"
    rf"|({_H}:){{1,7}}:"
    rf"|({_H}:){{1,6}}:{_H}"
    rf"|({_H}:){{1,5}}(:{_H}){{1,2}}"
    rf"|({_H}:){{1,4}}(:{_H}){{1,3}}"
    rf"|({_H}:){{1,3}}(:{_H}){{1,4}}"
    rf"|({_H}:){{1,2}}(:{_H}){{1,5}}"
    rf"|{_H}:(:{_H}){{1,6}}"
    rf"|:((:{_H}){{1,7}}|:)"
)
IP_PATTERN = rf"^({_IPV4}|{_IPV6})$"
CIDR_PATTERN = (
    rf"^({_IPV4}/([0-9]|[12][0-9]|3[0-2])|({_IPV6})/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))$"
)
_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
HOSTNAME_PATTERN = rf"^({_LABEL}\.)*{_LABEL}$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes resource.Quantity, as the API server's own schemas spell it.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# socks5://host:port as the engine takes it (mailfleet.mta.config.EgressConfig): a DNS name, an
# IPv4 address or a bracketed IPv6 address, and a port from 1 to 65535. The scheme is checked by
# a rule of its own (Egress), whose message says why socks5h:// is refused.
SOCKS5_PATTERN = rf"^[a-z0-9]+://(({_LABEL}\.)*{_LABEL}|\[({_IPV6})\]):{_PORT}$"
# host:port, the host a DNS name, an IPv4 address or a bracketed IPv6 address.
HOSTPORT_PATTERN = rf"^(({_LABEL}\.)*{_LABEL}|\[[0-9A-Fa-f:.]+\]):[0-9]{{1,5}}$"
ROUTE_DOMAIN_PATTERN = rf"^(\*|({_LABEL}\.)*{_LABEL})$"
DKIM_SELECTOR_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"

# --- scalar types ------------------------------------------------------------------------------


def _ip(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        addr = value
    elif isinstance(value, str) and re.fullmatch(IP_PATTERN, value):
        addr = ipaddress.ip_address(value)
    else:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address")
    if isinstance(addr, ipaddress.IPv6Address) and (addr.ipv4_mapped or addr.scope_id):
        raise ValueError(f"{value!r}: IPv4-mapped addresses and zone ids are not allowed")
    return addr


IPAddress = Annotated[
    ipaddress.IPv4Address | ipaddress.IPv6Address,
    BeforeValidator(_ip),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": IP_PATTERN, "maxLength": 39}),
]
"""An IPv4 or IPv6 address; the model holds it as an ipaddress object (compared canonically)."""


def _cidr(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if isinstance(value, str) and re.fullmatch(CIDR_PATTERN, value):
        # Host bits are cleared ("10.1.2.3/8" -> 10.0.0.0/8), as the engine config wants.
        return ipaddress.ip_network(value, strict=False)
    raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32")


CIDR = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(_cidr),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": CIDR_PATTERN, "maxLength": 43}),
]


def _hostname(value: str) -> str:
    if len(value) > 253 or not re.fullmatch(HOSTNAME_PATTERN, value):
        raise ValueError(f"{value!r} is not a host name")
    return value.lower()


Hostname = Annotated[
    str,
    AfterValidator(_hostname),
    WithJsonSchema({"type": "string", "pattern": HOSTNAME_PATTERN, "maxLength": 253}),
]
"""A DNS name without a trailing dot (kept lowercase)."""

ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=OBJECT_NAME_PATTERN)]
"""The name of an object in the same namespace (a Secret, a SendingPool)."""

ProviderName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]


def _quantity(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and re.fullmatch(QUANTITY_PATTERN, value):
        return value
    raise ValueError(f"{value!r} is not a Kubernetes quantity such as '500m', '256Mi', '10Gi'")


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": QUANTITY_PATTERN}]}
    ),
]

Fraction = Annotated[float, Field(ge=0, le=1)]

# --- rules -------------------------------------------------------------------------------------

RuleReason = Literal[
    "FieldValueInvalid", "FieldValueRequired", "FieldValueDuplicate", "FieldValueForbidden"
]


@dataclass(frozen=True)
class Rule:
    """A cross-field check: `cel` for the API server, `check` (on the parsed model) for Python."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None  # where the API server reports it, relative to the object
    reason: RuleReason | None = None

    def to_k8s(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def _add_rules(schema: dict[str, Any], cls: type[Any]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.to_k8s() for r in rules]


class CRDModel(BaseModel):
    """Base of every spec/status part: camelCase, unknown fields are errors, CEL rules enforced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        json_schema_extra=_add_rules,
    )
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _cel_rules(self) -> Self:
        failed = [r.message for r in type(self).cel_rules if not r.check(self)]
        if failed:
            raise ValueError("; ".join(failed))
        return self


def _unique(items: list[Any]) -> bool:
    return len(set(items)) == len(items)


# --- shared status parts -----------------------------------------------------------------------


class Condition(CRDModel):
    """A condition per the Kubernetes API conventions (metav1.Condition)."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    """The condition type in CamelCase, e.g. Ready."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown (could not tell)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the condition was set for."""
    last_transition_time: datetime
    """When the status last changed."""
    reason: str = Field(
        min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    )
    """A CamelCase word for why the condition is what it is, e.g. DKIMSecretMissing."""
    message: str = Field(default="", max_length=32768)
    """Details for a human."""


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]

# --- SendingPool -------------------------------------------------------------------------------


class Replicas(CRDModel):
    """How many MTA pods the pool runs.

    `desired` is the target of the scale subresource (`kubectl scale`, HPA, KEDA), clamped to
    [min, max]. It always has a value (default 1, so a new pool runs one pod, or `min` when that
    is more): the API server can only serve GET /scale, which every HPA does first, when the
    field exists.
    """

    min: int = Field(default=1, ge=0, le=1000)
    """The fewest pods. 0 lets the pool be stopped: replicas.desired 0 (kubectl scale
    --replicas=0) with the autoscaler off. The autoscaler keeps at least one pod: a pool without
    pods takes no mail and reports no queue to scale up from."""
    max: int = Field(ge=1, le=1000)
    """The most pods."""
    desired: int | None = Field(default=1, ge=0, le=1000)
    """Set by the scale subresource; clamped to [min, max]."""

    cel_rules = (
        Rule(
            "self.min <= self.max",
            "replicas.min must be less than or equal to replicas.max",
            lambda r: r.min <= r.max,
            field_path=".min",
        ),
    )


class Autoscaling(CRDModel):
    """The operator's queue-driven autoscaler. With enabled, it sets the pod count within
    [replicas.min, replicas.max] from the queue the pods report, and replicas.desired (the scale
    subresource) is not used; without it, replicas.desired is, for kubectl scale, HPA or KEDA.
    Either way a pod leaves only after it has handed its queue to the pods that stay."""

    enabled: bool = False
    """true: the operator sets the pod count from the queue; false: replicas.desired (the
    scale subresource: kubectl scale, HPA, KEDA) does."""
    target_queue_per_pod: int = Field(default=5000, ge=1, le=10_000_000)
    """Queued messages one pod should carry; the pool scales to queueDepth / this."""
    scale_down_stabilization: Duration = 600.0
    """How long the queue must stay low before a pod is drained and removed."""


class PoolIP(CRDModel):
    """A source address of the pool; the operator assigns each to one pod."""

    address: IPAddress
    """The IPv4 or IPv6 address mail is sent from."""
    hostname: Hostname
    """HELO name; its A/AAAA record and the address's PTR must match it."""
    standby: bool = False
    """Kept out of rotation until the health check quarantines a sending IP: then the first
    healthy standby (in list order) is promoted, through its IPWarmup when one names it."""


class Egress(CRDModel):
    """How pods send from the pool's addresses."""

    mode: Literal["bind", "socks5", "managed", "hostNetwork"] = "bind"
    """bind: the pod binds the address itself (the pod's network holds it: the local node);
    socks5: through a SOCKS5 proxy you run (`proxy`); managed: through the egress proxy the
    operator runs on the node that holds each address (the node's
    `mailfleet.io/sending-addresses` annotation lists them); hostNetwork: no proxy, the pods run
    in the network of the nodes that hold the addresses (one pod per node) and bind them."""
    proxy: str | None = Field(default=None, max_length=253, pattern=SOCKS5_PATTERN)
    """socks5://host:port, required with mode socks5. Not socks5h://: the engine resolves MX
    hosts itself and asks the proxy for their addresses."""

    cel_rules = (
        Rule(
            "!has(self.proxy) || self.proxy.startsWith('socks5://')",
            "egress.proxy must be socks5://host:port (socks5h:// and other schemes are not "
            "supported: the engine resolves MX hosts itself and connects to their addresses)",
            lambda e: e.proxy is None or e.proxy.startswith("socks5://"),
            field_path=".proxy",
        ),
        Rule(
            "self.mode != 'socks5' || has(self.proxy)",
            "egress.proxy is required when egress.mode is socks5",
            lambda e: e.mode != "socks5" or e.proxy is not None,
            field_path=".proxy",
            reason="FieldValueRequired",
        ),
        Rule(
            "self.mode == 'socks5' || !has(self.proxy)",
            "egress.proxy is only allowed when egress.mode is socks5",
            lambda e: e.mode == "socks5" or e.proxy is None,
            field_path=".proxy",
            reason="FieldValueForbidden",
        ),
    )


class DNS(CRDModel):
    """The resolvers MX and A/AAAA lookups use; none: the pod's own (/etc/resolv.conf)."""

    nameservers: list[IPAddress] = Field(default=[], max_length=8)
    """Resolver addresses, asked in order."""
    port: int = Field(default=53, ge=1, le=65535)
    """The resolvers' port."""


class Routing(CRDModel):
    """Where mail goes: static routes (smarthosts) first, then MX lookup."""

    routes: dict[str, Annotated[str, Field(max_length=260, pattern=HOSTPORT_PATTERN)]] = Field(
        default={}, max_length=256
    )
    """Recipient domain (or * for every other domain) -> host:port, bypassing MX lookup,
    e.g. {"*": "smarthost.example.net:587"}."""
    mx_port: int = Field(default=25, ge=1, le=65535)
    """The port of every MX host; only a test world uses another than 25."""
    dns: DNS = DNS()
    allow_private_mx: bool = Field(default=False, alias="allowPrivateMX")
    """Connect to MX hosts (and address-literal recipients) at private, loopback, link-local
    or other non-public addresses. Off: a recipient domain whose DNS points there bounces
    (5.4.4) instead of reaching services inside the cluster. Only a test world whose MX hosts
    live on loopback turns it on; static routes are used as written either way."""

    cel_rules = (
        Rule(
            f"self.routes.all(d, size(d) <= 253 && d.matches(r'{ROUTE_DOMAIN_PATTERN}'))",
            "routing.routes keys must be a domain name or *",
            lambda r: all(
                len(d) <= 253 and re.fullmatch(ROUTE_DOMAIN_PATTERN, d) for d in r.routes
            ),
            field_path=".routes",
        ),
    )


class Submission(CRDModel):
    """Where applications hand mail to the pool (the submission Service)."""

    port: int = Field(default=2525, ge=1, le=65535)
    """The port pods take submissions on (SMTP, STARTTLS when tlsSecretRef is set)."""
    trusted_cidrs: list[CIDR] = Field(default=[], max_length=64, alias="trustedCIDRs")
    """Networks allowed to relay without AUTH."""
    auth_secret_ref: ObjectName | None = None
    """Secret with a `users` key of `user:bcrypt-hash[:domains]` lines, the optional third
    field the From domains the user may send for (comma-separated, `*` for any; without it, the
    login's own domain when the login is an address); needs tlsSecretRef."""
    tls_secret_ref: ObjectName | None = None
    """kubernetes.io/tls Secret for STARTTLS."""
    max_message_size: Size = 25 * 1024 * 1024
    """Larger messages are refused (552), e.g. 25Mi."""
    max_recipients: int = Field(default=100, ge=1, le=100_000)
    """Recipients one message may have."""

    cel_rules = (
        Rule(
            "!has(self.authSecretRef) || has(self.tlsSecretRef)",
            "submission.tlsSecretRef is required with submission.authSecretRef: "
            "AUTH is only offered over TLS",
            lambda s: s.auth_secret_ref is None or s.tls_secret_ref is not None,
            field_path=".tlsSecretRef",
            reason="FieldValueRequired",
        ),
    )


DKIMAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]


class DKIMKeyRef(CRDModel):
    """A DKIM signing key kept in a Secret; two keys for one domain give dual signatures."""

    domain: Hostname
    """The signing domain (d=): mail from this domain is signed with the key."""
    selector: str = Field(max_length=63, pattern=DKIM_SELECTOR_PATTERN)
    """The s= of the signature: receivers fetch the public key from
    <selector>._domainkey.<domain>."""
    secret_ref: ObjectName
    """The Secret holding the PEM private key."""
    secret_key: str = Field(default="private.key", max_length=253, pattern=SECRET_KEY_PATTERN)
    """The key in the Secret's data."""
    algorithm: DKIMAlgorithm = "rsa-sha256"
    """rsa-sha256 or ed25519-sha256, matching the key in the Secret."""


class LabelSelectorRequirement(CRDModel):
    """One set-based requirement on a label."""

    key: str = Field(min_length=1, max_length=317)
    """The label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key's value is compared with values."""
    values: list[Annotated[str, Field(max_length=63)]] = Field(default=[], max_length=64)
    """The values for In and NotIn; empty for Exists and DoesNotExist."""

    cel_rules = (
        Rule(
            "self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : size(self.values) == 0",
            "matchExpressions[].values must be non-empty for In and NotIn, "
            "and empty for Exists and DoesNotExist",
            lambda r: bool(r.values) == (r.operator in ("In", "NotIn")),
            field_path=".values",
        ),
    )


class LabelSelector(CRDModel):
    """A label selector as in Deployments; empty selects everything."""

    match_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(default={})
    """Labels a policy must carry, every one of them."""
    match_expressions: list[LabelSelectorRequirement] = Field(default=[], max_length=16)
    """Set-based requirements, every one of which must hold."""


class QuarantineThresholds(CRDModel):
    """Rates over health.window above which the operator quarantines an IP (all providers
    together): bounces and deferrals per delivery attempt, complaints per delivered message."""

    bounce_rate: Fraction = 0.05
    """Share of attempts that bounced."""
    complaint_rate: Fraction = 0.003
    """Complaints per delivered message."""
    deferral_rate: Fraction = 0.3
    """Share of attempts that were deferred."""
    min_attempts: int = Field(default=200, ge=1)
    """No verdict on fewer delivery attempts than this in the window."""


class PrometheusSource(CRDModel):
    """A Prometheus that scrapes the pool's engines (their admin port's /metrics)."""

    url: str = Field(max_length=2048, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    """Its base URL, e.g. http://prometheus.monitoring:9090; the operator runs instant queries
    on /api/v1/query."""


class Health(CRDModel):
    """IP health the operator watches: every `interval` it reads each ready pod's /metrics,
    sums delivery outcomes per (IP, provider) over `window`, checks each pool IP on the
    `blocklists`, and quarantines an IP that crosses a threshold or is listed (a standby takes
    its place)."""

    interval: Duration = Field(default=30.0, ge=1.0)
    """How often pods are read and blocklists consulted (cached lookups)."""
    window: Duration = 3600.0
    """The sliding window the rates are computed over."""
    quarantine: QuarantineThresholds = QuarantineThresholds()
    blocklists: list[Hostname] = Field(default=[], max_length=16)
    """DNSBL zones checked for every pool IP, e.g. zen.spamhaus.org, through the pool's
    routing.dns resolvers (the operator's own when none)."""
    cooldown: Duration = 3600.0
    """The least time a quarantined IP stays out; it comes back after that once it is
    delisted and under the thresholds."""
    prometheus: PrometheusSource | None = None
    """Take the window's figures from this Prometheus (PromQL increase() over the window, which
    outlives operator restarts) instead of the operator's own scrapes of the pods; when it does
    not answer, the operator's scrapes are used."""
    when_no_healthy_ip: Literal["keepSending", "stop"] = Field(
        default="keepSending", alias="whenNoHealthyIP"
    )
    """When every sending IP would be quarantined and no standby is left: keepSending leaves
    the last one sending, stop quarantines it too (mail waits in the queues). Either way the
    pool says NoHealthyIP (condition and Warning event)."""


class Storage(CRDModel):
    """The spool volume of each pod."""

    size: Quantity = "10Gi"
    """Size of each pod's spool PersistentVolumeClaim, e.g. 10Gi."""
    storage_class_name: str | None = Field(default=None, max_length=253)
    """The claims' StorageClass; unset: the cluster's default."""


class Resources(CRDModel):
    """CPU and memory of the engine container."""

    requests: dict[str, Quantity] = Field(default={})
    """What the scheduler reserves, e.g. {cpu: 500m, memory: 512Mi}."""
    limits: dict[str, Quantity] = Field(default={})
    """What the container may not exceed, e.g. {memory: 1Gi}."""


class FleetLimits(CRDModel):
    """Where the pool's pods share their pool-wide provider limits and warmup day counts.

    With redisURL, every pod takes pool-wide rate tokens and counts warmup sends in that Redis,
    so the limits hold for the pool whatever its pod count; while Redis cannot be reached (and
    without redisURL) each pod keeps to its share of the limits, split by the operator."""

    redis_url: str | None = Field(
        default=None, alias="redisURL", max_length=512, pattern=r"^rediss?://\S+$"
    )
    """redis://host:port/db (or rediss:// for TLS), reachable from every pod of the pool."""


def _ips_unique(spec: SendingPoolSpec) -> bool:
    return _unique([ip.address for ip in spec.ips])


class SendingPoolSpec(CRDModel):
    """A set of MTA pods sharing source IPs, DKIM keys and delivery policies."""

    replicas: Replicas = Replicas(min=1, max=1)
    autoscaling: Autoscaling = Autoscaling()
    ips: list[PoolIP] = Field(min_length=1, max_length=256)
    """Source addresses; at least one must not be a standby."""
    egress: Egress = Egress()
    routing: Routing = Routing()
    submission: Submission = Submission()
    dkim: list[DKIMKeyRef] = Field(default=[], max_length=32)
    """Keys the pods sign with, each in a Secret of the namespace (SendingDomains listing
    the pool add theirs)."""
    policy_selector: LabelSelector | None = None
    """Which DeliveryPolicies of the namespace apply; unset or empty selects all."""
    health: Health = Health()
    storage: Storage = Storage()
    image: str | None = Field(default=None, max_length=512)
    """The engine image; default: the operator's own version."""
    resources: Resources | None = None
    fleet_limits: FleetLimits = FleetLimits()
    """How pool-wide limits (DeliveryPolicy providers[].pool) and warmup counts are shared."""

    cel_rules = (
        Rule(
            # ip() compares canonically: 2001:db8::10 and 2001:db8:0:0::10 are one address.
            "self.ips.all(a, !isIP(a.address) || "
            "self.ips.exists_one(b, isIP(b.address) && ip(b.address) == ip(a.address)))",
            "ips[].address must be unique within a pool",
            _ips_unique,
            field_path=".ips",
        ),
        Rule(
            "self.ips.exists(i, !i.standby)",
            "ips: at least one address must not be a standby",
            lambda s: any(not i.standby for i in s.ips),
            field_path=".ips",
        ),
        Rule(
            "self.dkim.all(a, "
            "self.dkim.exists_one(b, b.domain == a.domain && b.selector == a.selector))",
            "dkim[]: each domain and selector pair must be listed once",
            lambda s: _unique([(k.domain, k.selector.lower()) for k in s.dkim]),
            field_path=".dkim",
        ),
    )


IPState = Literal["active", "warming", "standby", "quarantined"]


class IPStatus(CRDModel):
    address: IPAddress
    """The pool address."""
    state: IPState
    """active: sends; warming: sends under an IPWarmup's caps; standby: kept out of rotation;
    quarantined: taken out of rotation for bad health."""
    reason: str | None = Field(default=None, max_length=1024)
    """Why the IP is in this state, e.g. BounceRate or Listed:zen.spamhaus.org."""
    since: datetime | None = None
    """When the IP entered this state."""
    pod: str | None = Field(default=None, max_length=253)
    """The pod that sends from this address."""
    node: str | None = Field(default=None, max_length=253)
    """egress: managed: the node that holds the address (its egress proxy sends from it)."""


class EngineQuarantine(CRDModel):
    """An (IP, provider) pair an engine stopped by itself on a reply rule."""

    address: IPAddress
    """The pool IP."""
    provider: str = Field(max_length=253)
    """The provider it no longer sends to from that IP."""
    pod: str = Field(max_length=253)
    """The pod whose engine decided it."""
    until: int
    """Unix time the engine's quarantine of the pair ends."""
    reason: str | None = Field(default=None, max_length=1024)
    """The reply that set it off."""


class IPHealth(CRDModel):
    """One pool IP's outcomes over spec.health.window."""

    address: IPAddress
    """The pool IP."""
    attempts: int = Field(default=0, ge=0)
    """Delivery attempts (each recipient of each try)."""
    delivered: int = Field(default=0, ge=0)
    """Attempts the receiver accepted."""
    deferred: int = Field(default=0, ge=0)
    """Attempts answered with a temporary failure."""
    bounced: int = Field(default=0, ge=0)
    """Attempts answered with a permanent failure."""
    complaints: int = Field(default=0, ge=0)
    """Feedback-loop complaints (ARF) received about delivered messages."""
    bounce_rate: float | None = None
    """Bounced / attempts."""
    deferral_rate: float | None = None
    """Deferred / attempts."""
    complaint_rate: float | None = None
    """Complaints / delivered."""
    listed_on: list[str] = Field(default=[], max_length=16)
    """Blocklist zones that list the address, with their reason (TXT) when they give one."""


class PodState(CRDModel):
    """One pod of the pool as its engine reports itself over the admin API."""

    name: str = Field(max_length=253)
    """The pod's name."""
    ip: str | None = Field(default=None, max_length=45)
    """The pod's IP, where its admin API answers."""
    ready: bool = False
    """Whether the engine accepts mail."""
    config_hash: str | None = Field(default=None, max_length=64)
    """The hash of the engine config the pod runs; current when it equals status.configHash."""
    queued: int | None = None
    """Messages in the pod's spool."""
    draining: bool | None = None
    """true while the pod hands its queue off before a scale-down removes it."""
    node: str | None = Field(default=None, max_length=253)
    """The node the pod runs on."""


class StrandedPod(CRDModel):
    """A pod on a node that is not Ready, with the queue it last reported."""

    pod: str = Field(max_length=253)
    """The pod."""
    node: str = Field(max_length=253)
    """Its node, which is not Ready."""
    queued: int | None = None
    """Messages in its spool when it last answered (none: it never did)."""


class SendingPoolStatus(CRDModel):
    """What the operator and the pool's engines report."""

    observed_generation: int | None = None
    """The .metadata.generation this status was written for."""
    conditions: Conditions = []
    """Ready (and why not), ConfigRendered, PoliciesResolved, SecretsFound."""
    replicas: int | None = None
    """Pods that exist (the StatefulSet's status.replicas); the scale subresource's status."""
    ready_replicas: int | None = None
    """Pods that are ready (the StatefulSet's status.readyReplicas)."""
    desired_replicas: int | None = None
    """The target the operator is driving towards, after clamping and autoscaling."""
    selector: str | None = None
    """The pods' label selector as a string, for the scale subresource (HPA)."""
    queue_depth: int | None = None
    """Messages queued across the pool's pods, as their engines last reported."""
    config_hash: str | None = Field(default=None, max_length=64)
    """The hash of the engine config rendered for the pool (the ConfigMap's engine.yaml)."""
    updated_pods: int | None = None
    """Pods whose engine runs the config with configHash."""
    pods: list[PodState] = Field(default=[], max_length=1000)
    """Each pod as its engine last reported itself."""
    draining_pods: list[str] = Field(default=[], max_length=1000)
    """Pods handing their queue to the others before a scale-down removes them."""
    handoff_left: int | None = None
    """Messages the draining pods still hold."""
    stranded_pods: list[StrandedPod] = Field(default=[], max_length=1000)
    """Pods on a node that is not Ready: their queued mail waits on that node."""
    stranded_messages: int | None = None
    """Messages those pods held when they last answered."""
    scale_reason: str | None = Field(default=None, max_length=1024)
    """Why the pod count last changed, with the numbers behind it: the autoscaler's, or
    "external: ..." when replicas.desired or the bounds moved it."""
    last_scale_time: datetime | None = None
    """When the pod count last changed."""
    active_ips: int | None = Field(default=None, alias="activeIPs")
    """Pool IPs that send (state active or warming)."""
    quarantined_ips: int | None = Field(default=None, alias="quarantinedIPs")
    """Pool IPs out of rotation: quarantined by the health check (ips[].state), or by some
    engine for at least one provider (engineQuarantines, reply rules)."""
    ips: list[IPStatus] = Field(default=[], max_length=256)
    """Each pool IP: its state, why, since when and the pod that sends from it."""
    engine_quarantines: list[EngineQuarantine] = Field(default=[], max_length=1024)
    """(IP, provider) pairs the engines quarantined themselves from a reply rule."""
    health: list[IPHealth] = Field(default=[], max_length=256)
    """Each IP's delivery outcomes over spec.health.window, as the last check summed them."""


# --- DeliveryPolicy ----------------------------------------------------------------------------


class ProviderMatch(CRDModel):
    """How a recipient's domain is recognised as this provider's."""

    mx_suffixes: list[Hostname] = Field(default=[], max_length=32)
    """The domain's MX host ends with one of these, e.g. google.com."""
    recipient_domains: list[Hostname] = Field(default=[], max_length=64)
    """The recipient domain is one of these, e.g. gmail.com."""

    cel_rules = (
        Rule(
            "size(self.mxSuffixes) + size(self.recipientDomains) > 0",
            "match needs at least one of mxSuffixes or recipientDomains",
            lambda m: bool(m.mx_suffixes or m.recipient_domains),
        ),
    )


class PerIPLimits(CRDModel):
    """Limits per (source IP, provider) pair."""

    max_connections: int = Field(default=5, ge=1, le=1000)
    """SMTP connections open at once from one IP to the provider."""
    max_messages_per_connection: int = Field(default=50, ge=1, le=100_000)
    """Messages sent over one connection before it is closed."""
    max_message_rate: Rate | None = None
    """e.g. 300/min; unset means no rate limit beyond warmup caps."""


class PoolLimits(CRDModel):
    """Limits per provider for the whole pool, whatever its pod and IP count."""

    max_connections: int | None = Field(default=None, ge=1, le=100_000)
    """Connections open at once to the provider from all the pool's pods together."""
    max_message_rate: Rate | None = None
    """e.g. 600/min from the whole pool; unset means no pool-wide rate limit."""


class Adaptive(CRDModel):
    """Finds the rate a provider accepts per source IP: one decrease per window of throttling
    replies, the rate where throttling began remembered as a ceiling (a signal near it steps down
    to 85 %; one well below it, or with none known, multiplies by `decrease`), fast growth far
    below it, slow probing near it."""

    enabled: bool = True
    """false: the rate stays at perIP.maxMessageRate whatever the provider answers."""
    decrease: float = Field(default=0.5, gt=0, lt=1)
    """The multiplicative decrease when the limit moved or is not known yet."""
    increase: Rate = 10 / 60
    """The least step per clean interval below the ceiling, and past a stale one."""
    recovery_interval: Duration = 300.0
    """Clean time before each increase."""
    floor: Rate = 10 / 60
    """The rate never drops below this."""


class ResponseRule(CRDModel):
    """What to do when a reply matches."""

    match: str = Field(min_length=1, max_length=512)
    """A regular expression searched in the reply (code, enhanced code and text)."""
    action: Literal["throttle", "suspend", "retry", "bounce", "quarantine"]
    """throttle: AIMD decrease of the (IP, provider) rate; suspend: stop sending to the provider
    from the IP for `duration`; retry: try the message later; bounce: fail it; quarantine: the
    engine stops sending to the provider from the IP for `duration` (default 24h), shown in the
    pool's status.engineQuarantines; the other providers keep the IP, and a standby is promoted
    only when the pool's spec.health checks quarantine the IP as a whole."""
    duration: Duration | None = None
    """How long a suspend lasts, e.g. 2h (required with action suspend), or a quarantine."""

    cel_rules = (
        Rule(
            "self.action != 'suspend' || has(self.duration)",
            "rules[].duration is required when action is suspend",
            lambda r: r.action != "suspend" or r.duration is not None,
            field_path=".duration",
            reason="FieldValueRequired",
        ),
    )

    @model_validator(mode="after")
    def _regex(self) -> Self:
        try:
            re.compile(self.match)
        except re.error as e:
            raise ValueError(f"rules[].match is not a regular expression: {e}") from None
        return self


class ProviderSettings(CRDModel):
    """How mail to one provider (or to every other domain) is paced and retried."""

    per_ip: PerIPLimits = Field(default=PerIPLimits(), alias="perIP")
    pool: PoolLimits = PoolLimits()
    adaptive: Adaptive = Adaptive()
    rules: list[ResponseRule] = Field(default=[], max_length=64)
    """Checked in order; the first match wins."""
    retry: RetryConfig = RetryConfig()


class ProviderPolicy(ProviderSettings):
    name: ProviderName
    """gmail, outlook, yahoo, ...: the name metrics, warmups and status use."""
    match: ProviderMatch


class DeliveryPolicySpec(CRDModel):
    """How to treat mailbox providers; pools pick policies with spec.policySelector."""

    providers: list[ProviderPolicy] = Field(default=[], max_length=32)
    """The first provider whose match fits a recipient domain applies."""
    default: ProviderSettings = ProviderSettings()
    """For every domain no provider matches."""

    cel_rules = (
        Rule(
            "self.providers.all(p, self.providers.exists_one(q, q.name == p.name))",
            "providers[].name must be unique within a policy",
            lambda s: _unique([p.name for p in s.providers]),
            field_path=".providers",
        ),
    )


class DeliveryPolicyStatus(CRDModel):
    """Which pools use the policy."""

    observed_generation: int | None = None
    """The .metadata.generation this status was written for."""
    conditions: Conditions = []
    """Ready: InUse (some pool selects the policy) or Unused."""
    pools: list[str] = Field(default=[], max_length=1000)
    """SendingPools that select this policy."""
    pool_count: int | None = None
    """len(pools), for `kubectl get`."""
    provider_count: int | None = None
    """len(spec.providers), for `kubectl get` (a printer column cannot count a list)."""


# --- IPWarmup ----------------------------------------------------------------------------------

WarmupPreset = Literal["standard", "conservative", "aggressive"]


class WarmupSchedule(CRDModel):
    """Messages per IP per day, by warmup day: a preset or explicit `days`."""

    preset: WarmupPreset | None = None
    """A built-in ramp: standard, conservative (slower) or aggressive (faster)."""
    days: list[Annotated[int, Field(ge=1, le=1_000_000_000)]] | None = Field(
        default=None, min_length=1, max_length=120
    )
    """e.g. [50, 100, 250, 500, 1000]; the last value is the cap of the final day."""
    day_length: Duration = Field(default=86400.0, ge=10.0)
    """How long a warmup day lasts: the operator moves to the next day (and its cap) after
    this much warming. 24h for real traffic; shorter for a test or a demo."""

    cel_rules = (
        Rule(
            "has(self.preset) != has(self.days)",
            "schedule needs exactly one of schedule.preset or schedule.days",
            lambda s: (s.preset is None) != (s.days is None),
        ),
        Rule(
            "!has(self.days) || "
            "(self.days.isSorted() && self.days.all(d, self.days.exists_one(e, e == d)))",
            "schedule.days must be strictly increasing",
            lambda s: (
                s.days is None or all(a < b for a, b in zip(s.days, s.days[1:], strict=False))
            ),
            field_path=".days",
        ),
    )


class WarmupGates(CRDModel):
    """What a warmup day must show, per provider, before the next day's cap: rates over the
    day's attempts (a provider with fewer than minAttempts is not judged) and the share of the
    day's cap that was delivered (an unused cap proves nothing: the day is repeated)."""

    max_bounce_rate: Fraction = 0.02
    """Share of attempts that bounced, per provider."""
    max_complaint_rate: Fraction = 0.001
    """Complaints per delivered message, per provider."""
    max_deferral_rate: Fraction = 0.2
    """Share of attempts deferred, per provider."""
    min_attempts: int = Field(default=20, ge=1)
    """A provider with fewer attempts than this in the day is not judged on its rates."""
    min_usage: Fraction = 0.5
    """Delivered messages / the day's cap below which the day is repeated; 0: advance by the
    clock alone."""
    on_fail: Literal["hold", "stepBack"] = "hold"
    """hold: repeat the day; stepBack: go back one day (to day 1 at least)."""


Share = Annotated[float, Field(gt=0, le=1)]


class IPWarmupSpec(CRDModel):
    """Ramps new IPs of a pool up, provider by provider, gated on health."""

    pool_ref: ObjectName
    """The SendingPool (same namespace) the addresses belong to."""
    addresses: list[IPAddress] = Field(min_length=1, max_length=256)
    """Addresses of the pool (its spec.ips[].address) to ramp up."""
    schedule: WarmupSchedule = WarmupSchedule(preset="standard")
    per_provider: dict[str, Share] = Field(default={}, max_length=32)
    """Share of the day's cap each provider may take, in (0, 1], e.g. {gmail: 0.5}."""
    gates: WarmupGates = WarmupGates()
    overflow: Literal["spill", "defer"] = "spill"
    """Mail above the cap: spill to warm IPs of the pool, or defer it."""
    paused: bool = False
    """true: the warmup stays on its day (its caps still apply) until set back to false."""

    cel_rules = (
        Rule(
            "self.addresses.all(a, !isIP(a) || "
            "self.addresses.exists_one(b, isIP(b) && ip(b) == ip(a)))",
            "addresses must be unique",
            lambda s: _unique(list(s.addresses)),
            field_path=".addresses",
        ),
    )


class Outcomes(CRDModel):
    """Delivery outcomes counted by the engines (mailfleet_delivery_attempts and
    mailfleet_complaints)."""

    attempts: int = Field(default=0, ge=0)
    """Delivery attempts (each recipient of each try)."""
    delivered: int = Field(default=0, ge=0)
    """Attempts the receiver accepted."""
    deferred: int = Field(default=0, ge=0)
    """Attempts answered with a temporary failure."""
    bounced: int = Field(default=0, ge=0)
    """Attempts answered with a permanent failure."""
    complaints: int = Field(default=0, ge=0)
    """Feedback-loop complaints (ARF) received about delivered messages."""


class WarmupDay(CRDModel):
    """The outcomes of a warmup's addresses since its current day began."""

    since: datetime
    """When the day began (startTime or lastAdvanceTime)."""
    providers: dict[str, Outcomes] = Field(default={}, max_length=64)


class IPWarmupStatus(CRDModel):
    """Where the warmup stands: phase, day and today's cap."""

    observed_generation: int | None = None
    """The .metadata.generation this status was written for."""
    conditions: Conditions = []
    """Ready: whether the warmup applies to its pool (PoolNotFound, AddressesNotInPool)."""
    phase: Literal["Pending", "Warming", "Holding", "Complete", "Paused"] | None = None
    """Pending (no such pool or address in it), Warming, Holding (health gates failed),
    Complete (a whole day at the final cap) or Paused."""
    day: int | None = Field(default=None, ge=0)
    """The current warmup day, from 1."""
    today_cap: int | None = Field(default=None, ge=0)
    """Messages each address may send today."""
    sent_today: dict[str, int] = Field(default={})
    """Messages sent today, per provider."""
    start_time: datetime | None = None
    """When the warmup started warming."""
    last_advance_time: datetime | None = None
    """When it last moved to the next day."""
    today: WarmupDay | None = None
    """Delivery outcomes of the addresses since the current day began, per provider and in
    all ("*"): what the gates judge when the day ends."""
    last_verdict: str | None = Field(default=None, max_length=1024)
    """What the last day's end decided and why, e.g. held on day 3: gmail bounce rate ..."""


# --- SendingDomain -----------------------------------------------------------------------------

EMAIL_PATTERN = rf"^[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]{{1,64}}@({_LABEL}\.)*{_LABEL}$"

# A duration with at most one day part, first ("90d", "1d12h", "5m", "1.5h"): CEL's duration()
# has no day unit, so a rule splits the days off and parses the rest (_cel_seconds).
_DUR = r"[0-9]+(\.[0-9]+)?"
DAYS_FIRST_DURATION_PATTERN = rf"^({_DUR}d({_DUR}(ms|s|m|h))*|({_DUR}(ms|s|m|h))+)$"


def _days_first(value: object) -> object:
    if isinstance(value, str) and not re.fullmatch(DAYS_FIRST_DURATION_PATTERN, value.strip()):
        raise ValueError(
            f"{value!r} is not a duration such as '90d', '1d12h', '5m' or '30s' (days first)"
        )
    return value


DomainDuration = Annotated[
    Duration,
    BeforeValidator(_days_first),
    WithJsonSchema({"type": "string", "pattern": DAYS_FIRST_DURATION_PATTERN, "maxLength": 32}),
]


def _cel_seconds(f: str) -> str:
    """CEL: the seconds of a DomainDuration field (to the millisecond)."""
    rest = f"{f}.split('d')[1]"
    return (
        f"({f}.contains('d') ? double({f}.split('d')[0]) * 86400.0 + ({rest} == '' ? 0.0 : "
        f"double(duration({rest}).getMilliseconds()) / 1000.0) : "
        f"double(duration({f}).getMilliseconds()) / 1000.0)"
    )


class DomainDKIM(CRDModel):
    """The DKIM keys the operator generates, publishes (in status) and rotates for the domain."""

    algorithms: list[DKIMAlgorithm] = Field(default=["rsa-sha256"], min_length=1, max_length=2)
    """One key per algorithm (RSA, Ed25519); both give dual signatures."""
    rsa_key_size: Literal[2048, 3072, 4096] = Field(default=2048, alias="rsaKeySize")
    """Bits of the RSA keys generated from now on (a key signing already keeps its size until
    its rotation). Above 2048 the TXT record is split into several strings (status.zone)."""
    rotate_every: DomainDuration = 90 * 86400.0
    """How long a key signs before a new selector replaces it (at least checkInterval)."""
    grace_period: DomainDuration = 7 * 86400.0
    """How long a replaced key stays published (retiring) for mail still in flight, before its
    selector is removed from status and its key from the Secret (at least checkInterval)."""

    cel_rules = (
        Rule(
            "self.algorithms.all(a, self.algorithms.exists_one(b, b == a))",
            "dkim.algorithms must not list an algorithm twice",
            lambda d: _unique(d.algorithms),
            field_path=".algorithms",
        ),
    )


class ReportSenders(CRDModel):
    """Who may mail DMARC aggregate reports to the pools: a report counts when the client is in
    one of `networks`, or when it carries a valid DKIM signature of one of `dkimDomains` (or a
    subdomain): Google signs its reports with d=google.com, Yahoo with d=yahoo.com."""

    networks: list[CIDR] = Field(default=[], max_length=64)
    """Client networks whose reports count, e.g. 203.0.113.0/24."""
    dkim_domains: list[Hostname] = Field(default=[], max_length=64, alias="dkimDomains")
    """Domains whose valid DKIM signature on a report makes it count, e.g. google.com."""

    cel_rules = (
        Rule(
            "size(self.networks) + size(self.dkimDomains) > 0",
            "dmarc.acceptReportsFrom: name networks or dkimDomains (reports from anyone could "
            "be forged)",
            lambda r: bool(r.networks or r.dkim_domains),
            reason="FieldValueRequired",
        ),
    )


class DomainDMARC(CRDModel):
    """What the domain's DMARC record (_dmarc.<domain>) must say."""

    expected_policy: Literal["none", "quarantine", "reject"] = "reject"
    """The p= tag the record must carry (Gmail and Yahoo want at least none for bulk mail)."""
    report_address: str | None = Field(default=None, max_length=320, pattern=EMAIL_PATTERN)
    """Where aggregate reports go: the record's rua= must list mailto:<this>."""
    accept_reports_from: ReportSenders | None = None
    """Take the aggregate reports mailed to reportAddress in at the pools' submission port
    (route the address's MX there): from these senders only, each report is forwarded to the
    operator, which counts it in its metrics (mailfleet_dmarc_*). Needs the operator's
    --dmarc-listen and --dmarc-url. Unset: reports reach the operator by HTTP upload only."""

    cel_rules = (
        Rule(
            "!has(self.acceptReportsFrom) || has(self.reportAddress)",
            "dmarc.reportAddress is required with dmarc.acceptReportsFrom",
            lambda d: d.accept_reports_from is None or d.report_address is not None,
            field_path=".reportAddress",
            reason="FieldValueRequired",
        ),
    )


class SendingDomainSpec(CRDModel):
    """A domain mail is sent for: its DKIM keys (generated and rotated by the operator) and the
    DNS records (SPF, DKIM, DMARC, reverse DNS of the pools' IPs) checked continuously."""

    domain: Hostname
    """The domain in the From: header and the d= of the DKIM signatures."""
    pools: list[ObjectName] = Field(default=[], max_length=64)
    """SendingPools (same namespace) that send for the domain: they sign with its active keys,
    and SPF and reverse DNS are checked for each of their IPs."""
    dkim: DomainDKIM = DomainDKIM()
    dmarc: DomainDMARC = DomainDMARC()
    dns: DNS = DNS()
    """The resolvers the checks ask; none: the operator's --dns-nameservers, else its own
    (/etc/resolv.conf)."""
    check_interval: DomainDuration = 300.0
    """How often DNS is checked again (and a rotation step taken); at least 1s."""
    on_failing_ip: Literal["Warn", "StopSending"] = Field(default="Warn", alias="onFailingIP")
    """What happens when a pool IP fails a check for this domain: SPF does not authorise it
    (IPNotAuthorized), or its reverse DNS is not forward-confirmed to its HELO name (NoPTR,
    PTRMismatch, ForwardMismatch). Warn: the condition and a Warning event on the domain and
    the pool. StopSending: also, the pools stop sending the domain's mail (envelope sender at
    the domain or a subdomain) from that IP, while other domains' mail still uses it; with no
    IP left, the mail waits in the queue (deferred, not lost). The restriction lifts at the
    first check that passes (status.stoppedIPs); a failed DNS lookup changes nothing."""

    cel_rules = (
        Rule(
            "self.pools.all(p, self.pools.exists_one(q, q == p))",
            "pools must not list a pool twice",
            lambda s: _unique(s.pools),
            field_path=".pools",
        ),
        Rule(
            f"{_cel_seconds('self.checkInterval')} >= 1.0",
            "checkInterval: must be at least 1s",
            lambda s: s.check_interval >= 1.0,
            field_path=".checkInterval",
        ),
        Rule(
            f"{_cel_seconds('self.dkim.rotateEvery')} >= {_cel_seconds('self.checkInterval')}",
            "dkim.rotateEvery must be at least checkInterval: keys change at checks",
            lambda s: round(s.dkim.rotate_every, 3) >= round(s.check_interval, 3),
            field_path=".dkim.rotateEvery",
        ),
        Rule(
            f"{_cel_seconds('self.dkim.gracePeriod')} >= {_cel_seconds('self.checkInterval')}",
            "dkim.gracePeriod must be at least checkInterval: keys are retired at checks",
            lambda s: round(s.dkim.grace_period, 3) >= round(s.check_interval, 3),
            field_path=".dkim.gracePeriod",
        ),
    )


SelectorState = Literal["pending", "active", "retiring"]


class DomainSelector(CRDModel):
    """A DKIM key of the domain, stored under `<selector>.pem` in the Secret status.secretName."""

    selector: str = Field(max_length=63, pattern=DKIM_SELECTOR_PATTERN)
    """The s= of the signatures: the record is <selector>._domainkey.<domain>."""
    algorithm: DKIMAlgorithm
    """rsa-sha256 (RSA 2048) or ed25519-sha256."""
    state: SelectorState
    """pending: generated, waiting for its record in DNS (not signing); active: signing;
    retiring: replaced, kept published for dkim.gracePeriod."""
    since: datetime
    """When the key entered this state."""


class DNSRecord(CRDModel):
    """A record to publish, as the checks expect it."""

    name: str = Field(max_length=253)
    """The owner name, e.g. mf20261130r._domainkey.example.com."""
    type: Literal["TXT", "A", "AAAA", "PTR"]
    """The record type."""
    value: str = Field(max_length=4096)
    """The record data (a TXT record's text unquoted)."""


class TransportSecurity(CRDModel):
    """The domain's MTA-STS and TLS-RPT records as found (noted, not judged: they concern mail
    sent to the domain)."""

    mta_sts: str | None = Field(default=None, max_length=1024)
    """The _mta-sts TXT record, or why there is none."""
    tls_rpt: str | None = Field(default=None, max_length=1024)
    """The _smtp._tls TXT record, or why there is none."""


class StoppedIP(CRDModel):
    """A pool IP that sends none of the domain's mail (onFailingIP: StopSending)."""

    address: IPAddress
    """The pool IP."""
    pool: ObjectName
    """The SendingPool it belongs to."""
    reason: str = Field(max_length=1024)
    """The failing check's reason: IPNotAuthorized, NoPTR, PTRMismatch or ForwardMismatch."""
    message: str = Field(default="", max_length=4096)
    """What the check found, for a human."""
    since: datetime
    """When the IP stopped sending the domain's mail."""


class SendingDomainStatus(CRDModel):
    """The domain's keys, the records to publish and what DNS says."""

    observed_generation: int | None = None
    """The .metadata.generation this status was written for."""
    conditions: Conditions = []
    """Ready, DKIMPublished, SPFValid, DMARCAligned, ReverseDNS."""
    secret_name: str | None = Field(default=None, max_length=253)
    """The Secret (owned by the operator) holding the private keys."""
    selectors: list[DomainSelector] = Field(default=[], max_length=16)
    """The domain's DKIM keys and the state of each."""
    active_selectors: str | None = Field(default=None, max_length=1024)
    """The signing selectors, comma-separated (for `kubectl get`)."""
    records: list[DNSRecord] = Field(default=[], max_length=600)
    """What DNS must hold for every condition to be True."""
    zone: str | None = Field(default=None, max_length=65536)
    """The records as zone-file lines, ready to paste."""
    transport_security: TransportSecurity | None = None
    stopped_ips: list[StoppedIP] = Field(default=[], max_length=512, alias="stoppedIPs")
    """Pool IPs that do not send the domain's mail now (onFailingIP: StopSending), and why."""


# --- whole objects -----------------------------------------------------------------------------


class KubeObject(BaseModel):
    """A whole object as read from the API server (metadata left as a plain mapping)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
    api_version: Literal["mailfleet.io/v1alpha1"] = "mailfleet.io/v1alpha1"
    metadata: dict[str, Any] = {}


class SendingPool(KubeObject):
    kind: Literal["SendingPool"] = "SendingPool"
    spec: SendingPoolSpec
    status: SendingPoolStatus | None = None


class DeliveryPolicy(KubeObject):
    kind: Literal["DeliveryPolicy"] = "DeliveryPolicy"
    spec: DeliveryPolicySpec
    status: DeliveryPolicyStatus | None = None


class SendingDomain(KubeObject):
    kind: Literal["SendingDomain"] = "SendingDomain"
    spec: SendingDomainSpec
    status: SendingDomainStatus | None = None


class IPWarmup(KubeObject):
    kind: Literal["IPWarmup"] = "IPWarmup"
    spec: IPWarmupSpec
    status: IPWarmupStatus | None = None


# --- what the CRDs declare besides the schemas -------------------------------------------------


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0  # 1: only with -o wide


@dataclass(frozen=True)
class Kind:
    """One CRD: the names, the models and what `kubectl get` shows."""

    model: type[KubeObject]
    spec: type[CRDModel]
    status: type[CRDModel]
    plural: str
    short_names: tuple[str, ...]
    columns: tuple[PrinterColumn, ...]
    # Scale subresource paths (spec replicas, status replicas, label selector), if any.
    scale: tuple[str, str, str] | None = None
    root_rules: tuple[Rule, ...] = ()
    categories: tuple[str, ...] = field(default=("mailfleet",))

    @property
    def kind(self) -> str:
        return self.model.__name__

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _ready(what: str) -> str:
    return f'.status.conditions[?(@.type=="Ready")].{what}'


_AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

# The pool's name prefixes its StatefulSet, Services and pods (`<name>-<ordinal>`), and pod
# names end up in label values (controller-revision-hash: 63 characters), hence the bound.
POOL_NAME_MAX = 40

KINDS: tuple[Kind, ...] = (
    Kind(
        model=SendingPool,
        spec=SendingPoolSpec,
        status=SendingPoolStatus,
        plural="sendingpools",
        short_names=("mfpool",),
        columns=(
            PrinterColumn("Ready", _ready("status"), description="The Ready condition"),
            PrinterColumn("Reason", _ready("reason")),
            PrinterColumn("Replicas", ".status.replicas", "integer"),
            PrinterColumn(
                "Desired", ".status.desiredReplicas", "integer", "Pods the pool is moving to"
            ),
            PrinterColumn("Ready-Pods", ".status.readyReplicas", "integer"),
            PrinterColumn("Queue", ".status.queueDepth", "integer", "Messages queued"),
            PrinterColumn(
                "Config-Current",
                ".status.updatedPods",
                "integer",
                "Pods running the current config",
            ),
            PrinterColumn("Active-IPs", ".status.activeIPs", "integer"),
            PrinterColumn("Quarantined", ".status.quarantinedIPs", "integer"),
            _AGE,
            PrinterColumn("Min", ".spec.replicas.min", "integer", priority=1),
            PrinterColumn("Max", ".spec.replicas.max", "integer", priority=1),
            PrinterColumn("Message", _ready("message"), priority=1),
            PrinterColumn("Draining", ".status.drainingPods", priority=1),
            PrinterColumn("Handoff-Left", ".status.handoffLeft", "integer", priority=1),
            PrinterColumn("Scale-Reason", ".status.scaleReason", priority=1),
        ),
        # The scale subresource drives spec.replicas.desired, not min/max: HPA/KEDA (or
        # `kubectl scale`) set a target, the operator clamps it to [min, max]; removing
        # `desired` hands scaling back to the built-in queue autoscaler. status.replicas counts
        # the pods that exist, status.selector is the pods' label selector.
        scale=(".spec.replicas.desired", ".status.replicas", ".status.selector"),
        root_rules=(
            Rule(
                f"size(self.metadata.name) <= {POOL_NAME_MAX}",
                f"metadata.name must be at most {POOL_NAME_MAX} characters: it prefixes the "
                "names of the pool's StatefulSet, Services and pods",
                lambda obj: len(obj.metadata.get("name", "")) <= POOL_NAME_MAX,
                field_path=".metadata.name",
            ),
        ),
    ),
    Kind(
        model=DeliveryPolicy,
        spec=DeliveryPolicySpec,
        status=DeliveryPolicyStatus,
        plural="deliverypolicies",
        short_names=("mfpolicy",),
        columns=(
            PrinterColumn("Providers", ".status.providerCount", "integer"),
            PrinterColumn("Pools", ".status.poolCount", "integer", "SendingPools using it"),
            PrinterColumn("Ready", _ready("status")),
            PrinterColumn("Reason", _ready("reason")),
            _AGE,
            PrinterColumn("Used-By", ".status.pools", priority=1),
            PrinterColumn("Message", _ready("message"), priority=1),
        ),
    ),
    Kind(
        model=IPWarmup,
        spec=IPWarmupSpec,
        status=IPWarmupStatus,
        plural="ipwarmups",
        short_names=("mfwarmup",),
        columns=(
            PrinterColumn("Pool", ".spec.poolRef"),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Day", ".status.day", "integer"),
            PrinterColumn("Today-Cap", ".status.todayCap", "integer", "Messages per IP today"),
            PrinterColumn("Ready", _ready("status")),
            _AGE,
            PrinterColumn("Reason", _ready("reason"), priority=1),
            PrinterColumn("Addresses", ".spec.addresses", priority=1),
        ),
    ),
    Kind(
        model=SendingDomain,
        spec=SendingDomainSpec,
        status=SendingDomainStatus,
        plural="sendingdomains",
        short_names=("mfdomain",),
        columns=(
            PrinterColumn("Domain", ".spec.domain"),
            PrinterColumn("Ready", _ready("status")),
            PrinterColumn("Reason", _ready("reason")),
            PrinterColumn("Signing", ".status.activeSelectors", description="Active selectors"),
            PrinterColumn("DKIM", '.status.conditions[?(@.type=="DKIMPublished")].status'),
            PrinterColumn("SPF", '.status.conditions[?(@.type=="SPFValid")].status'),
            PrinterColumn("DMARC", '.status.conditions[?(@.type=="DMARCAligned")].status'),
            PrinterColumn("rDNS", '.status.conditions[?(@.type=="ReverseDNS")].status'),
            _AGE,
            PrinterColumn("Pools", ".spec.pools", priority=1),
            PrinterColumn(
                "Stopped-IPs",
                ".status.stoppedIPs[*].address",
                description="Pool IPs not sending the domain's mail",
                priority=1,
            ),
            PrinterColumn("Message", _ready("message"), priority=1),
        ),
    ),
)


def parse_object(data: dict[str, Any]) -> KubeObject:
    """A whole mailfleet object from a manifest or the API server, its kind's rules checked."""
    for k in KINDS:
        if data.get("kind") == k.kind:
            obj = k.model.model_validate(data)
            failed = [r.message for r in k.root_rules if not r.check(obj)]
            if failed:
                raise ValueError("; ".join(failed))
            return obj
    raise ValueError(f"not a {GROUP} kind: {data.get('kind')!r}")
