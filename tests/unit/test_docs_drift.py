"""docs/operations.md's tables of events, condition reasons and metrics are generated from the
code (`make docs`); this fails when they drift, as tests/unit/test_crds.py does for crds/."""

from __future__ import annotations

from pathlib import Path

from mailfleet.operator import docgen
from mailfleet.operator.api.reasons import CONDITIONS, EVENTS

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_the_operations_guide_matches_the_code() -> None:
    assert docgen.main(["--check", "--guide", str(GUIDE)]) == 0, (
        "docs/operations.md's generated tables differ from the code: run `make docs`"
    )


def test_every_reason_and_metric_is_in_the_guide() -> None:
    text = GUIDE.read_text()
    for reason in EVENTS:
        assert f"`{reason}`" in text, reason
    for c in CONDITIONS:
        assert f"`{c.reason}`" in text, c.reason
    # The supervisor's own series too, not only the engine processes' registry.
    for name in (
        "mailfleet_outbound_connections",
        "mailfleet_pool_condition",
        "mailfleet_process_restarts_total",
    ):
        assert f"`{name}`" in text
    assert "`mailfleet_handoff_messages_total`" in text  # counters under their exposed name


def test_check_fails_on_a_hand_edit(tmp_path: Path) -> None:
    copy = tmp_path / "operations.md"
    copy.write_text(GUIDE.read_text().replace("| `Drained` |", "| `Drained2` |"))
    assert docgen.main(["--check", "--guide", str(copy)]) == 1
    assert docgen.main(["--guide", str(copy)]) == 0
    assert copy.read_text() == GUIDE.read_text()
