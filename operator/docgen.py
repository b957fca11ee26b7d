"""The operations guide's reference tables, generated from the code: the events and condition
reasons (mailfleet.operator.api.reasons) and the engine's and the operator's metrics (their
registries). `python -m mailfleet.operator.docgen` rewrites each table between its markers in
docs/operations.md:

    <!-- generated:events -->
    ...
    <!-- end generated -->

and `--check` fails when the file differs from what the code says (as crdgen does for crds/).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry

from mailfleet.mta.metrics import EngineMetrics, SupervisorMetrics
from mailfleet.operator.api.reasons import CONDITIONS, EVENTS, ConditionReason
from mailfleet.operator.domainmetrics import DomainMetrics
from mailfleet.operator.metrics import OperatorMetrics

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
END = "<!-- end generated -->"
_BLOCK = re.compile(
    r"(<!-- generated:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)(" + re.escape(END) + ")", re.S
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def events_table() -> str:
    domain_reasons = sorted({c.reason for c in CONDITIONS if c.kind == "SendingDomain"})
    rows = [[f"`{r}`", d.type, d.on, d.meaning] for r, d in EVENTS.items()]
    rows.append(
        [
            "a SendingDomain condition reason ("
            + ", ".join(f"`{r}`" for r in domain_reasons if r != ConditionReason.Ready)
            + ")",
            "Warning/Normal",
            "domain",
            "a DNS check started failing (Warning) / passes again (Normal)",
        ]
    )
    return _table(["reason", "type", "on", "meaning"], rows)


def conditions_table() -> str:
    rows = []
    last = ""
    for c in CONDITIONS:
        kind = c.kind if c.kind != last else ""
        last = c.kind
        rows.append([kind, c.type, c.status, f"`{c.reason}`", c.meaning, c.action])
    return _table(["kind", "condition", "status", "reason", "meaning", "what to do"], rows)


def _families(registry: CollectorRegistry) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(exposed name, type, help, label names) of each metric a registry holds."""
    out = []
    # The collectors' names and label names: a family without samples yet has no labels to
    # read from collect().
    for collector in list(registry._collector_to_names):
        name = str(getattr(collector, "_name", ""))
        kind = str(getattr(collector, "_type", ""))
        if not name:
            continue
        shown = f"{name}_total" if kind == "counter" else name
        out.append(
            (
                shown,
                kind,
                str(getattr(collector, "_documentation", "")),
                tuple(getattr(collector, "_labelnames", ())),
            )
        )
    return sorted(out)


def _metrics_table(*registries: CollectorRegistry) -> str:
    rows = [
        [f"`{name}`", kind, ", ".join(labels), doc]
        for name, kind, doc, labels in sorted(f for r in registries for f in _families(r))
    ]
    return _table(["metric", "type", "labels", "meaning"], rows)


def engine_metrics_table() -> str:
    # A pod's /metrics: its processes' EngineMetrics merged, then the supervisor's own series.
    return _metrics_table(EngineMetrics().registry, SupervisorMetrics(1).registry)


def operator_metrics_table() -> str:
    registry = CollectorRegistry()
    OperatorMetrics(registry)
    DomainMetrics(registry)
    return _metrics_table(registry)


TABLES: dict[str, Callable[[], str]] = {
    "events": events_table,
    "conditions": conditions_table,
    "metrics-engine": engine_metrics_table,
    "metrics-operator": operator_metrics_table,
}


def render(text: str) -> str:
    """`text` with every generated block rewritten; an unknown block name is an error."""
    found: set[str] = set()

    def fill(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise SystemExit(
                f"docgen: unknown block <!-- generated:{name} --> (known: {sorted(TABLES)})"
            )
        found.add(name)
        return m.group(1) + TABLES[name]() + END

    out = _BLOCK.sub(fill, text)
    missing = sorted(set(TABLES) - found)
    if missing:
        raise SystemExit(
            "docgen: no <!-- generated:NAME --> ... " + END + f" block for {', '.join(missing)}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mailfleet.operator.docgen", description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail if the guide drifted from the code")
    ap.add_argument("--guide", type=Path, default=GUIDE)
    args = ap.parse_args(argv)
    text = args.guide.read_text()
    wanted = render(text)
    if args.check:
        if wanted != text:
            print(
                f"{args.guide}: generated tables differ from the code; run `make docs`",
                file=sys.stderr,
            )
            return 1
        return 0
    if wanted != text:
        args.guide.write_text(wanted)
        print(f"wrote {args.guide}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
