"""Fuzzing the pure parsers with hypothesis: the envelope address parser, the ARF parser, the
header/MIME handling used for DKIM signing, DSNs and added headers, and the config loader.
No crash, no hang, and a clear error (the documented exception) for what they refuse."""

from __future__ import annotations

import base64
import contextlib
import gzip
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from mailfleet.mta.addresses import AddressError, parse_path, valid_helo
from mailfleet.mta.arf import ARFError, parse_arf
from mailfleet.mta.config import ConfigError, HeadersConfig, parse_config
from mailfleet.mta.dkim import DKIMSigner
from mailfleet.mta.dmarcmail import NotAReport, report_attachments
from mailfleet.mta.dsn import DSNRecipient, build_dsn, should_send_dsn
from mailfleet.mta.headers import add_headers
from mailfleet.mta.lineends import has_bare_newline, normalize_newlines

ARF = Path(__file__).parent.parent / "data" / "arf"
SAMPLES = [p.read_bytes() for p in sorted(ARF.glob("*.eml"))]
REPLY = re.compile(r"^[45]\d\d [45]\.\d{1,3}\.\d{1,3} [\x20-\x7e]+$")

# Text that looks like envelope paths often enough to reach deep into the parser.
PATH_ALPHABET = st.sampled_from(
    [*'<>@."\\[]:,- abcxyzABC019+=_~!#', "\x00", "\x7f", "\r", "é", "\udcff", "IPv6:"]
)
path_text = st.lists(PATH_ALPHABET, max_size=40).map("".join) | st.text(max_size=60)


@given(path_text, st.sampled_from(["sender", "recipient"]), st.booleans())
@example("<a@b.org@evil.org>", "recipient", False)
@example('<"a\\"@"@x.org> SIZE=1', "sender", True)
def test_address_parser(arg: str, kind: str, utf8: bool) -> None:
    try:
        parsed = parse_path(arg, kind, smtputf8=utf8)  # type: ignore[arg-type]
    except AddressError as e:
        assert REPLY.match(e.reply), e.reply
        return
    addr = parsed.address
    assert not any(ord(c) < 32 or ord(c) == 127 for c in addr)
    if addr:
        # What was accepted parses again to itself: stored and re-sent without surprises.
        assert parse_path(f"<{addr}>", kind, smtputf8=True).address == addr  # type: ignore[arg-type]
        assert "@" in addr and addr.rpartition("@")[2]
    else:
        assert kind == "sender"


@given(st.text(max_size=80))
def test_helo_names(name: str) -> None:
    if valid_helo(name):
        assert name.isascii() and not any(ord(c) <= 32 or ord(c) == 127 for c in name)


def _mutate(data: bytes, cuts: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(data)
    for pos, chunk in cuts:
        i = pos % (len(out) + 1)
        out[i : i + len(chunk)] = chunk
    return bytes(out)


mutations = st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=12)), max_size=6)


@given(st.sampled_from(SAMPLES), mutations)
def test_arf_parser_on_mutated_reports(sample: bytes, cuts: list[tuple[int, bytes]]) -> None:
    with contextlib.suppress(ARFError):
        parse_arf(_mutate(sample, cuts))


@given(st.binary(max_size=2000))
def test_arf_parser_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(ARFError):
        parse_arf(data)


_REPORT_MAIL = (
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
    b"report\r\n--b\r\nContent-Type: application/gzip; name=r.xml.gz\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.b64encode(gzip.compress(b"<feedback/>"))
    + b"\r\n--b--\r\n"
)


@given(st.sampled_from([_REPORT_MAIL, *SAMPLES]), mutations)
def test_mailed_dmarc_reports_yield_attachments_or_say_there_is_none(
    sample: bytes, cuts: list[tuple[int, bytes]]
) -> None:
    with contextlib.suppress(NotAReport):
        assert all(isinstance(a, bytes) and a for a in report_attachments(_mutate(sample, cuts)))


message_text = st.sampled_from(
    [
        b"From: <a@example.test>\r\nTo: <b@example.org>\r\nSubject: hi\r\n\r\nbody\r\n",
        b"From: App <app@example.test>\r\nSubject: x\r\n\tfolded\r\n\r\n",
        SAMPLES[0],
    ]
)


@given(message_text, mutations)
def test_dkim_signing_and_newline_handling(msg: bytes, cuts: list[tuple[int, bytes]]) -> None:
    from fixtures.keys import RSA_KEY

    from mailfleet.mta.config import DKIMConfig

    data = _mutate(msg, cuts)
    fixed = normalize_newlines(data)
    assert not has_bare_newline(fixed)
    # DKIMMessageError (a ValueError): the header block cannot be parsed; sent unsigned.
    with contextlib.suppress(ValueError):
        DKIMSigner(DKIMConfig(keys=[RSA_KEY])).sign_result(fixed)


@given(message_text, mutations, st.text(max_size=40), st.sampled_from(["failed", "delayed"]))
def test_dsn_from_any_original(
    msg: bytes, cuts: list[tuple[int, bytes]], sender: str, action: str
) -> None:
    original = _mutate(msg, cuts)
    should_send_dsn(sender, original)
    dsn = build_dsn(
        reporting_mta="mta.test",
        dsn_from="MAILER-DAEMON@mta.test",
        original_sender=sender,
        original_message=original,
        failures=[DSNRecipient("x@example.org", "5.1.1", diagnostic="550 5.1.1 " + sender)],
        arrival_date=0.0,
        action=action,  # type: ignore[arg-type]
        now=1.0,
    )
    head = dsn.partition(b"\r\n\r\n")[0]
    # Whatever the sender's text, the DSN's own header block stays well formed.
    for line in head.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line
        assert line[:1] in (b" ", b"\t") or b":" in line


@given(message_text, mutations, st.lists(st.emails(), min_size=1, max_size=2))
def test_added_headers_keep_the_message(
    msg: bytes, cuts: list[tuple[int, bytes]], rcpts: list[str]
) -> None:
    cfg = HeadersConfig(
        list_unsubscribe="<mailto:u@example.test?subject={recipient}>", feedback_id="{c}:mf"
    )
    out = add_headers(
        _mutate(msg, cuts), cfg, recipients=rcpts, message_id="q1", token_key=b"k" * 16
    )
    assert isinstance(out.data, bytes)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = ["submission", "routing", "delivery", "retry", "dkim", "suppression", "shaping"]


@given(
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), yaml_values, max_size=4)
    | yaml_values
)
def test_config_loader(data: Any) -> None:
    try:
        parse_config(data, "fuzz.yaml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.yaml: ")


@given(st.text(max_size=200))
def test_config_loader_from_yaml_text(text: str) -> None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    with contextlib.suppress(ConfigError):
        parse_config(data, "fuzz.yaml")
