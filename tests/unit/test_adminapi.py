"""The admin API's typed contract (mailfleet.mta.adminapi): what a real engine serves validates
against the models without losing or changing a field, under today's camelCase names; the
operator's client reads it back typed; an older or newer engine's answer (fields missing,
fields unknown) still reads; the supervisor's merge of its processes' answers stays typed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from fixtures.engine import EngineProc, message

from mailfleet.mta.adminapi import (
    DrainState,
    EngineStatus,
    QueueActionResult,
    ReloadResult,
    ShapingAdoption,
)
from mailfleet.mta.supervisor import _merge
from mailfleet.operator.clients.engine_admin import EngineAdmin
from mailfleet.operator.decide import fleetsplit, pods

# /v1/status's fields as the engine served them before the models: the wire must not change.
STATUS_KEYS = [
    "version",
    "hostname",
    "ready",
    "reason",
    "draining",
    "configGeneration",
    "configHash",
    "uptimeSeconds",
    "submission",
    "queue",
    "shaping",
    "warmup",
    "sourceIPs",
    "fleetLimits",
    "connections",
]
QUEUE_KEYS = [
    "messages",
    "recipients",
    "activeMessages",
    "activeLimit",
    "activeLimitPerDomain",
    "oldestAgeSeconds",
    "jobsReady",
    "jobsInFlight",
    "jobsDeferred",
    "jobsWaitingForConnection",
    "jobsHeldBySenderRestriction",
    "senderRestrictions",
    "nextRetry",
    "domains",
    "byDomain",
    "byProvider",
    "spool",
]
SHAPING_ROW_KEYS = [
    "ip",
    "provider",
    "rate",
    "maxRate",
    "peak",
    "ceiling",
    "lastEvent",
    "suspendedUntil",
    "quarantinedUntil",
    "reason",
    "inflight",
    "warmupLeft",
]


def _engine(mta_engine: Callable[..., EngineProc]) -> EngineProc:
    # Nothing listens on the route: mail stays queued (shaping rows, a byDomain entry, a
    # retry time); a warmup cap gives a warmup row.
    return mta_engine(
        {
            "routing": {"routes": {"*": "127.0.0.1:9"}},
            "retry": {"initial": "1h", "max": "1h", "maxAge": "2h", "jitter": 0},
            "delivery": {"sourceIPs": [{"address": "127.0.0.1"}]},
            "shaping": {
                "warmup": [{"address": "127.0.0.1", "provider": "*", "day": 0, "dailyCap": 500}]
            },
        }
    )


def _raw_get(eng: EngineProc, path: str) -> dict[str, Any]:
    body = eng.get(path)
    assert isinstance(body, dict)
    return body


def test_the_status_an_engine_serves_round_trips_through_the_model(
    mta_engine: Callable[..., EngineProc],
) -> None:
    eng = _engine(mta_engine)
    eng.send("app@example.test", ["a@example.org", "b@example.org"], message("typed"))
    eng.wait_until(
        lambda: bool(eng.status()["shaping"]) and eng.status()["queue"]["nextRetry"] is not None,
        what="a deferred message",
    )
    raw = _raw_get(eng, "/v1/status")
    assert list(raw) == STATUS_KEYS
    assert list(raw["queue"]) == QUEUE_KEYS
    assert list(raw["shaping"][0]) == SHAPING_ROW_KEYS
    typed = EngineStatus.model_validate(raw)
    # Every field typed, none lost or changed (3 stays 3, not 3.0; None stays None).
    assert json.dumps(typed.wire(), sort_keys=True) == json.dumps(raw, sort_keys=True)
    assert typed.queued == 1
    assert typed.queue is not None and typed.queue.by_domain["example.org"].queued == 2
    assert typed.config_hash == raw["configHash"]


def test_the_operator_reads_an_engine_typed(mta_engine: Callable[..., EngineProc]) -> None:
    eng = _engine(mta_engine)
    eng.send("app@example.test", ["a@example.org"], message("operator"))
    eng.wait_until(lambda: eng.status()["queue"]["messages"] == 1, what="queued")
    raw = _raw_get(eng, "/v1/status")

    async def read() -> tuple[EngineStatus | None, DrainState | None, tuple[bool, str]]:
        admin = EngineAdmin(port=eng.admin_port)
        try:
            status = await admin.status("127.0.0.1")
            token = eng.token() or ""
            reload = await admin.reload("127.0.0.1", token, eng.config_path.read_text())
            drained = await admin.drain("127.0.0.1", token, [])
            return status, drained, reload
        finally:
            await admin.close()

    status, drained, (reloaded, _) = asyncio.run(read())
    assert status is not None and status.config_hash == raw["configHash"]
    assert reloaded
    assert drained is not None and drained.draining and drained.queue is not None
    assert drained.queue.messages == 1
    report = pods.PodReport(pods.PodRef("pool-0", "127.0.0.1", True), status)
    fields = pods.pods_status([report], raw["configHash"])
    assert fields["pods"][0]["configHash"] == raw["configHash"]
    assert fields["queueDepth"] == 1 and fields["updatedPods"] == 1
    assert not pods.needs_push(report, raw["configHash"])
    assert fleetsplit.senders({"pool-0": status}) == {"127.0.0.1": frozenset({"pool-0"})}
    assert pods.warmup_rows([report]) == raw["warmup"]


def test_the_other_answers_round_trip(mta_engine: Callable[..., EngineProc]) -> None:
    eng = _engine(mta_engine)
    retried = eng.post("/v1/queue/retry", {"domain": "example.org"})
    assert QueueActionResult.model_validate(retried).wire() == retried
    assert list(retried) == ["action", "domain", "recipients"]
    reloaded = eng.post("/v1/reload", {})
    assert ReloadResult.model_validate(reloaded).wire() == reloaded
    assert list(reloaded) == ["reloaded", "message", "configHash"]
    drained = eng.post("/v1/drain", {"handoff": []})
    assert list(drained) == ["draining", "queue", "empty", "handoff"]
    assert DrainState.model_validate(drained).wire() == drained
    undrained = eng.post("/v1/undrain")
    assert DrainState.model_validate(undrained).wire() == undrained


def test_an_older_or_newer_engines_status_reads() -> None:
    # An older engine: no sourceIPs, fleetLimits, warmup; a newer one: fields this operator
    # does not know, at the top and inside rows.
    old = {"ready": True, "draining": False, "configHash": "abc", "queue": {"messages": 4}}
    new = {
        **old,
        "someNewField": {"x": 1},
        "shaping": [{"ip": "192.0.2.1", "provider": "gmail", "quarantinedUntil": 9e9, "n": 1}],
    }
    for body in (old, new):
        status = EngineStatus.model_validate(body)
        assert status.config_hash == "abc" and status.queued == 4
        assert status.source_ips == [] and status.fleet_limits is None
    assert EngineStatus.model_validate(new).shaping[0].quarantined_until == 9e9
    # Unknown until the engine says: no made-up queue depth.
    assert EngineStatus.model_validate({"ready": True}).queued is None
    assert "someNewField" not in EngineStatus.model_validate(new).wire()


def test_readers_not_yet_typed_see_the_wire_names() -> None:
    status = EngineStatus.model_validate(
        {"fleetLimits": {"mode": "shared", "redis": True}, "shaping": [{"ip": "192.0.2.1"}]}
    )
    assert status.get("fleetLimits") == {"mode": "shared", "redis": True}
    assert status.get("shaping") == [{"ip": "192.0.2.1"}]
    assert status.get("sourceIPs") is None and status.get("nope", 1) == 1


def test_a_report_built_from_a_dict_is_typed() -> None:
    report = pods.PodReport(pods.PodRef("p-0", None, True), {"queue": {"messages": 2}})
    assert isinstance(report.status, EngineStatus) and pods.queued(report.status) == 2


def test_the_supervisor_merges_typed_answers() -> None:
    a = EngineStatus.model_validate(
        {
            "ready": True,
            "configHash": "h1",
            "configGeneration": 3,
            "queue": {"messages": 2, "oldestAgeSeconds": 5.5},
            "shaping": [{"ip": "192.0.2.1", "provider": "gmail", "suspendedUntil": 100.0}],
        }
    )
    b = EngineStatus.model_validate(
        {
            "ready": False,
            "configHash": "h2",
            "configGeneration": 2,
            "queue": {"messages": 3, "oldestAgeSeconds": 1.5},
            "shaping": [{"ip": "192.0.2.1", "provider": "gmail", "suspendedUntil": 200.0}],
        }
    )
    merged = _merge(EngineStatus, [a, b])
    assert isinstance(merged, EngineStatus)
    assert merged.queued == 5 and not merged.ready and merged.config_generation == 2
    # Processes that disagree on the config match no hash the operator wants.
    assert merged.config_hash == "h1,h2"
    (row,) = merged.shaping
    assert row.suspended_until == 200.0
    # Merging what nobody answered says nothing, as before.
    assert _merge(EngineStatus, [EngineStatus(), EngineStatus()]).wire() == {}


def test_two_processes_answer_as_one_typed_status(mta_engine: Callable[..., EngineProc]) -> None:
    eng = mta_engine({"routing": {"routes": {"*": "127.0.0.1:9"}}}, start=False)
    eng.args = ["--processes", "2"]
    eng.start()
    raw = _raw_get(eng, "/v1/status")
    assert list(raw) == [*STATUS_KEYS, "processes", "workers"]
    typed = EngineStatus.model_validate(raw)
    assert json.dumps(typed.wire(), sort_keys=True) == json.dumps(raw, sort_keys=True)
    assert typed.processes == 2 and typed.workers is not None
    assert [w.process for w in typed.workers] == [0, 1] and all(w.ready for w in typed.workers)
    drained = eng.post("/v1/drain")
    assert DrainState.model_validate(drained).wire() == drained and drained["draining"] is True


@pytest.mark.parametrize(
    "body",
    [
        {"shaping": [{"ip": "192.0.2.1", "provider": "gmail", "rate": 1.5}], "warmup": []},
        {"warmup": [{"ip": "192.0.2.1", "provider": "*", "sent": 3}]},
    ],
)
def test_the_operator_sends_an_adoption_the_engine_takes(body: dict[str, Any]) -> None:
    # The body model is the engine's: what the operator builds passes the engine's check.
    sent = ShapingAdoption.model_validate(body).model_dump(
        mode="json", by_alias=True, exclude_unset=True
    )
    assert ShapingAdoption.model_validate_json(json.dumps(sent)) == ShapingAdoption.model_validate(
        body
    )
