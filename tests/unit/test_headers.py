"""List-Unsubscribe, one-click (RFC 8058) and Feedback-ID added at submission, signed by DKIM."""

from __future__ import annotations

import email
import re
from email.policy import compat32
from pathlib import Path
from urllib.parse import unquote

import dkim
import pytest

from mailfleet.mta.config import DKIMConfig, DKIMKey, HeadersConfig
from mailfleet.mta.dkim import DKIMSigner
from mailfleet.mta.dkimkeys import dns_txt_record
from mailfleet.mta.headers import (
    HeaderResult,
    add_headers,
    check_templates,
    fold_header,
    load_token_key,
    unsubscribe_token,
    verify_token,
)

KEY = b"k" * 32
UNSUB = (
    "<mailto:unsub@shop.example?subject=unsubscribe:{recipient}>, <https://shop.example/u/{token}>"
)
FEEDBACK = "{campaign}:{customer}:marketing:mailfleet"

MESSAGE = (
    b"From: Shop <news@shop.example>\r\n"
    b"To: Jane <jane@example.org>\r\n"
    b"Subject: Spring sale\r\n"
    b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
    b"Message-ID: <spring-1@shop.example>\r\n"
    b"X-Mailfleet-Campaign: spring26\r\n"
    b"X-Mailfleet-Customer: cust42\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Jane,\r\n"
    b"\r\n"
    b"X-Mailfleet-Campaign: this line is body, not a header\r\n"
)


def cfg(**kw: object) -> HeadersConfig:
    base: dict[str, object] = {"listUnsubscribe": UNSUB, "feedbackId": FEEDBACK}
    base.update(kw)
    return HeadersConfig.model_validate(base)


def add(
    data: bytes = MESSAGE,
    config: HeadersConfig | None = None,
    recipients: list[str] | None = None,
    message_id: str | None = "<spring-1@shop.example>",
    token_key: bytes | None = KEY,
) -> HeaderResult:
    return add_headers(
        data,
        config if config is not None else cfg(),
        recipients=["jane@example.org"] if recipients is None else recipients,
        message_id=message_id,
        token_key=token_key,
    )


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def header(data: bytes, name: str) -> list[str]:
    msg = email.message_from_bytes(data, policy=compat32)
    return [" ".join(str(v).split()) for v in msg.get_all(name, [])]


# --- List-Unsubscribe ---------------------------------------------------------------------------


def test_adds_all_three_headers_and_removes_internal_ones() -> None:
    r = add()
    assert r.added == ("List-Unsubscribe", "List-Unsubscribe-Post", "Feedback-ID")
    assert r.notes == ()
    token = unsubscribe_token(KEY, "jane@example.org")
    assert header(r.data, "List-Unsubscribe") == [
        "<mailto:unsub@shop.example?subject=unsubscribe:jane%40example.org>, "
        f"<https://shop.example/u/{token}>"
    ]
    assert header(r.data, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert header(r.data, "Feedback-ID") == ["spring26:cust42:marketing:mailfleet"]
    assert b"x-mailfleet-" not in header_block(r.data).lower()
    assert r.internal == {"campaign": "spring26", "customer": "cust42"}
    # the body is untouched, internal-looking lines included
    assert r.data.split(b"\r\n\r\n", 1)[1] == MESSAGE.split(b"\r\n\r\n", 1)[1]


def test_recipient_is_percent_encoded_inside_the_uri() -> None:
    r = add(
        config=cfg(listUnsubscribe="<https://shop.example/u?r={recipient}&m={message_id}>"),
        recipients=["o'hara+news&deals@example.org"],
    )
    (value,) = header(r.data, "List-Unsubscribe")
    uri = value.strip("<>")
    assert "&deals" not in uri and "+" not in uri and "@" not in uri
    assert uri.startswith("https://shop.example/u?r=")
    query = dict(p.split("=", 1) for p in uri.split("?", 1)[1].split("&"))
    assert unquote(query["r"]) == "o'hara+news&deals@example.org"
    assert unquote(query["m"]) == "spring-1@shop.example"


def test_several_recipients_with_personal_template_get_no_list_unsubscribe() -> None:
    r = add(recipients=["a@example.org", "b@example.org"])
    assert "List-Unsubscribe" not in r.added and "List-Unsubscribe-Post" not in r.added
    assert header(r.data, "List-Unsubscribe") == []
    assert header(r.data, "List-Unsubscribe-Post") == []
    assert any("2 recipients" in n and "{recipient}" in n and "{token}" in n for n in r.notes)
    assert r.added == ("Feedback-ID",)  # still added: it names the campaign, not a person


def test_same_recipient_twice_is_one_recipient() -> None:
    r = add(recipients=["jane@example.org", "Jane@Example.org"])
    assert "List-Unsubscribe" in r.added


def test_several_recipients_with_impersonal_template_get_it() -> None:
    r = add(
        config=cfg(listUnsubscribe="<mailto:unsub@shop.example>, <https://shop.example/u/list>"),
        recipients=["a@example.org", "b@example.org", "c@example.org"],
    )
    assert header(r.data, "List-Unsubscribe") == [
        "<mailto:unsub@shop.example>, <https://shop.example/u/list>"
    ]
    assert "List-Unsubscribe-Post" in r.added


def test_keep_sender_set_list_unsubscribe_is_kept_and_not_duplicated() -> None:
    theirs = b"List-Unsubscribe: <mailto:leave@shop.example>\r\n"
    data = theirs + MESSAGE
    r = add(data, config=cfg(clientHeaders="keep"))
    assert header(r.data, "List-Unsubscribe") == ["<mailto:leave@shop.example>"]
    # no one-click next to a URI we did not write
    assert header(r.data, "List-Unsubscribe-Post") == []
    assert any("sender set one" in n for n in r.notes)


def test_keep_sender_set_feedback_id_is_kept() -> None:
    r = add(b"Feedback-ID: a:b:c:theirs\r\n" + MESSAGE, config=cfg(clientHeaders="keep"))
    assert header(r.data, "Feedback-ID") == ["a:b:c:theirs"]
    assert "Feedback-ID" not in r.added


def test_keep_sender_set_one_click_is_kept() -> None:
    r = add(
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" + MESSAGE,
        config=cfg(clientHeaders="keep"),
    )
    assert header(r.data, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert "List-Unsubscribe" in r.added and "List-Unsubscribe-Post" not in r.added


SENDER_SET = (
    b"Feedback-ID: x:other-tenant:marketing:mailfleet\r\n"
    b"List-Unsubscribe: <https://elsewhere.example/u>\r\n"
    b"list-unsubscribe-post: List-Unsubscribe=One-Click\r\n"
    b"List-Unsubscribe: <mailto:second@elsewhere.example>\r\n"
)


def test_replace_is_the_default_the_senders_fields_give_way_to_the_pools() -> None:
    r = add(SENDER_SET + MESSAGE)
    token = unsubscribe_token(KEY, "jane@example.org")
    assert header(r.data, "List-Unsubscribe") == [
        "<mailto:unsub@shop.example?subject=unsubscribe:jane%40example.org>, "
        f"<https://shop.example/u/{token}>"
    ]
    assert header(r.data, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert header(r.data, "Feedback-ID") == ["spring26:cust42:marketing:mailfleet"]
    assert b"elsewhere" not in r.data and b"other-tenant" not in r.data
    assert r.replaced == ("feedback-id", "list-unsubscribe", "list-unsubscribe-post")
    assert r.added == ("List-Unsubscribe", "List-Unsubscribe-Post", "Feedback-ID")
    assert sum("headers.clientHeaders: replace" in n for n in r.notes) == 3


def test_replace_removes_the_senders_list_unsubscribe_even_when_ours_cannot_be_written() -> None:
    # Two recipients and a personal template: none of ours, and none of theirs either (else a
    # second recipient would be a way around the replacement).
    r = add(SENDER_SET + MESSAGE, recipients=["a@example.org", "b@example.org"])
    assert header(r.data, "List-Unsubscribe") == []
    assert header(r.data, "List-Unsubscribe-Post") == []
    assert any("2 recipients" in n for n in r.notes)


def test_replace_leaves_fields_without_a_template_alone() -> None:
    r = add(SENDER_SET + MESSAGE, config=cfg(listUnsubscribe=None))
    assert header(r.data, "List-Unsubscribe") == [
        "<https://elsewhere.example/u>",
        "<mailto:second@elsewhere.example>",
    ]
    assert header(r.data, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert header(r.data, "Feedback-ID") == ["spring26:cust42:marketing:mailfleet"]


def test_replace_with_one_click_off_removes_the_senders_one_click() -> None:
    r = add(SENDER_SET + MESSAGE, config=cfg(oneClick=False))
    assert "List-Unsubscribe" in r.added
    assert header(r.data, "List-Unsubscribe-Post") == []


def test_sender_set_one_click_is_not_duplicated() -> None:
    r = add(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" + MESSAGE)
    assert header(r.data, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert "List-Unsubscribe" in r.added


def test_one_click_needs_an_https_uri() -> None:
    r = add(config=cfg(listUnsubscribe="<mailto:unsub@shop.example?subject={recipient}>"))
    assert "List-Unsubscribe" in r.added
    assert header(r.data, "List-Unsubscribe-Post") == []
    assert any("https" in n and "8058" in n for n in r.notes)
    r = add(config=cfg(listUnsubscribe="<http://shop.example/u/{token}>"))
    assert header(r.data, "List-Unsubscribe-Post") == []


def test_one_click_off() -> None:
    r = add(config=cfg(oneClick=False))
    assert "List-Unsubscribe" in r.added and "List-Unsubscribe-Post" not in r.added
    assert header(r.data, "List-Unsubscribe-Post") == []


def test_token_without_key_is_not_added() -> None:
    r = add(token_key=None)
    assert header(r.data, "List-Unsubscribe") == []
    assert any("tokenKeyFile" in n for n in r.notes)


def test_message_id_placeholder_without_message_id() -> None:
    r = add(config=cfg(listUnsubscribe="<https://shop.example/u/{message_id}>"), message_id=None)
    assert header(r.data, "List-Unsubscribe") == []
    assert any("Message-ID" in n for n in r.notes)


# --- Feedback-ID --------------------------------------------------------------------------------


def test_feedback_id_values_cannot_add_fields() -> None:
    data = MESSAGE.replace(b"X-Mailfleet-Customer: cust42", b"X-Mailfleet-Customer: acme:eu west")
    r = add(data)
    (value,) = header(r.data, "Feedback-ID")
    assert value == "spring26:acme-eu-west:marketing:mailfleet"
    assert value.count(":") == 3


def test_feedback_id_missing_header_leaves_field_empty_and_says_so() -> None:
    data = MESSAGE.replace(b"X-Mailfleet-Customer: cust42\r\n", b"")
    r = add(data)
    assert header(r.data, "Feedback-ID") == ["spring26::marketing:mailfleet"]
    assert any("X-Mailfleet-customer" in n for n in r.notes)


def test_internal_header_names_are_case_insensitive_and_folded_values_unfold() -> None:
    data = MESSAGE.replace(
        b"X-Mailfleet-Campaign: spring26", b"x-MAILFLEET-campaign: spring\r\n\t26"
    )
    r = add(data)
    assert r.internal["campaign"] == "spring 26"
    assert header(r.data, "Feedback-ID") == ["spring-26:cust42:marketing:mailfleet"]
    assert b"spring\r\n\t26" not in r.data


def test_internal_headers_removed_even_without_templates() -> None:
    r = add(config=HeadersConfig())
    assert r.added == () and r.notes == ()
    assert b"x-mailfleet-" not in header_block(r.data).lower()
    assert r.internal == {"campaign": "spring26", "customer": "cust42"}


def test_nothing_configured_and_nothing_internal_returns_the_same_bytes() -> None:
    plain = MESSAGE.replace(b"X-Mailfleet-Campaign: spring26\r\n", b"").replace(
        b"X-Mailfleet-Customer: cust42\r\n", b""
    )
    r = add(plain, config=HeadersConfig())
    assert r.data is plain
    assert not r.changed


# --- message shapes and folding -----------------------------------------------------------------


def test_lf_message_stays_lf() -> None:
    lf = MESSAGE.replace(b"\r\n", b"\n")
    r = add(lf)
    assert b"\r" not in r.data
    assert b"\nList-Unsubscribe:" in r.data
    assert r.data.split(b"\n\n", 1)[1] == lf.split(b"\n\n", 1)[1]


def test_headers_are_added_before_the_empty_line() -> None:
    r = add()
    head, body = r.data.split(b"\r\n\r\n", 1)
    assert b"Feedback-ID:" in head and b"List-Unsubscribe:" in head
    assert body.startswith(b"Hello Jane,")


def test_header_only_message() -> None:
    r = add(b"From: a@shop.example\r\nTo: jane@example.org")
    assert r.data.startswith(b"From: a@shop.example\r\nTo: jane@example.org\r\nList-Unsubscribe:")
    assert r.data.endswith(b"\r\n")


def test_lines_are_folded_within_78_characters() -> None:
    r = add()
    for line in header_block(r.data).split(b"\r\n"):
        assert len(line) <= 78, line
    raw = re.search(rb"List-Unsubscribe:.*?\r\n(?=\S)", r.data, re.S)
    assert raw is not None and b"\r\n " in raw.group()  # two URIs do not fit on one line


def test_fold_header() -> None:
    assert fold_header("A", "b c") == b"A: b c\r\n"
    long_uri = "<https://shop.example/" + "x" * 90 + ">"
    folded = fold_header("List-Unsubscribe", f"<mailto:u@shop.example>, {long_uri}")
    assert (
        folded == b"List-Unsubscribe: <mailto:u@shop.example>,\r\n " + long_uri.encode() + b"\r\n"
    )
    assert fold_header("X", long_uri, b"\n") == b"X: " + long_uri.encode() + b"\n"
    uri_75 = "<https://shop.example/" + "y" * 52 + ">"
    assert (
        fold_header("List-Unsubscribe", uri_75)
        == b"List-Unsubscribe:\r\n " + uri_75.encode() + b"\r\n"
    )


# --- token --------------------------------------------------------------------------------------


def test_token() -> None:
    t = unsubscribe_token(KEY, "Jane@Example.org")
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", t)
    assert t == unsubscribe_token(KEY, "jane@example.org")
    assert t != unsubscribe_token(KEY, "john@example.org")
    assert t != unsubscribe_token(b"another key of 32 bytes........", "jane@example.org")
    assert verify_token(KEY, "jane@example.org", t)
    assert not verify_token(KEY, "john@example.org", t)


def test_load_token_key(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"0123456789abcdef0123456789abcdef\n")
    assert load_token_key(tmp_path / "key") == b"0123456789abcdef0123456789abcdef"
    (tmp_path / "short").write_bytes(b"abc\n")
    with pytest.raises(ValueError, match="3 bytes"):
        load_token_key(tmp_path / "short")


# --- config checks ------------------------------------------------------------------------------


def test_check_templates() -> None:
    assert check_templates(cfg(tokenKeyFile="/k")) == []
    assert check_templates(HeadersConfig()) == []
    problems = check_templates(cfg(listUnsubscribe="<ftp://x/{user}>"))
    text = "\n".join(problems)
    assert "unknown placeholder(s) user" in text
    assert "ftp://x/{user}" in text
    assert "oneClick needs an https URI" in text
    assert "no <URI>" in "\n".join(check_templates(cfg(listUnsubscribe="mailto:x@y")))
    assert "tokenKeyFile" in "\n".join(check_templates(cfg()))


# --- DKIM covers the added headers --------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
RSA_KEY = DKIMKey(
    domain="shop.example",
    selector="s2026a",
    key_file=REPO / "examples" / "mta" / "dkim" / "example.test.s2026a.rsa.pem",
)


def test_dkim_signature_covers_the_added_headers_and_verifies() -> None:
    r = add()
    signed = DKIMSigner(DKIMConfig(keys=[RSA_KEY])).sign(r.data) + r.data
    sig = re.search(rb"DKIM-Signature:(.*?)\r\n(?=\S)", signed, re.S)
    assert sig is not None
    tags = dict(t.split("=", 1) for t in re.sub(r"\s+", "", sig.group(1).decode()).split(";") if t)
    h = tags["h"].lower().split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post", "feedback-id"} <= set(h)
    assert not any(n.startswith("x-mailfleet-") for n in h)

    record = dns_txt_record(RSA_KEY).encode()

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return record if name == b"s2026a._domainkey.shop.example." else b""

    assert dkim.verify(signed, dnsfunc=dnsfunc)
    # and the signature breaks if the unsubscribe URI is changed in transit
    tampered = signed.replace(b"https://shop.example/u/", b"https://evil.example/u/")
    assert tampered != signed
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)
