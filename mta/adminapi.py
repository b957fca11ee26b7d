"""The admin API's bodies and answers, as the engine serves them and the operator reads them.

One module both sides import (the operator may import it: .importlinter), so that a field the
engine renames is a type error in the operator, not a `.get()` that quietly returns None.

On the wire every field keeps its camelCase name (the alias); `wire()` is what the engine
serves. Answers ignore fields they do not know and default the ones that are missing, so an
operator reads an older or newer engine's answer; request bodies the engine takes refuse what
they do not know (`ShapingAdoption`).
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

# int stays int and float stays float (a plain `float` field would send 3 as 3.0).
Number = int | float


class Answer(BaseModel):
    """An answer of the admin API (or a part of one): unknown fields ignored, missing ones
    defaulted."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    def wire(self) -> dict[str, Any]:
        """The JSON object served: camelCase names, only the fields that were given (an
        optional part the engine leaves out stays out, as a merge of answers keeps it)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    @classmethod
    def parse(cls, value: Any) -> Self:
        """An answer from decoded JSON (anything that is not an object reads as an empty one)."""
        return cls.model_validate(value if isinstance(value, dict) else {})


# -- /v1/status ---------------------------------------------------------------------------------


class SubmissionState(Answer):
    listen: str | None = None
    accepting: bool = False


class DomainQueue(Answer):
    queued: int = 0
    active: int = 0
    provider: str = ""


class ProviderQueue(Answer):
    queued: int = 0
    active: int = 0


class SenderRestriction(Answer):
    excluded_ips: list[str] = Field(default_factory=list, alias="excludedIPs")
    reason: str = ""


class SpoolDisk(Answer):
    db_bytes: int = Field(0, alias="dbBytes")
    wal_bytes: int = Field(0, alias="walBytes")
    free_pages_bytes: int = Field(0, alias="freePagesBytes")
    disk_free_bytes: int = Field(0, alias="diskFreeBytes")
    disk_reserve_bytes: int = Field(0, alias="diskReserveBytes")
    refusing_new_mail: bool = Field(False, alias="refusingNewMail")


class QueueStatus(Answer):
    """/v1/status "queue" (and a drain's answer): what the queue holds and does."""

    messages: int = 0
    recipients: int = 0
    active_messages: int = Field(0, alias="activeMessages")
    active_limit: int | None = Field(None, alias="activeLimit")
    active_limit_per_domain: int | None = Field(None, alias="activeLimitPerDomain")
    oldest_age_seconds: Number | None = Field(None, alias="oldestAgeSeconds")
    jobs_ready: int = Field(0, alias="jobsReady")
    jobs_in_flight: int = Field(0, alias="jobsInFlight")
    jobs_deferred: int = Field(0, alias="jobsDeferred")
    jobs_waiting_for_connection: int = Field(0, alias="jobsWaitingForConnection")
    jobs_held_by_sender_restriction: int = Field(0, alias="jobsHeldBySenderRestriction")
    sender_restrictions: dict[str, SenderRestriction] = Field(
        default_factory=dict, alias="senderRestrictions"
    )
    next_retry: Number | None = Field(None, alias="nextRetry")
    domains: int = 0
    by_domain: dict[str, DomainQueue] = Field(default_factory=dict, alias="byDomain")
    by_provider: dict[str, ProviderQueue] = Field(default_factory=dict, alias="byProvider")
    spool: SpoolDisk | None = None


class ShapingRow(Answer):
    """One (source IP, provider) pair of /v1/status "shaping"."""

    ip: str = ""
    provider: str = ""
    rate: Number | None = None
    max_rate: Number | None = Field(None, alias="maxRate")
    peak: Number | None = None
    ceiling: Number | None = None
    last_event: Number | None = Field(None, alias="lastEvent")
    suspended_until: Number | None = Field(None, alias="suspendedUntil")
    quarantined_until: Number | None = Field(None, alias="quarantinedUntil")
    reason: str | None = None  # "" while the pair is not blocked
    inflight: int = 0
    warmup_left: int | None = Field(None, alias="warmupLeft")


class WarmupRow(Answer):
    """One warmup cap of /v1/status "warmup": today's sends of an IP (provider "*": its whole
    day) and the cap."""

    ip: str = ""
    provider: str = ""
    sent: int = 0
    cap: int | None = None


class FleetLimits(Answer):
    """/v1/status "fleetLimits": how pool-wide limits are shared (redisError, rateShare only
    when they apply)."""

    mode: str = "local"
    redis: bool = False
    redis_error: str | None = Field(None, alias="redisError")
    rate_share: Number | None = Field(None, alias="rateShare")


class ConnectionCount(Answer):
    open: int = 0
    idle: int = 0


class WorkerState(Answer):
    """One engine process of a pod (`mailfleet mta --processes N`), as its supervisor sees it."""

    process: int = 0
    pid: int | None = None
    restarts: int = 0
    ready: bool = False
    reason: str = "no answer"


class EngineStatus(Answer):
    """GET /v1/status."""

    version: str | None = None
    hostname: str | None = None
    ready: bool = False
    reason: str = ""
    draining: bool = False
    config_generation: int | None = Field(None, alias="configGeneration")
    config_hash: str | None = Field(None, alias="configHash")
    uptime_seconds: Number | None = Field(None, alias="uptimeSeconds")
    submission: SubmissionState | None = None
    queue: QueueStatus | None = None
    shaping: list[ShapingRow] = Field(default_factory=list)
    warmup: list[WarmupRow] = Field(default_factory=list)
    source_ips: list[str] = Field(default_factory=list, alias="sourceIPs")
    fleet_limits: FleetLimits | None = Field(None, alias="fleetLimits")
    connections: dict[str, ConnectionCount] = Field(default_factory=dict)
    # A pod's supervisor adds these (one engine process has neither).
    processes: int | None = None
    workers: list[WorkerState] | None = None

    @property
    def queued(self) -> int | None:
        """Messages queued, when the answer says."""
        if self.queue is None or "messages" not in self.queue.model_fields_set:
            return None
        return self.queue.messages

    def get(self, key: str, default: Any = None) -> Any:
        """A field by its wire name, as the decoded JSON would give it: for readers not yet
        typed (new code reads the attributes)."""
        for name, info in type(self).model_fields.items():
            if (info.alias or name) == key:
                if name not in self.model_fields_set:
                    return default
                return self.model_dump(
                    mode="json", by_alias=True, exclude_unset=True, include={name}
                )[key]
        return default


# -- POST /v1/drain, /v1/undrain ---------------------------------------------------------------


class HandoffProgress(Answer):
    """A drain's handover of its queue to peers."""

    peers: list[str] = Field(default_factory=list)
    handed_off: int = Field(0, alias="handedOff")
    refused: int = 0
    passes: int = 0
    done: bool = False
    last_error: str | None = Field(None, alias="lastError")


class DrainState(Answer):
    """The answer of POST /v1/drain and /v1/undrain."""

    draining: bool = False
    queue: QueueStatus | None = None
    empty: bool = False
    handoff: HandoffProgress | None = None


class DrainRequest(BaseModel):
    """POST /v1/drain's body (or none): the admin URLs of the peers that take the queue."""

    model_config = ConfigDict(extra="ignore")

    handoff: list[str] = Field(default_factory=list)


class ReloadRequest(BaseModel):
    """POST /v1/reload's body (or none: the config file is read again)."""

    model_config = ConfigDict(extra="ignore")

    config: str | None = None


# -- the other answers ---------------------------------------------------------------------------


class QueueActionResult(Answer):
    """POST /v1/queue/retry and /v1/queue/bounce: recipients made due (or bounced)."""

    action: str = ""
    domain: str = ""
    recipients: int = 0


class ReloadResult(Answer):
    """POST /v1/reload: whether the config applied, why not, and the hash now running."""

    reloaded: bool = False
    message: str = ""
    config_hash: str | None = Field(None, alias="configHash")
    error: str | None = None  # a refused request (400) says only this


class HandoffResult(Answer):
    """POST /v1/handoff: messages received, and how many of them were new here."""

    accepted: int = 0
    new: int = 0


class AdoptResult(Answer):
    """POST /v1/shaping/adopt: the pairs taken over."""

    adopted: int = 0


class ErrorAnswer(Answer):
    """Any refusal: {"error": "..."}."""

    error: str = ""


# -- POST /v1/shaping/adopt ----------------------------------------------------------------------


class MovedRow(BaseModel):
    """One (IP, provider) row of /v1/status "shaping": what the shaper takes over of it (the
    other fields a row shows are read-only views, ignored here)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)

    ip: StrictStr
    provider: StrictStr
    rate: float | None = Field(None, ge=0)
    peak: float | None = Field(None, ge=0)
    ceiling: float | None = Field(None, ge=0)
    last_event: float | None = Field(None, alias="lastEvent")
    suspended_until: float | None = Field(None, alias="suspendedUntil")
    quarantined_until: float | None = Field(None, alias="quarantinedUntil")
    reason: StrictStr | None = None


class MovedCount(BaseModel):
    """One row of /v1/status "warmup": messages an IP sent a provider today."""

    model_config = ConfigDict(extra="ignore")

    ip: StrictStr
    provider: StrictStr
    sent: StrictInt = Field(ge=0)


class ShapingAdoption(BaseModel):
    """POST /v1/shaping/adopt: the shaping rows (as /v1/status "shaping") and today's warmup
    counts (as /v1/status "warmup") of IPs moving here from another pod."""

    model_config = ConfigDict(extra="forbid")

    shaping: list[MovedRow] = []
    warmup: list[MovedCount] = []
