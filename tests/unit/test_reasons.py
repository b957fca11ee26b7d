"""Condition and event reasons are enums (mailfleet.operator.api.reasons): every reason the operator
posts from a literal is one of them, every member is documented, and every reason the Argo CD
health scripts and the chart's alerts match on exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mailfleet.operator.api.reasons import (
    CONDITIONS,
    EVENTS,
    ConditionReason,
    ConditionType,
    EventReason,
)

ROOT = Path(__file__).resolve().parents[2]
# Call -> (index of the condition type or None, index of the reason) among its arguments.
CALLS = {
    "Cond": (0, 2),
    "Event": (None, 1),
    "EventSpec": (None, 1),
    "Notice": (None, 1),
    "_SPFError": (None, 0),
    "post_event": (None, 2),
    "post": (None, 2),
    "event": (None, 1),  # ipmoves' callback
}


def _literals_in(text: str, where: str) -> list[tuple[str, str, str, int]]:
    """(kind, value, where, line) of each string literal in a type or reason position."""
    out = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if name not in CALLS or (name == "event" and not isinstance(node.func, ast.Name)):
            continue  # kopf.on.event("v1", "secrets") is no event
        for kind, i in zip(("type", "reason"), CALLS[name], strict=True):
            if i is None or i >= len(node.args):
                continue
            arg = node.args[i]
            for v in [arg.body, arg.orelse] if isinstance(arg, ast.IfExp) else [arg]:
                if isinstance(v, ast.Constant) and isinstance(v.value, str):
                    out.append((kind, v.value, where, v.lineno))
    return out


def _literals() -> list[tuple[str, str, str, int]]:
    out = []
    # Every module in every subpackage: a new module cannot hide a literal.
    for path in sorted((ROOT / "operator").rglob("*.py")):
        out += _literals_in(path.read_text(), str(path.relative_to(ROOT)))
    return out


def test_the_operator_posts_no_reason_from_a_string_literal() -> None:
    # A literal would be a reason the docs and the enums do not know: name the member instead.
    assert _literals() == []


def test_the_scan_sees_a_literal() -> None:
    text = 'Cond(ConditionType.Ready, "True", "PodsReady", "m")\nEvent("Normal", "Drained", "m")'
    assert [(k, v) for k, v, _, _ in _literals_in(text, "x.py")] == [
        ("reason", "PodsReady"),
        ("reason", "Drained"),
    ]


def test_domain_problem_reasons_are_members() -> None:
    # Reasons built as `problems.append((reason, message))` (DKIM, reverse DNS problems).
    found = []
    for node in ast.walk(ast.parse((ROOT / "operator" / "decide" / "domainplan.py").read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "append"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "problems"
            and node.args
            and isinstance(node.args[0], ast.Tuple)
        ):
            found.append(ast.unparse(node.args[0].elts[0]))
    assert found, "the scan found the problem tuples"
    members = {f"ConditionReason.{r.name}" for r in ConditionReason}
    assert [f for f in found if f not in members] == []


def test_every_member_is_documented() -> None:
    assert set(EVENTS) == set(EventReason)
    assert {c.reason for c in CONDITIONS} == set(ConditionReason)
    assert {c.type for c in CONDITIONS} == set(ConditionType)
    assert all(d.meaning for d in EVENTS.values()) and all(c.meaning for c in CONDITIONS)


def test_the_reasons_argo_cd_and_the_alerts_name_exist() -> None:
    named: set[str] = set()
    for lua in (ROOT / "deploy" / "argocd" / "health").glob("*.lua"):
        text = lua.read_text()
        named |= set(re.findall(r'reason\s*==\s*"([A-Za-z]+)"', text))
        for table in re.findall(r"local (?:broken|waiting)\s*=\s*\{([^}]*)\}", text):
            named |= set(re.findall(r"([A-Za-z]+)\s*=\s*true", table))
    for tpl in (ROOT / "charts" / "mailfleet" / "templates").iterdir():
        named |= set(re.findall(r'reason="([A-Za-z]+)"', tpl.read_text()))
    assert {"NoHealthyIP", "RotationPending", "DKIMSecretMissing"} <= named
    assert named - {str(r) for r in ConditionReason} == set()


def test_the_enums_are_their_wire_strings() -> None:
    # What Kubernetes stores and kubectl shows: the plain name.
    assert f"{ConditionReason.NoHealthyIP}" == "NoHealthyIP"
    assert EventReason.Drained == "Drained" and str(ConditionType.IPsHealthy) == "IPsHealthy"
