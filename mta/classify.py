"""Reply classes: what a remote server's answer means for the sender, from code, RFC 3463 enhanced
status code and provider-specific text. Pure and table-driven; config may add rules in front."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from mailfleet.mta.config import ReplyClassName

ReplyClass = Literal["ok"] | ReplyClassName
REPLY_CLASSES: tuple[ReplyClass, ...] = ("ok", *get_args(ReplyClassName))

_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# qmail and its heirs put the enhanced code last, in parentheses: "no mailbox here (#5.1.1)".
QMAIL_ENHANCED = re.compile(r"\(#([245])\.(\d{1,3})\.(\d{1,3})\)")


def enhanced_status(text: str) -> str | None:
    """The RFC 3463 status code ("5.1.1") at the start of a reply text, or qmail-style at its
    end ("(#5.1.1)"), or None."""
    m = _ENHANCED.search(text[:40]) or QMAIL_ENHANCED.search(text)
    return ".".join(m.groups()) if m else None


@dataclass(frozen=True)
class TextRule:
    pattern: re.Pattern[str]
    reply_class: ReplyClass


def text_rule(pattern: str, reply_class: ReplyClass) -> TextRule:
    return TextRule(re.compile(pattern, re.IGNORECASE), reply_class)


# Provider texts first: they say more than the status codes they come with (Gmail sends 4.7.0 for
# both reputation and content, Outlook 5.7.1 for block lists).
PROVIDER_RULES: tuple[TextRule, ...] = (
    # Spamhaus DBL lists domains found in messages (links, senders): the content, not the IP.
    text_rule(r"\bdbl\.spamhaus\.org\b|spamhaus\.org/query/dbl|\bURIBL\b|\bSURBL\b", "content"),
    # Gmail's block of an IP for its rate is a verdict on the IP, not a pace to slow down to.
    text_rule(r"mail sent from your IP address has been blocked", "reputation"),
    # Microsoft 365 says 5.1.10 for a recipient its directory lacks (RFC 7505 uses it for null MX)
    text_rule(r"RecipientNotFound|RecipNotFound|Recipient not found", "invalid-recipient"),
    text_rule(r"\bTSS04\b", "throttled"),
    text_rule(r"\bTSS0[59]\b|\bTS0[1-3]\b", "reputation"),
    text_rule(
        r"\bRP-00[1-3]\b|4\.7\.65[01]|4\.7\.500|rate limit|receiving mail at a rate", "throttled"
    ),
    text_rule(
        r"unusual rate of unsolicited mail|too many (messages|connections|sessions)|\bRL00000\d\b",
        "throttled",
    ),
    text_rule(
        r"\bS3140\b|\bS3150\b|block ?list|blocked using|listed (at|on|in)\b|banned sender"
        r"|found on one or more (DNS|R)BLs|\bBL0000\d\d\b|ipcheck\.proofpoint\.com"
        r"|dnsbl-lookup|csi\.cloudmark\.com",
        "reputation",
    ),
    text_rule(r"low reputation|poor reputation|user complaints|permanently deferred", "reputation"),
    # Mimecast: the sender or its headers refused by the recipient's policy.
    text_rule(r"Anti-Spoofing|envelope blocked|administrative prohibition", "auth-policy"),
    text_rule(
        r"DMARC|SPF|DKIM|authentication (information|level|checks)|not authorized", "auth-policy"
    ),
    text_rule(
        r"spam|unsolicited|suspicious due to the nature of the content|content"
        r"|rejected due to security polic|:blocked\)",  # Mimecast, Barracuda
        "content",
    ),
    text_rule(r"greylist", "other"),
    text_rule(r"over quota|mailbox (is )?full|insufficient storage", "mailbox-full"),
    text_rule(
        r"does not exist|user unknown|no such user|mailbox not found|doesn't have a"
        r"|invalid recipient|not our customer|no mailbox here",
        "invalid-recipient",
    ),
    text_rule(r"mailbox unavailable", "invalid-recipient"),
    text_rule(r"\bTLS\b|STARTTLS|certificate", "connection-tls"),
)

# RFC 3463: subject (first digit after the class) and detail.
_BY_STATUS: dict[str, ReplyClass] = {
    "1.1": "invalid-recipient",
    "1.2": "dns",
    "1.3": "invalid-recipient",
    "1.6": "invalid-recipient",
    "1.8": "dns",
    "1.10": "dns",  # RFC 7505: the domain publishes a null MX
    "2.1": "invalid-recipient",
    "2.2": "mailbox-full",
    "3.2": "connection-tls",
    "3.4": "content",
    "4.1": "connection-tls",
    "4.2": "connection-tls",
    "4.3": "dns",
    "4.4": "dns",
    "4.7": "connection-tls",
    "5.3": "other",
    "6.0": "content",
    "7.1": "auth-policy",
    "7.23": "auth-policy",
    "7.25": "auth-policy",
    "7.26": "auth-policy",
    "7.27": "auth-policy",
    "7.28": "throttled",
    "7.10": "connection-tls",
    "7.11": "connection-tls",
    "7.5": "connection-tls",
}
_BY_SUBJECT: dict[str, ReplyClass] = {
    "1": "invalid-recipient",
    "2": "mailbox-full",
    "3": "other",
    "4": "connection-tls",
    "5": "other",
    "6": "content",
    "7": "auth-policy",
}


def classify(code: int, text: str, extra_rules: Iterable[TextRule] = ()) -> ReplyClass:
    """The class of one SMTP reply (code and its text, without the code itself)."""
    if 200 <= code < 300:
        return "ok"
    for rule in (*extra_rules, *PROVIDER_RULES):
        if rule.pattern.search(text):
            return rule.reply_class
    status = enhanced_status(text)
    if status is not None:
        _, subject, detail = status.split(".")
        cls = _BY_STATUS.get(f"{subject}.{detail}") or _BY_SUBJECT.get(subject)
        if cls is not None:
            return cls
    if code in (421, 554) and not text:
        return "connection-tls"
    if code in (550, 551, 553):
        return "invalid-recipient"
    if code == 552:
        return "mailbox-full"
    return "other"
