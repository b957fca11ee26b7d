"""EngineConfig: the engine's configuration, and the contract the operator renders into a ConfigMap.

Field names are camelCase in YAML (like every Kubernetes object around it); unknown fields are
errors, so a typo is named instead of silently ignored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from mailfleet.mta.units import Duration, Rate, Size

DEFAULT_SIGNED_HEADERS = [
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-description",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-message-id",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    "feedback-id",
]


# A host name as RFC 1123 allows it (letters, digits, inner hyphens; labels of at most 63
# characters, at most 253 in all): it goes into the banner, EHLO and Received headers as is.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def _hostname(v: str) -> str:
    if len(v) > 253 or not _HOSTNAME.fullmatch(v):
        raise ValueError(
            f"{v[:80]!r} is not a host name: expected letters, digits, hyphens and dots"
            " (RFC 1123), at most 253 characters"
        )
    return v.rstrip(".")


Hostname = Annotated[str, AfterValidator(_hostname)]


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """("127.0.0.1", 2525) from "127.0.0.1:2525", "[::1]:25" or "mx.example.com"."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{value!r}: expected host:port")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{value!r}: expected host:port, the port is missing")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


class TLSFiles(Model):
    cert_file: Path
    key_file: Path


class AuthLimitsConfig(Model):
    """AUTH failures tolerated per (client IP, user name), and per client IP over all its user
    names, within `window`; past either that pair (or client) is locked out for `lockout`:
    421 4.7.0 and the connection is closed. Never per user name alone: failures from elsewhere
    do not lock a user out (bcrypt's two threads already bound how fast anyone can guess)."""

    max_failures: int = Field(default=5, ge=1)
    # A client address guessing many user names (or several users behind one NAT mistyping).
    max_failures_per_client: int = Field(default=20, ge=1)
    window: Duration = 300.0
    lockout: Duration = 900.0


class SubmissionConfig(Model):
    """Where applications hand mail in."""

    listen: str = "127.0.0.1:2525"
    max_message_size: Size = Field(default=25 * 1024 * 1024, gt=0)
    max_recipients: int = Field(default=100, ge=1, le=100000)
    trusted_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=lambda: [ipaddress.ip_network("127.0.0.1/32")]
    )
    # A file of "user:bcrypt-hash" lines (htpasswd -B). AUTH is only offered after STARTTLS.
    auth_users_file: Path | None = None
    tls: TLSFiles | None = None
    # Several processes may share the port (SO_REUSEPORT) to use every core.
    reuse_port: bool = False
    # The longest a whole DATA transfer may take, however fast the client sends.
    data_timeout: Duration = 300.0
    # A client silent this long between commands is disconnected (421 4.4.2).
    command_timeout: Duration = 60.0
    # During DATA a client must keep sending at least this many bytes a second on average
    # (after a first commandTimeout of grace), like Postfix's smtpd_min_data_rate.
    min_data_rate: Size = 500
    # Sessions open at once, over all clients and per client IP; past either the client gets
    # 421 4.7.0 at connect.
    max_sessions: int = Field(default=1000, ge=1)
    max_sessions_per_client: int = Field(default=50, ge=1)
    # A bare CR or LF inside DATA: reject (550 5.5.2, like Postfix's smtpd_forbid_bare_newline)
    # or normalize it to CRLF before signing, for legacy clients.
    bare_newlines: Literal["reject", "normalize"] = "reject"
    # Recipients at an address literal (user@[192.0.2.1]): refused at RCPT unless accepted here;
    # accepted ones still follow static routes.
    address_literals: Literal["refuse", "accept"] = "refuse"
    auth_limits: AuthLimitsConfig = Field(default_factory=lambda: AuthLimitsConfig())
    # The client's header block (up to the first empty line): past either bound the message is
    # refused at the end of DATA (552 5.3.4) before anything is queued. 1 MiB is Exim's
    # header_maxsize; real mail has tens of fields, ARC-sealed list mail a few hundred.
    max_header_bytes: Size = Field(default=1024 * 1024, ge=1024)
    max_header_fields: int = Field(default=1000, ge=10)
    # Sessions neither authenticated nor from trustedNetworks may only mail the feedback and
    # DMARC report addresses: their messages may be this large (552 5.3.4 past it) ...
    max_report_size: Size = Field(default=10 * 1024 * 1024, gt=0)
    # ... and all of them together may hold this many bytes of message data at once (452 4.3.1
    # past it, try later), so that anyone's open sessions cannot take the engine's memory.
    untrusted_data_budget: Size = Field(default=64 * 1024 * 1024, gt=0)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_hostport(v)
        return v

    @model_validator(mode="after")
    def _auth_needs_tls(self) -> SubmissionConfig:
        if self.auth_users_file is not None and self.tls is None:
            raise ValueError(
                "submission.authUsersFile needs submission.tls: AUTH is only offered over TLS"
            )
        return self


class AdminConfig(Model):
    """The admin HTTP API and Prometheus /metrics.

    /healthz, /readyz, /metrics and /v1/status are open; everything else (drain, reload, the
    suppression list) needs `Authorization: Bearer <token>` with the token in `tokenFile`.
    Without a token file the engine serves the admin API on loopback only.
    """

    listen: str = "127.0.0.1:8025"
    token_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_hostport(v)
        return v

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> AdminConfig:
        if self.token_file is None and not is_loopback_host(parse_hostport(self.listen)[0]):
            raise ValueError(
                f"admin.tokenFile is required when admin.listen ({self.listen}) is not a "
                "loopback address: the admin API can drain the engine and edit suppressions"
            )
        return self


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def with_listen_host(data: Any, host: str) -> Any:
    """The raw config with the host part of submission.listen and admin.listen replaced: a pod
    listens on its own address (its pod IP), whatever the rendered config says."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for section, default in (("submission", "127.0.0.1:2525"), ("admin", "127.0.0.1:8025")):
        block = dict(out.get(section) or {})
        listen = block.get("listen", default)
        if isinstance(listen, str):
            try:
                _, port = parse_hostport(listen)
            except ValueError:
                continue  # validation names it
            literal = f"[{host}]" if ":" in host else host
            block["listen"] = f"{literal}:{port}"
            out[section] = block
    return out


def config_digest(text: str | bytes) -> str:
    """The identity of a config text: what the operator rendered and what an engine runs."""
    raw = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(raw).hexdigest()[:16]


class SpoolConfig(Model):
    path: Path = Path("/var/spool/mailfleet")
    # Concurrent sessions share one fsync: a commit waits at most this long for company.
    group_commit_window: Duration = 0.0
    # Messages being worked on at once (in memory: ready, in flight, held by shaping), like
    # Postfix's qmgr_message_active_limit; the rest wait on disk, bodies included.
    active_limit: int = Field(default=20000, ge=1)
    # Of those, at most this many for one recipient domain, so a backlogged domain leaves room
    # for the others (default: a quarter of activeLimit).
    active_limit_per_domain: int | None = Field(default=None, ge=1)
    # New mail is refused with 452 4.3.1 at MAIL and DATA while the spool's filesystem has less
    # than this free, so retries and DSNs still have room to be written.
    disk_reserve: Size = Field(default=256 * 1024 * 1024, ge=0)
    # WAL checkpoint and incremental vacuum (deleted messages' space back to the filesystem).
    housekeeping_interval: Duration = Field(default=15.0, gt=0)

    @property
    def domain_limit(self) -> int:
        if self.active_limit_per_domain is not None:
            return min(self.active_limit_per_domain, self.active_limit)
        return max(self.active_limit // 4, 1)


class DNSConfig(Model):
    nameservers: list[str] = Field(default_factory=list)  # empty: the system resolver's
    port: int = Field(default=53, ge=1, le=65535)
    timeout: Duration = 5.0
    max_cache_ttl: Duration = Field(default=3600.0, alias="maxCacheTTL")

    @field_validator("nameservers")
    @classmethod
    def _ips(cls, v: list[str]) -> list[str]:
        for ns in v:
            ipaddress.ip_address(ns)
        return v


class RoutingConfig(Model):
    # domain (or "*" for everything else) -> "host:port"; bypasses MX lookup.
    routes: dict[str, str] = Field(default_factory=dict)
    dns: DNSConfig = Field(default_factory=DNSConfig)
    # The port of every MX host (and domain literal). Real mail always uses 25; tests point MX
    # records at simulated providers on an unprivileged port.
    mx_port: int = Field(default=25, ge=1, le=65535)
    # Connect to MX hosts (and address-literal recipients) whose addresses are private,
    # loopback, link-local or otherwise not public. Off: a recipient's DNS cannot point the
    # engine at services inside the cluster; such hosts are skipped, and a domain with only
    # those bounces (5.4.4). Static `routes` are ours and always used as written. On only
    # for a test world whose MX hosts live on loopback.
    allow_private_mx: bool = Field(default=False, alias="allowPrivateMX")

    @field_validator("routes")
    @classmethod
    def _routes(cls, v: dict[str, str]) -> dict[str, str]:
        for domain, target in v.items():
            try:
                parse_hostport(target, default_port=25)
            except ValueError as e:
                raise ValueError(f"routes[{domain!r}]: {e}") from None
        return {k.lower().rstrip("."): t for k, t in v.items()}


IPState = Literal["active", "warming", "standby", "quarantined"]


class SourceIP(Model):
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    # HELO name; should match the address's PTR record.
    hostname: Hostname | None = None
    # Set by the operator: only active and warming addresses send.
    state: IPState = "active"
    # socks5://host:port of a proxy that sends from this address (overrides delivery.egress).
    proxy: str | None = None
    # The pod that sends from this address (a StatefulSet pod name); an engine started with
    # POD_NAME in its environment uses only its own addresses. None: any engine may use it.
    owner: str | None = None
    # Set by the operator while the address moves between pods: nobody sends from it until the
    # operator has handed its shaping state and warmup counts to the new owner.
    hold: bool = False


class EgressConfig(Model):
    """How a source address is used: bound locally, or through a SOCKS5 proxy that owns it."""

    mode: Literal["bind", "socks5"] = "bind"
    proxy: str | None = None  # socks5://host:port, for every source IP without its own
    # One line "username:password": the RFC 1929 credentials presented to every SOCKS5 proxy
    # used (sourceIPs[].proxy's too); the operator mounts it from a Secret it generates. None:
    # no authentication offered.
    auth_file: Path | None = None

    @model_validator(mode="after")
    def _proxy(self) -> EgressConfig:
        if self.mode == "socks5" and not self.proxy:
            raise ValueError(
                "delivery.egress.proxy is required when delivery.egress.mode is socks5"
            )
        if self.proxy is not None:
            if not self.proxy.startswith("socks5://"):
                raise ValueError("delivery.egress.proxy must look like socks5://host:port")
            parse_hostport(self.proxy.removeprefix("socks5://"))
        return self


class SenderRestrictionConfig(Model):
    """Source IPs that must not send mail of one sender domain (the operator sets these from a
    SendingDomain with onFailingIP: StopSending, for IPs failing its SPF or reverse DNS).

    Applies to mail whose envelope sender (MAIL FROM) is `domain` or one of its subdomains
    without an entry of its own. Such mail is sent from the other source IPs; when none is left
    it waits in the queue (deferred, never dropped) until the restriction lifts."""

    domain: str = Field(min_length=1, max_length=253)
    excluded_ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(
        min_length=1, alias="excludedIPs"
    )
    # Why, for logs and status (e.g. "SPF of example.com does not authorise 192.0.2.7").
    reason: str = Field(default="", max_length=1024)

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return v.lower().rstrip(".")


class DeliveryConfig(Model):
    # Empty: the kernel picks the source address.
    source_ips: list[SourceIP] = Field(default_factory=list, alias="sourceIPs")
    egress: EgressConfig = Field(default_factory=EgressConfig)
    max_messages_per_connection: int = Field(default=100, ge=1)
    max_connections_per_host: int = Field(default=20, ge=1)
    max_concurrent_deliveries: int = Field(default=200, ge=1)
    tls: Literal["opportunistic", "required", "none"] = "opportunistic"
    # Domains (lowercase) that must be reached over TLS whatever `tls` says.
    require_tls_domains: list[str] = Field(default_factory=list, alias="requireTLSDomains")
    connect_timeout: Duration = 30.0
    command_timeout: Duration = 300.0
    idle_timeout: Duration = 10.0
    sender_restrictions: list[SenderRestrictionConfig] = Field(default_factory=list)

    @field_validator("sender_restrictions")
    @classmethod
    def _one_per_domain(cls, v: list[SenderRestrictionConfig]) -> list[SenderRestrictionConfig]:
        domains = [r.domain for r in v]
        dupes = sorted({d for d in domains if domains.count(d) > 1})
        if dupes:
            raise ValueError(f"one entry per sender domain; repeated: {', '.join(dupes)}")
        return v

    @field_validator("source_ips")
    @classmethod
    def _unique(cls, v: list[SourceIP]) -> list[SourceIP]:
        seen = set()
        for ip in v:
            if ip.address in seen:
                raise ValueError(f"source IP {ip.address} is listed twice")
            seen.add(ip.address)
        return v


class RetryConfig(Model):
    """When a deferred recipient is tried again: from initial, doubling up to max (with
    jitter), until the message is maxAge old and bounces."""

    model_config = ConfigDict(use_attribute_docstrings=True)
    initial: Duration = 300.0
    """The delay before the first retry, e.g. 5m; each next one doubles it."""
    max: Duration = 3600.0
    """The longest delay between two attempts."""
    max_age: Duration = 3 * 86400.0
    """A message still undelivered this long after it was accepted bounces."""
    jitter: float = Field(default=0.2, ge=0, le=1)
    """Share of each delay added or taken at random, so retries do not come in waves."""

    @model_validator(mode="after")
    def _order(self) -> RetryConfig:
        if self.initial <= 0:
            raise ValueError("retry.initial must be greater than 0")
        if self.max < self.initial:
            raise ValueError("retry.max must be at least retry.initial")
        return self


# -- shaping: what the operator renders from DeliveryPolicies and IPWarmups ---------------------


class ProviderMatchConfig(Model):
    mx_suffixes: list[str] = Field(default_factory=list)
    recipient_domains: list[str] = Field(default_factory=list)


class PerIPLimitsConfig(Model):
    """Limits per (source IP, provider) pair."""

    # 20, like Postfix's default_destination_concurrency_limit; policies set less for providers
    # that want less.
    max_connections: int = Field(default=20, ge=1)
    # Fewer messages per connection than delivery.maxMessagesPerConnection for this provider;
    # None: that engine-wide cap alone (the operator renders the policy's, default 50).
    max_messages_per_connection: int | None = Field(default=None, ge=1)
    max_message_rate: Rate | None = None


class AdaptiveConfig(Model):
    """The pair's rate controller (mta/aimd.py): a counted throttling signal steps down (to 85 %
    near the remembered ceiling, else times `decrease`); each clean `recoveryInterval` grows it (at
    least `increase` below the ceiling), up to the policy maximum, never below `floor`."""

    enabled: bool = True
    decrease: float = Field(default=0.5, gt=0, lt=1)
    increase: Rate = 10 / 60
    recovery_interval: Duration = 300.0
    floor: Rate = 10 / 60


def _check_regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as e:
        raise ValueError(f"{v!r} is not a regular expression: {e}") from None
    return v


Regex = Annotated[str, AfterValidator(_check_regex)]

ReplyAction = Literal["throttle", "suspend", "retry", "bounce", "quarantine"]


def _action(v: object) -> object:
    # The issue and older configs say quarantine-ip; the CRD says quarantine. Same action.
    return "quarantine" if v == "quarantine-ip" else v


class ReplyRuleConfig(Model):
    """A regex searched in the whole reply ("421 4.7.28 ...") and what to do when it matches:
    at once, or only once `threshold` matches fell within `window`."""

    match: Regex
    action: Annotated[ReplyAction, BeforeValidator(_action)]
    # suspend: how long the pair sends nothing; quarantine: how long the IP rests (default 24h).
    duration: Duration | None = None
    threshold: int = Field(default=1, ge=1)
    window: Duration = 60.0


class PoolLimitsConfig(Model):
    """Limits per provider across every source IP of this engine."""

    max_connections: int | None = Field(default=None, ge=1)
    max_message_rate: Rate | None = None


class ProviderSettingsConfig(Model):
    per_ip: PerIPLimitsConfig = Field(default_factory=PerIPLimitsConfig, alias="perIP")
    pool: PoolLimitsConfig = Field(default_factory=PoolLimitsConfig)
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig)
    rules: list[ReplyRuleConfig] = Field(default_factory=list)
    retry: RetryConfig | None = None  # None: the engine-wide retry


class ProviderConfig(ProviderSettingsConfig):
    name: str
    match: ProviderMatchConfig = Field(default_factory=ProviderMatchConfig)


class WarmupCapConfig(Model):
    """Today's cap for one (source IP, provider): the operator advances `day` and `dailyCap`."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    provider: str  # a provider name, or "*" for every provider
    day: int = Field(ge=0)
    daily_cap: int = Field(ge=0)
    # When this warmup day began (epoch seconds), as the operator counts days: the count and
    # the slots are the operator's day. None: days are the engine's, aligned to the epoch.
    day_start: float | None = None


ReplyClassName = Literal[
    "invalid-recipient",
    "mailbox-full",
    "throttled",
    "reputation",
    "auth-policy",
    "content",
    "dns",
    "connection-tls",
    "other",
]


class ReplyClassRule(Model):
    """A regex on the reply text that decides its class before the shipped table does."""

    match: Regex
    reply_class: ReplyClassName = Field(alias="class")


class ShapingConfig(Model):
    providers: list[ProviderConfig] = Field(default_factory=list)
    # Extra reply classification, checked before the shipped provider texts and RFC 3463 table.
    reply_classes: list[ReplyClassRule] = Field(default_factory=list)
    default: ProviderSettingsConfig = Field(default_factory=ProviderSettingsConfig)
    warmup: list[WarmupCapConfig] = Field(default_factory=list)
    # Mail that would exceed a warming IP's cap: spill to other IPs, or defer (wait for the cap).
    overflow: Literal["spill", "defer"] = "spill"
    # A day's warmup cap is released in this many equal slots, so it is not spent in the first
    # minutes of the day.
    warmup_slots: int = Field(default=24, ge=1, le=1440)
    # The length of a warmup day; only tests shorten it.
    day_length: Duration = 86400.0

    @field_validator("providers")
    @classmethod
    def _unique(cls, v: list[ProviderConfig]) -> list[ProviderConfig]:
        names = [p.name for p in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"provider names must be unique; repeated: {', '.join(dupes)}")
        return v


class SuppressionConfig(Model):
    """Recipients not to send to again: hard bounces and complaints."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    # sqlite: a file beside the spool (spool.path/suppressions.db) unless set.
    path: Path | None = None
    # redis: one list shared by every engine of the fleet (redis://host:port/db).
    redis_url: str | None = Field(default=None, alias="redisURL")
    # Keys are namespaced so pools can share a Redis without sharing lists.
    namespace: str = "default"
    # reject: 550 5.7.1 at RCPT; drop: accept, log, and never deliver.
    on_suppressed: Literal["reject", "drop"] = "reject"
    # Which reply classes suppress a recipient on bounce.
    suppress_classes: list[str] = Field(default_factory=lambda: ["invalid-recipient"])
    # ARF reports (RFC 5965) mailed to these addresses through submission are complaints.
    feedback_addresses: list[str] = Field(default_factory=list)
    # Who may send them: clients in these networks, and/or reports carrying a valid DKIM
    # signature of one of these domains (a provider's feedback loop signs its reports).
    feedback_sources: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list
    )
    feedback_domains: list[str] = Field(default_factory=list)

    @field_validator("feedback_domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return [d.lower().rstrip(".") for d in v]

    @model_validator(mode="after")
    def _redis(self) -> SuppressionConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("suppression.redisURL is required when suppression.backend is redis")
        if self.feedback_addresses and not (self.feedback_sources or self.feedback_domains):
            raise ValueError(
                "suppression.feedbackAddresses needs suppression.feedbackSources (networks) or"
                " suppression.feedbackDomains (DKIM-signing domains): a report accepted from"
                " anyone could suppress any recipient"
            )
        return self


class PodShareConfig(Model):
    """One pod's share of the pool-wide limits (shaping...pool) when they are not shared."""

    pod: str
    rate_share: float = Field(ge=0, le=1)  # of every pool-wide message rate
    # Provider name -> connections this pod may open ("default" for unmatched domains).
    connections: dict[str, int] = Field(default_factory=dict)


class FleetConfig(Model):
    """Pool-wide limits across pods: shared through Redis, else split (shares, from the
    operator). No entry for this pod and no Redis: the limits apply to this engine alone."""

    redis_url: str | None = Field(default=None, alias="redisURL")
    # Keys are namespaced per pool (<namespace>/<pool>) so pools can share a Redis.
    namespace: str = "default"
    shares: list[PodShareConfig] = Field(default_factory=list)

    @field_validator("redis_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("fleet.redisURL must look like redis://host:port/db")
        return v


class DMARCReportAddressConfig(Model):
    """An address DMARC aggregate reports (RFC 7489) are mailed to, through submission."""

    address: str = Field(min_length=3, max_length=320)
    # Where the report is forwarded (the operator's POST /dmarc/<namespace>/<sendingdomain>).
    forward_url: str = Field(alias="forwardURL", pattern=r"^https?://[^\s/]+(/\S*)?$")
    # Who may mail reports: clients in these networks, and/or reports carrying a valid DKIM
    # signature of one of these domains (or a subdomain): google.com signs its reports.
    sources: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(default_factory=list)
    signed_by: list[str] = Field(default_factory=list)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if "@" not in v:
            raise ValueError(f"{v!r} is not an email address")
        return v.lower()

    @field_validator("signed_by")
    @classmethod
    def _signers(cls, v: list[str]) -> list[str]:
        return [d.lower().rstrip(".") for d in v]

    @model_validator(mode="after")
    def _some_source(self) -> DMARCReportAddressConfig:
        if not (self.sources or self.signed_by):
            raise ValueError(
                f"dmarcReports.addresses[{self.address}]: needs sources (networks) or signedBy"
                " (DKIM-signing domains): reports accepted from anyone could be forged"
            )
        return self


class DMARCReportsConfig(Model):
    """DMARC aggregate reports mailed to `addresses` are taken in at submission (from their
    configured senders only), and their zip, gzip or XML attachment forwarded to the operator,
    which counts them in its metrics. The reply waits for the operator: a report is accepted
    (250) only once forwarded, else deferred (451) so the reporter retries."""

    addresses: list[DMARCReportAddressConfig] = Field(default_factory=list)
    # The bearer token the forward carries (the operator accepts the pool's admin token).
    token_file: Path | None = None
    timeout: Duration = 30.0

    @model_validator(mode="after")
    def _token(self) -> DMARCReportsConfig:
        if self.addresses and self.token_file is None:
            raise ValueError("dmarcReports.tokenFile is required with dmarcReports.addresses")
        return self


class HeadersConfig(Model):
    """Headers added at submission, before DKIM signing (so the signature covers them)."""

    # e.g. "<mailto:unsub@example.com?subject={recipient}>, <https://example.com/u/{token}>";
    # {recipient}, {token} (an opaque per-recipient token) and {message_id} are filled in.
    list_unsubscribe: str | None = None
    # Adds List-Unsubscribe-Post: List-Unsubscribe=One-Click (RFC 8058); needs an https URI.
    one_click: bool = True
    # e.g. "{campaign}:{customer}:transactional:mailfleet"; {x} comes from X-Mailfleet-x headers.
    feedback_id: str | None = None
    # Secret for {token} (HMAC of the recipient); read from this file.
    token_key_file: Path | None = None
    # A client's own List-Unsubscribe(-Post) / Feedback-ID where a template above is set:
    # "replace" (removed; the pool's is added) or "keep" (theirs wins, none of ours is added).
    client_headers: Literal["replace", "keep"] = "replace"


class DKIMKey(Model):
    domain: str
    selector: str = Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$")
    key_file: Path
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return v.lower().rstrip(".")


class DKIMConfig(Model):
    # Several keys for one domain (e.g. RSA and Ed25519) give dual signatures (RFC 8463).
    keys: list[DKIMKey] = Field(default_factory=list)
    headers: list[str] = Field(default_factory=lambda: list(DEFAULT_SIGNED_HEADERS))


class BounceConfig(Model):
    # The From of DSNs the engine writes; the envelope sender of a DSN is always null (<>).
    dsn_from: str | None = None  # default: MAILER-DAEMON@<hostname>


class LoggingConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class EngineConfig(Model):
    """The whole engine configuration (`mailfleet mta --config FILE`)."""

    hostname: Hostname = "localhost"
    submission: SubmissionConfig = Field(default_factory=SubmissionConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    dkim: DKIMConfig = Field(default_factory=DKIMConfig)
    shaping: ShapingConfig = Field(default_factory=ShapingConfig)
    suppression: SuppressionConfig = Field(default_factory=SuppressionConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    headers: HeadersConfig = Field(default_factory=HeadersConfig)
    dmarc_reports: DMARCReportsConfig = Field(
        default_factory=DMARCReportsConfig, alias="dmarcReports"
    )
    bounces: BounceConfig = Field(default_factory=BounceConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    def to_yaml(self) -> str:
        return yaml.dump(
            self.model_dump(mode="json", by_alias=True, exclude_none=True),
            Dumper=_NoAliasDumper,
            sort_keys=False,
        )


class _NoAliasDumper(yaml.SafeDumper):
    """Never anchors and aliases: load_config refuses them (billion laughs)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# -- the egress proxy (`mailfleet egress-proxy`): one per node, rendered by the operator -------

_TOKEN_SHA256 = re.compile(r"[0-9a-f]{64}")
EGRESS_DEFAULT_PORTS = [25, 465, 587]
Port = Annotated[int, Field(ge=1, le=65535)]


class EgressClient(Model):
    """One pool the proxy sends for: it authenticates as `name` (RFC 1929) and may send from
    `addresses` (the node's addresses it owns) to the destination `ports`."""

    # The SOCKS5 user name, "namespace/pool": printable ASCII without ':' (the engine's
    # delivery.egress.authFile is "name:password"), 1 to 255 bytes as RFC 1929 allows.
    name: str
    # The hex SHA-256 of the password: the proxy never holds the password itself.
    token_sha256: str = Field(alias="tokenSHA256")
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(min_length=1)
    ports: list[Port] = Field(default_factory=lambda: list(EGRESS_DEFAULT_PORTS), min_length=1)
    # Relays (and connects under way) at once for this client.
    max_connections: int = Field(default=1000, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not 1 <= len(v) <= 255 or not all(0x21 <= ord(c) <= 0x7E and c != ":" for c in v):
            raise ValueError(
                f"{v[:80]!r}: a client name is 1 to 255 characters of printable ASCII without"
                " ':' or spaces (the SOCKS5 user name, namespace/pool)"
            )
        return v

    @field_validator("token_sha256")
    @classmethod
    def _token(cls, v: str) -> str:
        if not _TOKEN_SHA256.fullmatch(v):
            raise ValueError(
                "expected the SHA-256 of the client's password as 64 lowercase hex digits"
            )
        return v

    @field_validator("addresses")
    @classmethod
    def _addresses(
        cls, v: list[ipaddress.IPv4Address | ipaddress.IPv6Address]
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        seen = set()
        for ip in v:
            if ip in seen:
                raise ValueError(f"{ip} is listed twice")
            seen.add(ip)
        return v


class EgressProxyConfig(Model):
    """The egress proxy's config file: it listens on `port` at every address of every client,
    and a connection reached on address X leaves from X."""

    port: Port = 1080
    # HTTP: /metrics, /livez, /readyz (host:port; --listen-address replaces the host).
    listen_admin: str = Field(default="0.0.0.0:9481", alias="adminListen")
    clients: list[EgressClient]
    # Connections at once over the whole proxy (relays and handshakes).
    max_connections: int = Field(default=4096, ge=1)
    # The longest the connection to a destination may take to open.
    connect_timeout: Duration = Field(default=30.0, gt=0)
    # A relayed connection silent both ways this long is closed.
    idle_timeout: Duration = Field(default=300.0, gt=0)
    # On SIGTERM: stop accepting, wait this long for relays to end, then close them.
    drain_timeout: Duration = Field(default=25.0, ge=0)

    @field_validator("listen_admin")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_hostport(v)
        return v

    @model_validator(mode="after")
    def _unique(self) -> EgressProxyConfig:
        names: dict[str, int] = {}
        owner: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, int] = {}
        for i, client in enumerate(self.clients):
            if client.name in names:
                raise ValueError(
                    f"clients[{i}].name: {client.name!r} is also clients[{names[client.name]}]'s"
                )
            names[client.name] = i
            for ip in client.addresses:
                if ip in owner:
                    raise ValueError(f"clients[{i}].addresses: {ip} is also clients[{owner[ip]}]'s")
                owner[ip] = i
        return self


class ConfigError(Exception):
    """A config file that cannot be used; the message names the field and the problem."""


def format_validation_error(err: ValidationError, source: str, kind: str = "engine config") -> str:
    lines = [f"{source}: invalid {kind} ({err.error_count()} problem(s)):"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if not e["loc"] and kind != "engine config":
            # A check across fields names where itself (clients[1].addresses: ...).
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "field required"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config", listen_host: str | None = None) -> EngineConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{source}: the engine config must be a mapping, got {kind}")
    if listen_host:
        data = with_listen_host(data, listen_host)
    try:
        return EngineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def read_config_text(path: str | Path) -> str:
    from mailfleet.mta.safefiles import CONFIG_FILE_MAX, UnsafeFile, read_file

    p = Path(path)
    try:
        return read_file(p, "the config file", CONFIG_FILE_MAX).decode()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file: {e.strerror}") from None
    except UnsafeFile as e:
        raise ConfigError(str(e)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: the config file is not UTF-8 text") from None


# Deeper than any engine config nests; PyYAML composes recursively.
YAML_MAX_DEPTH = 64


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader without aliases (`*name`, `<<: *name`): each would repeat what it names
    wherever it is used, so a few lines can stand for millions of nodes to validate ("billion
    laughs"). Nesting is bounded too: PyYAML composes recursively."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in the engine config", mark
            )
        if self._depth >= YAML_MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {YAML_MAX_DEPTH} levels", mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_config_text(text: str, source: str, listen_host: str | None = None) -> EngineConfig:
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    return parse_config(data, source, listen_host)


def load_config(path: str | Path, listen_host: str | None = None) -> EngineConfig:
    """Read and validate a YAML config file; ConfigError names what is wrong."""
    return parse_config_text(read_config_text(path), str(path), listen_host)


def with_admin_host(data: Any, host: str) -> Any:
    """The raw egress proxy config with the host part of adminListen replaced (the proxy's pod
    passes its POD_IP, as an engine's does)."""
    if not isinstance(data, dict):
        return data
    listen = data.get("adminListen", "0.0.0.0:9481")
    try:
        _, port = parse_hostport(listen) if isinstance(listen, str) else ("", 0)
    except ValueError:
        return data  # validation names it
    if not port:
        return data
    literal = f"[{host}]" if ":" in host else host
    return {**data, "adminListen": f"{literal}:{port}"}


def parse_egress_proxy_config(
    text: str, source: str, listen_host: str | None = None
) -> EgressProxyConfig:
    """The egress proxy's YAML config, validated; ConfigError names what is wrong."""
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{source}: the egress proxy config must be a mapping, got {kind}")
    if listen_host:
        data = with_admin_host(data, listen_host)
    try:
        return EgressProxyConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, "egress proxy config")) from None


def load_egress_proxy_config(path: str | Path, listen_host: str | None = None) -> EgressProxyConfig:
    return parse_egress_proxy_config(read_config_text(path), str(path), listen_host)
