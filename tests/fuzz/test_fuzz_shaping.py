"""The rate controller and the shaper under arbitrary reply sequences: whatever a provider
answers, in whatever order, the pair's rate stays within [floor, policy maximum], a counted
signal never raises it, a clean interval never lowers it, and a reply to a message sent before
the last decrease changes nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailfleet.mta.aimd import Control, on_clean_interval, on_signal
from mailfleet.mta.config import AdaptiveConfig, parse_config
from mailfleet.mta.shaping import Grant, Shaper

configs = st.builds(
    AdaptiveConfig,
    decrease=st.floats(0.05, 0.95),
    increase=st.floats(0.01, 50),
    floor=st.floats(0.01, 5),
)


@given(configs, st.floats(0.01, 10_000), st.lists(st.booleans(), max_size=300))
def test_controller_stays_within_floor_and_maximum(
    a: AdaptiveConfig, start: float, signals: list[bool]
) -> None:
    limit = max(start, a.floor)
    c = Control(limit)
    for signal in signals:
        before = c.rate
        c = on_signal(c, a) if signal else on_clean_interval(c, a, limit)
        assert a.floor <= c.rate <= limit
        if signal:
            assert c.rate <= before
        else:
            assert c.rate >= before


REPLIES = [
    "421 4.7.28 [192.0.2.1] unusual rate of unsolicited mail",
    "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited (S775)",
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume",
    "250 2.0.0 OK",
    "450 4.2.1 The user you are trying to contact is receiving mail at a rate",
]


@given(
    st.lists(st.tuples(st.floats(0, 5), st.sampled_from(REPLIES), st.floats(0, 3)), max_size=200)
)
def test_shaper_rate_under_arbitrary_replies(events: list[tuple[float, str, float]]) -> None:
    cfg = parse_config(
        {
            "delivery": {"sourceIPs": [{"address": "192.0.2.1"}]},
            "shaping": {
                "providers": [
                    {
                        "name": "gmail",
                        "perIP": {"maxMessageRate": "50/s", "maxConnections": 1000},
                        "adaptive": {"recoveryInterval": "1s", "floor": "1/s", "increase": "1/s"},
                    }
                ]
            },
        }
    )
    s = Shaper(cfg)
    now = 1_800_000_000.0
    granted: list[Grant] = []
    for step, reply, lag in events:
        now += step
        g = s.acquire("gmail", now, 0.5)
        if isinstance(g, Grant):
            granted.append(g)
            s.release(g)
        if not granted:
            continue
        # A reply to one of the messages sent so far, possibly an old one.
        g = granted[int(lag * len(granted) / 3.0001)]
        p = s.pair("192.0.2.1", "gmail", now)
        before, last = p.rate, p.last_decrease
        s.observe(g.ip, "gmail", reply, now, g.at)
        assert p.rate is not None and 1.0 <= p.rate <= 50.0
        assert before is not None and p.rate <= before
        if g.at is not None and g.at < last:
            assert p.rate == before  # the same congestion: no second decrease
