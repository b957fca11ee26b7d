"""retry.decide_outcome: what one recipient's reply means, over its whole input space.

The dimensions: the reply code's class (2xx, 4xx, 5xx, anything else) x the reply rule that
fired (none, or each of the five actions) x whether a retry time is left (or the message
expires first) x the enhanced status (none, a failure's, a success's). The first two make the
table below; the expiry and status dimensions are crossed with every row of it.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailfleet.mta.config import ReplyAction
from mailfleet.mta.retry import ReplyOutcome, decide_outcome

RETRY_AT = 1_700_000_600.0
ATTEMPTS = 3

# One code of each class; "other" is what a broken peer or a local error reports.
CODES = {"2xx": 250, "4xx": 451, "5xx": 550, "1xx": 199, "6xx": 600, "zero": 0}

# (code class, rule action) -> (outcome while a retry time is left, back in the active set at
# once). A 2xx is delivered whatever a rule says; "bounce" gives up on any failure; the other
# actions blame the IP or the pace and defer; the shaping ones (not "retry") at once.
TABLE: dict[tuple[str, ReplyAction | None], tuple[str, bool]] = {
    ("2xx", None): ("delivered", False),
    ("2xx", "retry"): ("delivered", False),
    ("2xx", "throttle"): ("delivered", False),
    ("2xx", "suspend"): ("delivered", False),
    ("2xx", "quarantine"): ("delivered", False),
    ("2xx", "bounce"): ("delivered", False),
    ("4xx", None): ("deferred", False),
    ("4xx", "retry"): ("deferred", False),
    ("4xx", "throttle"): ("deferred", True),
    ("4xx", "suspend"): ("deferred", True),
    ("4xx", "quarantine"): ("deferred", True),
    ("4xx", "bounce"): ("bounced", False),
    ("5xx", None): ("bounced", False),
    ("5xx", "retry"): ("deferred", False),
    ("5xx", "throttle"): ("deferred", True),
    ("5xx", "suspend"): ("deferred", True),
    ("5xx", "quarantine"): ("deferred", True),
    ("5xx", "bounce"): ("bounced", False),
}
for other in ("1xx", "6xx", "zero"):
    # Nonsense is never proof that the recipient does not exist: retried like a 4xx.
    for (cls, action), row in list(TABLE.items()):
        if cls == "4xx":
            TABLE[(other, action)] = row

ACTIONS: list[ReplyAction | None] = [None, "retry", "throttle", "suspend", "quarantine", "bounce"]
ENHANCED = {"none": None, "failure": "5.7.1", "transient": "4.2.2", "success": "2.0.0"}


def test_the_table_covers_every_code_class_and_action() -> None:
    assert set(TABLE) == set(itertools.product(CODES, ACTIONS))


@pytest.mark.parametrize(
    ("cls", "action", "expires", "enh"),
    list(itertools.product(CODES, ACTIONS, [False, True], ENHANCED)),
)
def test_outcome_over_the_whole_input_space(
    cls: str, action: ReplyAction | None, expires: bool, enh: str
) -> None:
    code, enhanced = CODES[cls], ENHANCED[enh]
    reply = f"{code} {enhanced or ''} the peer's words".replace("  ", " ")
    got = decide_outcome(code, enhanced, reply, action, None if expires else RETRY_AT, ATTEMPTS)
    outcome, at_once = TABLE[(cls, action)]
    own_status = enhanced or f"{code // 100}.0.0"
    if outcome == "deferred" and expires:
        # No retry time left: given up on now, as expired, with the last reply in the reason.
        assert got == ReplyOutcome(
            "bounced",
            "4.4.7",
            None,
            f"message expired after {ATTEMPTS} attempts; last reply: {reply}",
        )
    elif outcome == "deferred":
        assert got == ReplyOutcome("deferred", own_status, RETRY_AT, reply, at_once)
    elif outcome == "bounced":
        # A DSN reports a failure's status; a success's or a nonsense one becomes 5.0.0.
        dsn_status = own_status if own_status[0] in "45" else "5.0.0"
        assert got == ReplyOutcome("bounced", dsn_status, None, reply)
    else:
        assert got == ReplyOutcome("delivered", own_status, None, reply)


@pytest.mark.parametrize(
    ("code", "enhanced", "action", "retry_at", "expected"),
    [
        # A mailbox that does not exist: bounced with the peer's status and words.
        (550, "5.1.1", None, RETRY_AT, ("bounced", "5.1.1", None)),
        # Greylisting: retried at the job's retry time.
        (451, "4.7.1", None, RETRY_AT, ("deferred", "4.7.1", RETRY_AT)),
        # A provider's "too fast" under a throttle rule: deferred, back at once.
        (421, "4.7.28", "throttle", RETRY_AT, ("deferred", "4.7.28", RETRY_AT)),
        # A 5xx that a "retry" rule says is about the IP (a blocklist): deferred, not bounced.
        (554, "5.7.1", "retry", RETRY_AT, ("deferred", "5.7.1", RETRY_AT)),
        # A 5xx without an enhanced code: its class.
        (554, None, None, RETRY_AT, ("bounced", "5.0.0", None)),
        # Three days of 4xx: expired.
        (451, "4.7.1", None, None, ("bounced", "4.4.7", None)),
        # Delivered is delivered even when the message would have expired.
        (250, "2.0.0", None, None, ("delivered", "2.0.0", None)),
    ],
)
def test_replies_a_user_sees(
    code: int,
    enhanced: str | None,
    action: ReplyAction | None,
    retry_at: float | None,
    expected: tuple[str, str, float | None],
) -> None:
    got = decide_outcome(code, enhanced, f"{code} words", action, retry_at, 1)
    assert (got.outcome, got.status, got.retry_at) == expected


@given(
    code=st.integers(min_value=-1000, max_value=100_000),
    enhanced=st.none() | st.text(max_size=12),
    reply=st.text(max_size=50),
    action=st.sampled_from(ACTIONS),
    retry_at=st.none() | st.floats(min_value=0, max_value=1e10),
    attempts=st.integers(min_value=1, max_value=10_000),
)
def test_invariants_for_any_reply(
    code: int,
    enhanced: str | None,
    reply: str,
    action: ReplyAction | None,
    retry_at: float | None,
    attempts: int,
) -> None:
    got = decide_outcome(code, enhanced, reply, action, retry_at, attempts)
    # Delivered exactly when the peer said 2xx: never sent twice, never dropped as delivered.
    assert (got.outcome == "delivered") == (200 <= code < 300)
    if got.outcome == "deferred":
        # Only ever deferred to a real retry time (nothing held forever).
        assert retry_at is not None and got.retry_at == retry_at
    else:
        assert got.retry_at is None
        assert not got.at_once
    if got.outcome == "bounced":
        # A DSN always reports a failure's status.
        assert got.status[:1] in ("4", "5")
    if got.at_once:
        assert action in ("throttle", "suspend", "quarantine")
    # The peer's words are kept, for the DSN or the next attempt's record.
    assert reply in got.reason
