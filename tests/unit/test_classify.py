"""The reply classifier on a corpus of real provider replies (tests/data/provider-replies.tsv)."""

import csv
import re
from pathlib import Path

import pytest

from mailfleet.mta.classify import REPLY_CLASSES, classify, enhanced_status, text_rule

CORPUS = Path(__file__).parent.parent / "data" / "provider-replies.tsv"


def _corpus() -> list[tuple[str, str, str]]:
    lines = [ln for ln in CORPUS.read_text().splitlines() if ln and not ln.startswith("#")]
    rows = list(csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r["provider"], r["reply"], r["class"]) for r in rows]


def _split(reply: str) -> tuple[int, str]:
    m = re.match(r"(\d{3})[ -]?(.*)", reply)
    assert m, reply
    return int(m.group(1)), m.group(2)


@pytest.mark.parametrize(("provider", "reply", "expected"), _corpus())
def test_corpus(provider: str, reply: str, expected: str) -> None:
    code, text = _split(reply)
    assert classify(code, text) == expected, f"{provider}: {reply}"


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
