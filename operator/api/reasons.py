"""Every condition type, condition reason and event reason the operator posts, with what each
means: one place for the code to name them and for the operations guide's tables to come from
(`python -m mailfleet.operator.docgen`). A reason the Argo CD health scripts or the chart's
alerts match on is one of these (tests/unit/test_reasons.py)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class ConditionType(StrEnum):
    Ready = "Ready"
    ConfigRendered = "ConfigRendered"
    PoliciesResolved = "PoliciesResolved"
    SecretsFound = "SecretsFound"
    IPsHealthy = "IPsHealthy"
    FleetLimits = "FleetLimits"
    EgressPlaced = "EgressPlaced"
    PodsReachable = "PodsReachable"
    DKIMPublished = "DKIMPublished"
    SPFValid = "SPFValid"
    DMARCAligned = "DMARCAligned"
    ReverseDNS = "ReverseDNS"


class ConditionReason(StrEnum):
    # SendingPool
    PodsReady = "PodsReady"
    ScaledToZero = "ScaledToZero"
    PodsNotReady = "PodsNotReady"
    DKIMSecretMissing = "DKIMSecretMissing"
    SecretMissing = "SecretMissing"
    RenderFailed = "RenderFailed"
    Rendered = "Rendered"
    Resolved = "Resolved"
    PolicyConflict = "PolicyConflict"
    NoPolicySelected = "NoPolicySelected"
    Found = "Found"
    NotChecked = "NotChecked"
    Healthy = "Healthy"
    Quarantined = "Quarantined"
    NoHealthyIP = "NoHealthyIP"
    Split = "Split"
    Shared = "Shared"
    NoReport = "NoReport"
    RedisUnreachable = "RedisUnreachable"
    Placed = "Placed"
    AddressNotOnNode = "AddressNotOnNode"
    AddressOnTwoNodes = "AddressOnTwoNodes"
    NodeNotReady = "NodeNotReady"
    NodesReady = "NodesReady"
    # DeliveryPolicy
    InUse = "InUse"
    Unused = "Unused"
    # IPWarmup (its phases are its Ready reasons)
    Warming = "Warming"
    Holding = "Holding"
    Complete = "Complete"
    Paused = "Paused"
    PoolNotFound = "PoolNotFound"
    AddressesNotInPool = "AddressesNotInPool"
    # SendingDomain
    Ready = "Ready"
    NoActiveKey = "NoActiveKey"
    DNSError = "DNSError"
    Published = "Published"
    RotationPending = "RotationPending"
    AwaitingPublication = "AwaitingPublication"
    KeyNotPublished = "KeyNotPublished"
    KeyMismatch = "KeyMismatch"
    Valid = "Valid"
    NoSPFRecord = "NoSPFRecord"
    MultipleSPFRecords = "MultipleSPFRecords"
    SPFLoop = "SPFLoop"
    SPFSyntaxError = "SPFSyntaxError"
    TooManyLookups = "TooManyLookups"
    IPNotAuthorized = "IPNotAuthorized"
    Aligned = "Aligned"
    NoDMARCRecord = "NoDMARCRecord"
    MultipleDMARCRecords = "MultipleDMARCRecords"
    PolicyMismatch = "PolicyMismatch"
    ReportAddressMissing = "ReportAddressMissing"
    ForwardConfirmed = "ForwardConfirmed"
    NoPoolIPs = "NoPoolIPs"
    NoPTR = "NoPTR"
    PTRMismatch = "PTRMismatch"
    ForwardMismatch = "ForwardMismatch"


class EventReason(StrEnum):
    Created = "Created"
    Updated = "Updated"
    ConfigRendered = "ConfigRendered"
    ImmutableFieldChanged = "ImmutableFieldChanged"
    SecretsFound = "SecretsFound"
    DKIMSecretMissing = "DKIMSecretMissing"
    SecretMissing = "SecretMissing"
    RenderFailed = "RenderFailed"
    PolicyConflict = "PolicyConflict"
    ScaledUp = "ScaledUp"
    ScaledDown = "ScaledDown"
    Draining = "Draining"
    Drained = "Drained"
    DrainCancelled = "DrainCancelled"
    EngineQuarantined = "EngineQuarantined"
    IPOwnerChanged = "IPOwnerChanged"
    IPQuarantined = "IPQuarantined"
    IPRecovered = "IPRecovered"
    StandbyPromoted = "StandbyPromoted"
    StandbyReleased = "StandbyReleased"
    NoHealthyIP = "NoHealthyIP"
    WarmupAdvanced = "WarmupAdvanced"
    WarmupHeld = "WarmupHeld"
    WarmupSteppedBack = "WarmupSteppedBack"
    WarmupComplete = "WarmupComplete"
    DKIMKeyGenerated = "DKIMKeyGenerated"
    DKIMKeyActivated = "DKIMKeyActivated"
    DKIMKeyRetiring = "DKIMKeyRetiring"
    DKIMKeyRemoved = "DKIMKeyRemoved"
    DKIMKeyLost = "DKIMKeyLost"
    SendingStopped = "SendingStopped"
    SendingResumed = "SendingResumed"
    NoSendingIP = "NoSendingIP"
    AddressNotOnNode = "AddressNotOnNode"
    AddressOnTwoNodes = "AddressOnTwoNodes"
    NodeNotReady = "NodeNotReady"
    AddressesPlaced = "AddressesPlaced"
    PodsStranded = "PodsStranded"
    PodsReturned = "PodsReturned"
    DMARCReport = "DMARCReport"
    DMARCForeignSources = "DMARCForeignSources"


EventType = Literal["Normal", "Warning"]
# What an event may carry: an event reason, or (a SendingDomain's checks) the reason of the
# condition that started failing or passes again.
PostedReason = EventReason | ConditionReason

Kind = Literal["SendingPool", "DeliveryPolicy", "IPWarmup", "SendingDomain"]
Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class ConditionDoc:
    """One row of the guide's condition table: a reason a condition of a kind carries."""

    kind: Kind
    type: ConditionType
    status: Status
    reason: ConditionReason
    meaning: str
    action: str = ""


C, R = ConditionType, ConditionReason
_POOL: Kind = "SendingPool"
_DOMAIN: Kind = "SendingDomain"
_WARMUP: Kind = "IPWarmup"

CONDITIONS: tuple[ConditionDoc, ...] = (
    ConditionDoc(_POOL, C.Ready, "True", R.PodsReady, "every desired pod is ready"),
    ConditionDoc(_POOL, C.Ready, "True", R.ScaledToZero, "`replicas` asks for no pods"),
    ConditionDoc(
        _POOL,
        C.Ready,
        "False",
        R.PodsNotReady,
        "fewer pods ready than desired",
        "wait for a rollout; else `kubectl describe pod`",
    ),
    ConditionDoc(
        _POOL,
        C.Ready,
        "False",
        R.DKIMSecretMissing,
        "a `spec.dkim` Secret is absent",
        "create it ([runbook](#mailfleetdkimsecretmissing))",
    ),
    ConditionDoc(
        _POOL,
        C.Ready,
        "False",
        R.SecretMissing,
        "the AUTH or TLS Secret is absent",
        "create it or fix `spec.submission`",
    ),
    ConditionDoc(
        _POOL,
        C.Ready,
        "False",
        R.RenderFailed,
        "the engine config does not validate",
        "the message names the field; fix the pool or policy",
    ),
    ConditionDoc(
        _POOL, C.ConfigRendered, "True", R.Rendered, "the engine config of this generation"
    ),
    ConditionDoc(
        _POOL,
        C.ConfigRendered,
        "False",
        R.RenderFailed,
        "this generation's engine config does not validate",
        "the message names the field",
    ),
    ConditionDoc(_POOL, C.PoliciesResolved, "True", R.Resolved, "the selected policies merged"),
    ConditionDoc(
        _POOL,
        C.PoliciesResolved,
        "True",
        R.PolicyConflict,
        "two policies define a provider differently",
        "keep one definition per provider",
    ),
    ConditionDoc(
        _POOL,
        C.PoliciesResolved,
        "False",
        R.NoPolicySelected,
        "no policy matches `policySelector`",
        "label a policy, or accept default shaping",
    ),
    ConditionDoc(_POOL, C.SecretsFound, "True", R.Found, "every referenced Secret exists"),
    ConditionDoc(
        _POOL,
        C.SecretsFound,
        "False",
        R.SecretMissing,
        "a referenced Secret does not exist",
        "the message names it",
    ),
    ConditionDoc(_POOL, C.IPsHealthy, "Unknown", R.NotChecked, "no health check yet"),
    ConditionDoc(
        _POOL, C.IPsHealthy, "True", R.Healthy, "every IP under the thresholds, listed nowhere"
    ),
    ConditionDoc(
        _POOL,
        C.IPsHealthy,
        "False",
        R.Quarantined,
        "some IPs are quarantined (the message says why; promoted standbys too)",
        "[runbook](#mailfleetipquarantined)",
    ),
    ConditionDoc(
        _POOL,
        C.IPsHealthy,
        "False",
        R.NoHealthyIP,
        "no address may send",
        "[runbook](#mailfleetnohealthyip)",
    ),
    ConditionDoc(
        _POOL,
        C.FleetLimits,
        "True",
        R.Split,
        "pool-wide limits are split between the pods (no Redis)",
    ),
    ConditionDoc(
        _POOL, C.FleetLimits, "True", R.Shared, "every pod shares pool-wide limits through Redis"
    ),
    ConditionDoc(_POOL, C.FleetLimits, "Unknown", R.NoReport, "no pod has reported its mode yet"),
    ConditionDoc(
        _POOL,
        C.FleetLimits,
        "False",
        R.RedisUnreachable,
        "some pods cannot reach Redis and fall back to their split share",
        "check `spec.fleet.redis` and the Redis service",
    ),
    ConditionDoc(
        _POOL,
        C.EgressPlaced,
        "True",
        R.Placed,
        "`egress: managed`: every address is on one node, sent through its egress proxy",
    ),
    ConditionDoc(
        _POOL,
        C.EgressPlaced,
        "False",
        R.AddressNotOnNode,
        "an address is on no node: nothing sends from it, the others send",
        "list it in its node's `mailfleet.io/sending-addresses` annotation",
    ),
    ConditionDoc(
        _POOL,
        C.EgressPlaced,
        "False",
        R.AddressOnTwoNodes,
        "two nodes' annotations list one address: nothing sends from it",
        "remove it from the node that does not hold it",
    ),
    ConditionDoc(
        _POOL,
        C.EgressPlaced,
        "False",
        R.NodeNotReady,
        "the node holding an address is not Ready: its proxy is gone, nothing sends from it",
        "`kubectl describe node`; the address sends again once the node is back",
    ),
    ConditionDoc(_POOL, C.PodsReachable, "True", R.NodesReady, "every pod's node is Ready"),
    ConditionDoc(
        _POOL,
        C.PodsReachable,
        "False",
        R.NodeNotReady,
        "pods on a node that is not Ready: their queue (`strandedMessages`) waits for the node",
        "bring the node back (its local volumes hold the mail); see "
        "[sending addresses](sending-addresses.md#a-node-that-goes-away)",
    ),
    ConditionDoc(
        "DeliveryPolicy",
        C.Ready,
        "True",
        R.InUse,
        "some pool selects it",
    ),
    ConditionDoc(
        "DeliveryPolicy",
        C.Ready,
        "True",
        R.Unused,
        "no pool selects it",
        "check the labels against the pools' selectors",
    ),
    ConditionDoc(_WARMUP, C.Ready, "True", R.Warming, "the warmup raises its caps day by day"),
    ConditionDoc(
        _WARMUP,
        C.Ready,
        "True",
        R.Holding,
        "today's gates held the day back",
        "a day or more: [runbook](#mailfleetwarmupheld)",
    ),
    ConditionDoc(_WARMUP, C.Ready, "True", R.Complete, "the last day is done; caps lifted"),
    ConditionDoc(_WARMUP, C.Ready, "True", R.Paused, "`spec.paused`: the day does not move"),
    ConditionDoc(
        _WARMUP,
        C.Ready,
        "False",
        R.PoolNotFound,
        "`poolRef` names no pool",
        "fix `poolRef` or create the pool",
    ),
    ConditionDoc(
        _WARMUP,
        C.Ready,
        "False",
        R.AddressesNotInPool,
        "none of the addresses is in the pool",
        "add them to the pool's `spec.ips`",
    ),
    ConditionDoc(
        _DOMAIN, C.Ready, "True", R.Ready, "signing with an active key; the DNS checks pass"
    ),
    ConditionDoc(
        _DOMAIN,
        C.Ready,
        "False",
        R.NoActiveKey,
        "no DKIM key signs yet",
        "publish the pending selector's record",
    ),
    ConditionDoc(
        _DOMAIN,
        C.Ready,
        "False",
        R.PoolNotFound,
        "a `pools` entry names no SendingPool",
        "fix `spec.pools`",
    ),
    ConditionDoc(
        _DOMAIN,
        C.DKIMPublished,
        "Unknown",
        R.DNSError,
        "a DNS lookup failed (also for SPFValid, DMARCAligned, ReverseDNS)",
        "retried; check the resolver",
    ),
    ConditionDoc(_DOMAIN, C.DKIMPublished, "True", R.Published, "every live selector's record"),
    ConditionDoc(
        _DOMAIN,
        C.DKIMPublished,
        "True",
        R.RotationPending,
        "a new selector waits for its record (a rotation)",
        "publish what `status.records` lists",
    ),
    ConditionDoc(
        _DOMAIN,
        C.DKIMPublished,
        "False",
        R.AwaitingPublication,
        "no selector's record is published yet",
        "publish what `status.records` lists",
    ),
    ConditionDoc(
        _DOMAIN,
        C.DKIMPublished,
        "False",
        R.KeyNotPublished,
        "a selector has no DKIM key record",
        "publish what `status.records` lists",
    ),
    ConditionDoc(
        _DOMAIN,
        C.DKIMPublished,
        "False",
        R.KeyMismatch,
        "DNS publishes another key than the Secret's",
        "publish the value in `status.records`",
    ),
    ConditionDoc(_DOMAIN, C.SPFValid, "True", R.Valid, "SPF authorises every sending IP"),
    ConditionDoc(
        _DOMAIN, C.SPFValid, "False", R.NoSPFRecord, "no `v=spf1` TXT record", "publish one"
    ),
    ConditionDoc(
        _DOMAIN,
        C.SPFValid,
        "False",
        R.MultipleSPFRecords,
        "more than one SPF record (receivers fail them all)",
        "merge them",
    ),
    ConditionDoc(
        _DOMAIN, C.SPFValid, "False", R.SPFLoop, "includes nest too deep (a loop?)", "fix them"
    ),
    ConditionDoc(
        _DOMAIN,
        C.SPFValid,
        "False",
        R.SPFSyntaxError,
        "a term the SPF grammar does not know",
        "fix the record",
    ),
    ConditionDoc(
        _DOMAIN,
        C.SPFValid,
        "False",
        R.TooManyLookups,
        "more than 10 DNS lookups (receivers stop there)",
        "flatten includes",
    ),
    ConditionDoc(
        _DOMAIN,
        C.SPFValid,
        "False",
        R.IPNotAuthorized,
        "SPF does not authorise a sending IP",
        "add it (`status.zone` lists the record)",
    ),
    ConditionDoc(_DOMAIN, C.DMARCAligned, "True", R.Aligned, "the DMARC record is as expected"),
    ConditionDoc(
        _DOMAIN,
        C.DMARCAligned,
        "False",
        R.NoDMARCRecord,
        "no `v=DMARC1` record at `_dmarc`",
        "publish one",
    ),
    ConditionDoc(
        _DOMAIN,
        C.DMARCAligned,
        "False",
        R.MultipleDMARCRecords,
        "more than one DMARC record",
        "keep one",
    ),
    ConditionDoc(
        _DOMAIN,
        C.DMARCAligned,
        "False",
        R.PolicyMismatch,
        "`p=` differs from `spec.dmarc.expectedPolicy`",
        "change one of them",
    ),
    ConditionDoc(
        _DOMAIN,
        C.DMARCAligned,
        "False",
        R.ReportAddressMissing,
        "`rua` lacks the report address the operator reads",
        "add it",
    ),
    ConditionDoc(
        _DOMAIN,
        C.ReverseDNS,
        "True",
        R.ForwardConfirmed,
        "every pool IP's PTR name resolves back to it",
    ),
    ConditionDoc(_DOMAIN, C.ReverseDNS, "True", R.NoPoolIPs, "no pool IPs to check"),
    ConditionDoc(
        _DOMAIN,
        C.ReverseDNS,
        "False",
        R.NoPTR,
        "an IP has no PTR record",
        "ask its provider for one naming its hostname",
    ),
    ConditionDoc(
        _DOMAIN,
        C.ReverseDNS,
        "False",
        R.PTRMismatch,
        "an IP's PTR names another host than its HELO name",
        "make the PTR and `hostname` agree",
    ),
    ConditionDoc(
        _DOMAIN,
        C.ReverseDNS,
        "False",
        R.ForwardMismatch,
        "the PTR name does not resolve back to the IP",
        "fix the A/AAAA record",
    ),
)


@dataclass(frozen=True)
class EventDoc:
    type: Literal["Normal", "Warning", "Normal/Warning"]
    on: str  # the kinds it is posted on
    meaning: str


E = EventReason
EVENTS: dict[EventReason, EventDoc] = {
    E.Created: EventDoc("Normal", "pool", "a child (StatefulSet, ConfigMap, ...) was created"),
    E.Updated: EventDoc("Normal", "pool", "a child was changed to match the pool"),
    E.ConfigRendered: EventDoc("Normal", "pool", "a new engine config was rendered"),
    E.ImmutableFieldChanged: EventDoc(
        "Warning", "pool", "a StatefulSet field cannot change in place; the old one stays"
    ),
    E.SecretsFound: EventDoc("Normal", "pool", "Secrets that were missing exist now"),
    E.DKIMSecretMissing: EventDoc("Warning", "pool", "a `spec.dkim` Secret does not exist"),
    E.SecretMissing: EventDoc("Warning", "pool", "a referenced Secret does not exist"),
    E.RenderFailed: EventDoc(
        "Warning", "pool", "the engine config does not render (the message names the field)"
    ),
    E.PolicyConflict: EventDoc(
        "Warning", "pool", "two selected policies define one provider differently"
    ),
    E.ScaledUp: EventDoc("Normal", "pool", "the autoscaler added pods (with its numbers)"),
    E.ScaledDown: EventDoc("Normal", "pool", "the autoscaler removes pods (with its numbers)"),
    E.Draining: EventDoc("Normal", "pool", "a pod a scale-down removes hands its queue over"),
    E.Drained: EventDoc("Normal", "pool", "the leaving pods hold nothing: the pool shrinks"),
    E.DrainCancelled: EventDoc("Normal", "pool", "a draining pod takes mail again"),
    E.EngineQuarantined: EventDoc(
        "Warning", "pool", "an engine quarantined an (IP, provider) on a reply rule"
    ),
    E.IPOwnerChanged: EventDoc(
        "Normal", "pool", "an IP moved between pods with its shaping state and warmup counts"
    ),
    E.IPQuarantined: EventDoc("Warning", "pool", "the health loop took an IP out of rotation"),
    E.IPRecovered: EventDoc("Normal", "pool", "a quarantined IP is back in rotation"),
    E.StandbyPromoted: EventDoc(
        "Normal", "pool", "a standby IP sends in a quarantined one's place"
    ),
    E.StandbyReleased: EventDoc("Normal", "pool", "a promoted standby is not needed any more"),
    E.NoHealthyIP: EventDoc("Warning", "pool", "no address may send"),
    E.WarmupAdvanced: EventDoc("Normal", "warmup", "the next day (and cap) began"),
    E.WarmupHeld: EventDoc("Warning", "warmup", "the gates repeated a day"),
    E.WarmupSteppedBack: EventDoc("Warning", "warmup", "the gates stepped back a day"),
    E.WarmupComplete: EventDoc("Normal", "warmup", "the last day is done"),
    E.DKIMKeyGenerated: EventDoc("Normal", "domain", "a new DKIM key (selector) was generated"),
    E.DKIMKeyActivated: EventDoc("Normal", "domain", "a published selector now signs"),
    E.DKIMKeyRetiring: EventDoc("Normal", "domain", "an old selector stops signing"),
    E.DKIMKeyRemoved: EventDoc("Normal", "domain", "a retired selector was removed"),
    E.DKIMKeyLost: EventDoc(
        "Warning", "domain", "a key was deleted from the Secret; a new one replaces it"
    ),
    E.SendingStopped: EventDoc(
        "Warning", "domain, pool", "an IP failing SPF or reverse DNS stops sending as the domain"
    ),
    E.SendingResumed: EventDoc("Normal", "domain, pool", "the IP passes again and sends"),
    E.NoSendingIP: EventDoc(
        "Warning", "domain", "no IP may send as the domain: its mail waits until DNS is fixed"
    ),
    E.AddressNotOnNode: EventDoc(
        "Warning", "pool", "`egress: managed`: an address is on no node; it does not send"
    ),
    E.AddressOnTwoNodes: EventDoc(
        "Warning", "pool", "`egress: managed`: two nodes claim an address; it does not send"
    ),
    E.NodeNotReady: EventDoc(
        "Warning", "pool", "`egress: managed`: an address's node is not Ready; it does not send"
    ),
    E.PodsStranded: EventDoc(
        "Warning", "pool", "pods are on a node that is not Ready; their queued mail waits there"
    ),
    E.PodsReturned: EventDoc("Normal", "pool", "every pod's node is Ready again"),
    E.AddressesPlaced: EventDoc(
        "Normal", "pool", "every address is on a node again and sends through its proxy"
    ),
    E.DMARCReport: EventDoc("Normal", "domain", "a DMARC aggregate report was counted"),
    E.DMARCForeignSources: EventDoc("Warning", "domain", "other IPs sent as the domain"),
}
