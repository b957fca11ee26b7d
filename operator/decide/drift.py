"""Comparing what the operator wants with what exists: hashes stamped on children, semantic
containment (server defaults ignored), and what to do about one child (skip, apply, check).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from mailfleet.operator.api.naming import HASH_ANNOTATION, MANAGER


def object_hash(obj: Mapping[str, Any]) -> str:
    """A digest of an object as rendered, independent of dict order and of its own hash."""
    clean = copy.deepcopy(dict(obj))
    meta = clean.get("metadata", {})
    annotations = meta.get("annotations", {})
    annotations.pop(HASH_ANNOTATION, None)
    if not annotations:
        meta.pop("annotations", None)
    text = json.dumps(clean, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """The object with its hash in the mailfleet.io/config-hash annotation."""
    digest = object_hash(obj)
    obj.setdefault("metadata", {}).setdefault("annotations", {})[HASH_ANNOTATION] = digest
    return obj


# StatefulSet fields the API server refuses to change: a new value is kept out of the update
# (and reported) instead of failing every reconcile.
IMMUTABLE_STATEFULSET_FIELDS = ("volumeClaimTemplates", "selector", "serviceName")


def keep_immutable(
    desired: dict[str, Any], existing: Mapping[str, Any] | None
) -> tuple[dict[str, Any], list[str]]:
    """The StatefulSet to apply given the live one: immutable fields that differ come from the
    live object. Returns it and the names of the fields whose change cannot be applied."""
    if existing is None or desired.get("kind") != "StatefulSet":
        return desired, []
    out = copy.deepcopy(desired)
    live_spec = existing.get("spec", {})
    ignored = []
    for key in IMMUTABLE_STATEFULSET_FIELDS:
        if key in live_spec and not semantically_contains(live_spec[key], out["spec"].get(key)):
            out["spec"][key] = _strip_volume_claim_status(key, live_spec[key])
            ignored.append(f"spec.{key}")
    return out, ignored


def _strip_volume_claim_status(key: str, value: Any) -> Any:
    if key != "volumeClaimTemplates":
        return copy.deepcopy(value)
    claims = copy.deepcopy(value)
    for claim in claims:
        claim.pop("status", None)
        claim.pop("apiVersion", None)
        claim.pop("kind", None)
    return claims


_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([a-zA-Z]*)$")


_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
}


def _quantity(value: object) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if not isinstance(value, str):
        return None
    m = _QUANTITY.match(value)
    if not m or m.group(2) not in _SUFFIX:
        return None
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2)]
    except InvalidOperation:
        return None


def semantically_contains(live: Any, desired: Any) -> bool:
    """Whether the live value holds everything desired sets (fields the server defaulted are
    ignored; lists must match item by item; "0.5" and "500m" are one quantity)."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(k in live and semantically_contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(semantically_contains(a, b) for a, b in zip(live, desired, strict=True))
    if live == desired:
        return True
    if isinstance(desired, str) and isinstance(live, str | int):
        a, b = _quantity(live), _quantity(desired)
        return a is not None and a == b
    return False


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Whether a child must be written: missing, stamped with another hash, or drifted."""
    if live is None:
        return True
    live_meta = live.get("metadata", {})
    want_hash = desired["metadata"]["annotations"][HASH_ANNOTATION]
    if (live_meta.get("annotations") or {}).get(HASH_ANNOTATION) != want_hash:
        return True
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata")}
    meta = {k: desired["metadata"][k] for k in ("labels", "ownerReferences")}
    if desired.get("kind") == "StatefulSet":
        body = {"spec": {k: v for k, v in body["spec"].items() if k != "volumeClaimTemplates"}}
    return not (semantically_contains(live, body) and semantically_contains(live_meta, meta))


@dataclass(frozen=True)
class LiveChild:
    """What the operator keeps of a child it watches: enough to know whether it is the one it
    applied, not the object itself."""

    kind: str
    name: str
    hash: str | None  # the mailfleet.io/config-hash annotation
    # metadata.generation where a controller writes the status (StatefulSet, PDB), else the
    # resourceVersion: it moves only when someone writes the object itself.
    marker: int | None
    # Someone other than the operator (or a controller writing status) manages fields of it:
    # kubectl edit/scale/label, another controller. Only then can the content have drifted
    # away from what its hash says.
    foreign: bool


# The version of a child the operator applied or checked itself: its hash and marker.
Known = tuple[str, int | None]


ChildAction = Literal["skip", "apply", "check"]


STATUS_WRITERS = ("StatefulSet", "PodDisruptionBudget")


def child_marker(kind: str, meta: Mapping[str, Any]) -> int | None:
    raw = meta.get("generation") if kind in STATUS_WRITERS else meta.get("resourceVersion")
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def live_child(kind: str, meta: Mapping[str, Any]) -> LiveChild:
    """A watched child reduced to a LiveChild."""
    foreign = any(
        entry.get("manager") != MANAGER and entry.get("subresource") != "status"
        for entry in meta.get("managedFields") or []
    )
    return LiveChild(
        kind=kind,
        name=str(meta.get("name", "")),
        hash=(meta.get("annotations") or {}).get(HASH_ANNOTATION),
        marker=child_marker(kind, meta),
        foreign=foreign,
    )


def child_action(desired_hash: str, live: LiveChild | None, known: Known | None) -> ChildAction:
    """What to do about one child: nothing, apply it, or read it and compare (check).

    `live` is what the watch last showed (it may lag behind the operator's own writes);
    `known` is the hash and marker of the version the operator last applied or checked, None
    after a restart or once the child was deleted. A child that carries the desired hash and
    that no one else edited is left alone without a request.
    """
    if known is not None and known[0] == desired_hash:
        if live is None or live.marker is None or known[1] is None or live.marker <= known[1]:
            # The watch shows that version or has not caught up with it yet.
            return "skip"
        if live.hash != desired_hash:
            return "apply"
        return "check" if live.foreign else "skip"
    if live is None or live.hash != desired_hash:
        return "apply"
    return "check" if live.foreign else "skip"


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change any field of the live status it sets."""
    return not semantically_contains(old or {}, dict(new)) or _has_extra_conditions(old, new)


def _has_extra_conditions(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    if "conditions" not in new:
        return False
    return len((old or {}).get("conditions") or []) != len(new["conditions"])
