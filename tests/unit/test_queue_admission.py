"""Which due messages enter the active set: oldest first, a domain at its limit leaves room for
the others, nothing beyond the room there is, a message never split across pages."""

from __future__ import annotations

from mailfleet.mta.queue import plan_admission
from mailfleet.mta.spool import DueRow


def row(mid: str, rcpt: str, due: float = 1.0, attempts: int = 1) -> DueRow:
    return DueRow(mid, rcpt, rcpt.rpartition("@")[2], attempts, due, 0.5, 5000)


def nobody(_: str) -> float | None:
    return None


def test_oldest_first_and_one_job_per_domain_and_attempt() -> None:
    rows = [
        row("m1", "a@x.test"),
        row("m1", "b@x.test"),
        row("m1", "c@y.test"),
        row("m2", "d@x.test", due=2.0, attempts=0),
    ]
    plan = plan_admission(rows, 100, nobody, {}, 10, 10)
    assert [(p.message_id, p.jobs) for p in plan.admit] == [
        ("m1", {("x.test", 1): ["a@x.test", "b@x.test"], ("y.test", 1): ["c@y.test"]}),
        ("m2", {("x.test", 0): ["d@x.test"]}),
    ]
    assert plan.cursor == (2.0, "m2") and not plan.more and not plan.capped


def test_a_domain_at_its_limit_leaves_room_for_the_others() -> None:
    rows = [row(f"s{i}", f"u{i}@slow.test", due=i) for i in range(5)] + [
        row("f1", "v@fast.test", due=9.0)
    ]
    plan = plan_admission(rows, 100, nobody, {"slow.test": 1}, 3, 100)
    assert [p.message_id for p in plan.admit] == ["s0", "s1", "f1"]
    assert plan.capped == {"slow.test"}
    assert plan.cursor == (9.0, "f1")  # the capped rows are passed: loaded by domain later


def test_no_more_than_the_room_and_the_cursor_stops_before_the_first_left_out() -> None:
    rows = [row(f"m{i}", f"u{i}@x.test", due=i) for i in range(5)]
    plan = plan_admission(rows, 100, nobody, {}, 100, 2)
    assert [p.message_id for p in plan.admit] == ["m0", "m1"]
    assert plan.cursor == (1.0, "m1") and plan.more


def test_messages_already_active_are_skipped_and_a_sweep_asked_only_for_later_deferrals() -> None:
    rows = [row("a", "u@x.test", due=1.0), row("b", "v@x.test", due=5.0), row("c", "w@x.test")]
    admitted = {"a": 3.0, "b": 3.0}
    plan = plan_admission(rows[:1], 100, admitted.get, {}, 100, 100)
    assert plan.admit == [] and not plan.sweep  # the row its job is working on
    plan = plan_admission(rows[1:2], 100, admitted.get, {}, 100, 100)
    assert plan.admit == [] and plan.sweep  # deferred after it entered: wait for it to leave
    assert plan.cursor == (5.0, "b")


def test_a_full_page_leaves_its_last_message_for_the_next_page() -> None:
    rows = [row("m1", "a@x.test"), row("m2", "b@x.test"), row("m2", "c@x.test")]
    plan = plan_admission(rows, 3, nobody, {}, 100, 100)
    assert [p.message_id for p in plan.admit] == ["m1"]
    assert plan.cursor == (1.0, "m1") and plan.more
    whole = plan_admission(rows[1:], 2, nobody, {}, 100, 100)  # only one message: kept whole
    assert [p.jobs for p in whole.admit] == [{("x.test", 1): ["b@x.test", "c@x.test"]}]


def test_one_message_due_at_two_times_in_a_page_is_admitted_once() -> None:
    rows = [row("m1", "a@x.test", due=1.0), row("m2", "b@y.test", 2.0), row("m1", "c@x.test", 3.0)]
    plan = plan_admission(rows, 100, nobody, {}, 100, 2)
    assert [(p.message_id, p.jobs) for p in plan.admit] == [
        ("m1", {("x.test", 1): ["a@x.test", "c@x.test"]}),
        ("m2", {("y.test", 1): ["b@y.test"]}),
    ]
    assert plan.cursor == (3.0, "m1") and not plan.more


def test_a_domain_with_rows_left_behind_is_loaded_by_domain_only() -> None:
    """Once rows of a domain were left behind, the global pass takes no newer ones of it: they
    would overtake the older ones, which the domain's own pass loads first."""
    rows = [row("s1", "u@slow.test", due=1.0), row("f1", "v@fast.test", due=2.0)]
    plan = plan_admission(rows, 100, nobody, {}, 100, 100, waiting={"slow.test"})
    assert [p.message_id for p in plan.admit] == ["f1"]
    assert plan.capped == {"slow.test"}
