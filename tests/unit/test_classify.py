"""The reply classifier on a corpus of real provider replies (tests/data/provider-replies.tsv)."""

import csv
import re
from pathlib import Path

import pytest

from mailfleet.mta.classify import REPLY_CLASSES, classify, enhanced_status, text_rule
from mailfleet.mta.config import parse_config
from mailfleet.mta.delivery import make_reply, parse_reply
from mailfleet.mta.shaping import Shaper

CORPUS = Path(__file__).parent.parent / "data" / "provider-replies.tsv"


def _rows() -> list[dict[str, str]]:
    lines = [ln for ln in CORPUS.read_text().splitlines() if ln and not ln.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))


def _corpus() -> list[tuple[str, str, str]]:
    return [(r["provider"], r["reply"], r["class"]) for r in _rows()]


def _split(reply: str) -> tuple[int, str]:
    m = re.match(r"(\d{3})[ -]?(.*)", reply)
    assert m, reply
    return int(m.group(1)), m.group(2)


@pytest.mark.parametrize(("provider", "reply", "expected"), _corpus())
def test_corpus(provider: str, reply: str, expected: str) -> None:
    code, text = _split(reply)
    assert classify(code, text) == expected, f"{provider}: {reply}"


@pytest.mark.parametrize(
    ("provider", "reply", "action"), [(r["provider"], r["reply"], r["action"]) for r in _rows()]
)
def test_corpus_reaction_of_the_shipped_rules(provider: str, reply: str, action: str) -> None:
    """What an engine with no rules of its own does on each reply, as the engine sees it (the
    reply normalised by the SMTP client, repeated to pass rules that need several hits)."""
    code, text = _split(reply)
    line = make_reply("someone@example.org", code, text).reply
    shaper = Shaper(parse_config({"delivery": {"sourceIPs": [{"address": "192.0.2.1"}]}}))
    hit = None
    for i in range(3):
        hit = shaper.observe("192.0.2.1", provider, line, 1_800_000_000.0 + i)
        if hit is not None:
            break
    got = hit.action if hit is not None else ("retry" if code < 500 else "bounce")
    assert {"quarantine": "quarantine-ip"}.get(got, got) == action, f"{provider}: {reply}"


def test_a_single_spamhaus_zen_refusal_does_not_quarantine_the_ip() -> None:
    shaper = Shaper(parse_config({"delivery": {"sourceIPs": [{"address": "192.0.2.1"}]}}))
    line = "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
    assert shaper.observe("192.0.2.1", "default", line, 1_800_000_000.0) is None


def test_qmail_enhanced_code_after_the_text() -> None:
    assert enhanced_status("sorry, no mailbox here by that name. (#5.1.1)") == "5.1.1"
    assert parse_reply(550, "sorry, no mailbox here by that name. (#5.1.1)")[0] == "5.1.1"
    assert parse_reply(550, "sorry, odd (#2.0.0)")[0] is None  # class disagrees with the code
    assert classify(550, "sorry, no mailbox here by that name. (#5.1.1)") == "invalid-recipient"


def test_microsoft_5_1_10_is_a_missing_recipient_a_null_mx_is_dns() -> None:
    assert classify(550, "5.1.10 RESOLVER.ADR.RecipientNotFound; not found") == "invalid-recipient"
    assert classify(550, "5.1.10 Recipient address has null MX") == "dns"


def test_a_domain_listed_on_spamhaus_dbl_is_content_an_ip_on_zen_is_reputation() -> None:
    dbl = (
        "5.7.1 Service unavailable; Sender address [a@spam.example] blocked using dbl.spamhaus.org"
    )
    zen = "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
    assert classify(554, dbl) == "content"
    assert classify(554, zen) == "reputation"


def test_corpus_is_not_empty_and_covers_every_class() -> None:
    classes = {c for _, _, c in _corpus()}
    assert len(_corpus()) >= 30
    assert classes <= set(REPLY_CLASSES)
    assert classes >= {"throttled", "reputation", "invalid-recipient", "mailbox-full", "content"}


def test_success_is_ok() -> None:
    assert classify(250, "2.0.0 Ok: queued as 123") == "ok"


def test_enhanced_status() -> None:
    assert enhanced_status("5.1.1 <a@b>: user unknown") == "5.1.1"
    assert enhanced_status("4.7.28 [203.0.113.1] rate") == "4.7.28"
    assert enhanced_status("Ok queued") is None
    assert enhanced_status("see 203.0.113.10") is None


def test_extra_rules_come_first() -> None:
    rule = text_rule(r"custom-throttle-marker", "throttled")
    assert classify(550, "5.1.1 custom-throttle-marker", [rule]) == "throttled"
    assert classify(550, "5.1.1 custom-throttle-marker") == "invalid-recipient"


@pytest.mark.parametrize("code", [421, 450, 451, 452, 550, 551, 552, 553, 554])
def test_every_code_gets_a_class(code: int) -> None:
    assert classify(code, "") in REPLY_CLASSES
