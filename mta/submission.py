"""The submission listener: ESMTP (aiosmtpd) that accepts mail only from trusted networks or
authenticated users, and says 250 only once the message is in the spool."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import re
import socket
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid
from typing import Any, AnyStr, Literal, cast

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    _AuthMechAttr,
    syntax,
)

from mailfleet.mta.addresses import (
    AddressError,
    ParsedPath,
    domain_of,
    is_address_literal,
    parse_path,
    valid_helo,
)
from mailfleet.mta.auth import UserDB
from mailfleet.mta.config import SubmissionConfig, parse_hostport
from mailfleet.mta.dkim import from_header_domain
from mailfleet.mta.headers import header_block_refusal
from mailfleet.mta.limits import AuthLimiter, SessionLimiter, auth_keys, data_deadline
from mailfleet.mta.lineends import (
    has_bare_newline,
    has_dot_line,
    has_long_line,
    normalize_newlines,
)
from mailfleet.mta.metrics import EngineMetrics
from mailfleet.mta.routing import address_literal, non_public_reason
from mailfleet.mta.spool import new_message_id

DISK_FULL = "452 4.3.1 Insufficient system storage, try again later"

log = logging.getLogger("mailfleet.mta.submission")

# Accepts a message (queue id, sender, recipients, raw bytes, client, whether every line end of
# the bytes is a CRLF) once it is durable; raises to refuse it.
Ingest = Callable[[str, str, list[str], bytes, str, bool], Awaitable[None]]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# Looks up a recipient on the suppression list: None, or why it is suppressed.
Suppressed = Callable[[str], Awaitable[str | None]]
# Takes a message to a feedback address (an ARF report), the client, and whether the client is
# a configured feedback source (else the report must be DKIM-signed by a feedback domain);
# returns the SMTP reply.
Feedback = Callable[[bytes, str, bool], Awaitable[str]]
# Takes a message to DMARC report addresses: the message, the client, the addresses; returns the
# SMTP reply (the report is forwarded before it).
DMARCReports = Callable[[bytes, str, list[str]], Awaitable[str]]


@dataclass
class SubmissionPolicy:
    """What the listener enforces; swapped as a whole on config reload."""

    hostname: str
    trusted: list[Network]
    users: UserDB | None
    max_recipients: int
    feedback_addresses: frozenset[str] = frozenset()
    # Clients whose reports to a feedback address count (the providers' networks); reports from
    # other clients count only when DKIM-signed by one of `feedback_domains` (checked later).
    feedback_sources: list[Network] = field(default_factory=list)
    feedback_domains: frozenset[str] = frozenset()
    drop_suppressed: bool = False
    bare_newlines: Literal["reject", "normalize"] = "reject"
    accept_address_literals: bool = False
    # Literals in non-public ranges can never be delivered unless routing.allowPrivateMX says
    # so or a static route carries them: refused at RCPT instead of bounced after a 250.
    allow_private_literals: bool = False
    static_routes: frozenset[str] = frozenset()
    # DMARC report address -> the networks that may mail reports to it, and whether a report
    # DKIM-signed by a configured reporter may come from elsewhere (checked at DATA).
    dmarc_addresses: dict[str, tuple[list[Network], bool]] = field(default_factory=dict)

    def is_feedback_source(self, peer_ip: str) -> bool:
        return in_networks(peer_ip, self.feedback_sources)

    def is_trusted(self, peer_ip: str) -> bool:
        return in_networks(peer_ip, self.trusted)


def in_networks(peer_ip: str, networks: list[Network]) -> bool:
    try:
        addr = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


_UNSAFE_IN_REPLY = re.compile(r"[^\x20-\x7e]+")


def private_literal_reason(domain: str, policy: SubmissionPolicy) -> str | None:
    """Why mail to the address literal `domain` could never leave (a non-public address, no
    static route for it, routing.allowPrivateMX off), or None."""
    if policy.allow_private_literals or "*" in policy.static_routes:
        return None
    if domain.lower() in policy.static_routes:
        return None
    literal = address_literal(domain)
    reason = non_public_reason(literal) if literal is not None else None
    if reason is None:
        return None
    return (
        f"the address literal is {reason}; mail is not sent to non-public addresses"
        " (routing.allowPrivateMX is off)"
    )


def reply_text(text: str, limit: int = 200) -> str:
    """Text safe inside one SMTP reply line: printable ASCII only (a CR or LF would end the reply
    and start one the client takes for the next command's), and not too long."""
    return _UNSAFE_IN_REPLY.sub(" ", text)[:limit].strip()


def is_disk_full(e: BaseException) -> bool:
    """The spool's filesystem is full (SQLite says SQLITE_FULL, or a write got ENOSPC)."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    return isinstance(e, sqlite3.OperationalError) and "full" in str(e).lower()


def _peer_ip(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


def _auth_user(session: Session) -> str | None:
    if session.authenticated and isinstance(session.auth_data, LoginPassword):
        return session.auth_data.login.decode(errors="replace")
    return None


def _report_too_big(limit: int) -> str:
    return (
        f"552 5.3.4 Message too big for a report address: at most {limit} bytes"
        " (submission.maxReportSize) without authentication"
    )


UNTRUSTED_BUDGET = (
    "452 4.3.1 Too much mail from unauthenticated clients in progress, try again later"
)


def _has_header(head: bytes, name: bytes) -> bool:
    # A line starts with `name:` (two scans in C, not a Python step per line).
    prefix = name.lower() + b":"
    lower = head.lower()
    return lower.startswith(prefix) or b"\n" + prefix in lower


_DEFAULT_SUBMISSION = SubmissionConfig()
NUL_REFUSAL = (
    "550 5.6.0 Message refused: NUL character in the message data (RFC 5322 allows none;"
    " send binary content encoded, e.g. base64)"
)


def _header_limits(server: SMTP) -> dict[str, int]:
    """submission.maxHeaderBytes and maxHeaderFields of the listener `server` serves."""
    cfg = getattr(getattr(server, "owner", None), "cfg", None)
    if not isinstance(cfg, SubmissionConfig):
        cfg = _DEFAULT_SUBMISSION
    return {"max_bytes": int(cfg.max_header_bytes), "max_fields": cfg.max_header_fields}


def trace_headers(
    data: bytes, *, hostname: str, helo: str, peer_ip: str, queue_id: str, tls: bool, user: str
) -> bytes:
    """A Received line (RFC 5321 §4.4), plus Date and Message-ID when the submitter left them out
    (RFC 6409 §8.3, as an MSA may)."""
    head, _, _ = data.partition(b"\r\n\r\n")
    with_ = "ESMTPSA" if user else ("ESMTPS" if tls else "ESMTP")
    # Defence in depth: each name is checked where it is taken (EHLO, the config), but this
    # header is trusted as CRLF clean from here on, so nothing that could end, fold or break it
    # goes in, whatever a caller passed (issue 21: a CR in an IPv6 zone id got this far).
    helo = helo if valid_helo(helo) else ""
    hostname, peer_ip, queue_id = (
        re.sub(r"[^A-Za-z0-9._:%-]", "?", v)[:255] or "unknown"
        for v in (hostname, peer_ip, queue_id)
    )
    received = (
        f"Received: from {helo or 'unknown'} ([{peer_ip}])\r\n"
        f"\tby {hostname} (mailfleet) with {with_} id {queue_id};\r\n"
        f"\t{formatdate(localtime=False, usegmt=True)}\r\n"
    )
    extra = ""
    if not _has_header(head, b"date"):
        extra += f"Date: {formatdate(localtime=False, usegmt=True)}\r\n"
    if not _has_header(head, b"message-id"):
        extra += f"Message-ID: {make_msgid(domain=hostname)}\r\n"
    return received.encode() + extra.encode()


class SubmissionHandler:
    def __init__(
        self,
        policy: SubmissionPolicy,
        ingest: Ingest,
        metrics: EngineMetrics,
        suppressed: Suppressed | None = None,
        feedback: Feedback | None = None,
    ) -> None:
        self.policy = policy
        self.ingest = ingest
        self.metrics = metrics
        self.suppressed = suppressed
        self.feedback = feedback
        self.accepting = True
        self.auth_limiter = AuthLimiter()
        # True while the spool's disk is below its reserve: new mail is refused with 452 4.3.1.
        self.low_on_disk: Callable[[], bool] = lambda: False
        # Set by the engine when it takes DMARC reports by mail (dmarcReports.addresses).
        self.dmarc_reports: DMARCReports | None = None

    def _refuse(self, reason: str, reply: str) -> str:
        self.metrics.rejected.labels(reason).inc()
        return reply

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads commands one line at a time, so pipelined clients are served correctly;
        # it only does not say so.
        responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if not self.accepting:
            return self._refuse("draining", "421 4.3.2 Service shutting down, try another server")
        if self.low_on_disk():
            return self._refuse("disk-full", DISK_FULL)
        user = _auth_user(session)
        if user is not None and address and address != "<>":
            refusal = self._sender_refusal(session, user, domain_of(address), f"<{address}>")
            if refusal is not None:
                return refusal
        if not self._exempt(session):
            # Only the report addresses take mail from such a session: their limit, told early.
            cfg = getattr(getattr(server, "owner", None), "cfg", None)
            limit = cfg.max_report_size if isinstance(cfg, SubmissionConfig) else 0
            size = next((o[5:] for o in mail_options if o.upper().startswith("SIZE=")), "")
            if limit and size.isdigit() and int(size) > limit:
                return self._refuse("report-size", _report_too_big(limit))
        # aiosmtpd takes an empty mail_from for "no MAIL yet", so the null path stays "<>" here.
        envelope.mail_from = address or "<>"
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    def _exempt(self, session: Session) -> bool:
        """Authenticated, or from trustedNetworks: its data counts against no report budget."""
        return bool(session.authenticated) or self.policy.is_trusted(_peer_ip(session))

    def _sender_refusal(self, session: Session, user: str, domain: str, what: str) -> str | None:
        """550 5.7.1 when authenticated `user` may not send for `domain` (authUsersFile's third
        field); None when it may, or when the client is in trustedNetworks anyway."""
        users = self.policy.users
        if users is None or self.policy.is_trusted(_peer_ip(session)):
            return None
        if users.may_send_for(user, domain):
            return None
        return self._refuse(
            "sender-domain",
            f"550 5.7.1 {what}: user {reply_text(user, 64)} may not send for domain"
            f" {reply_text(domain, 100) or '(none)'} (the domains listed for the user in"
            " submission.authUsersFile)",
        )

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        policy = self.policy
        if len(envelope.rcpt_tos) >= policy.max_recipients:
            return self._refuse("too-many-recipients", "452 4.5.3 Too many recipients")
        dmarc = policy.dmarc_addresses.get(address.lower())
        if dmarc is not None and self.dmarc_reports is not None:
            # Reports come from the providers' networks: a local address, not relaying.
            networks, signed = dmarc
            if not (signed or in_networks(_peer_ip(session), networks)):
                return self._refuse(
                    "dmarc-source",
                    f"550 5.7.1 <{address}>: DMARC reports are accepted from the configured"
                    " reporters only",
                )
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Ok (DMARC report)"
        if address.lower() in policy.feedback_addresses and self.feedback is not None:
            # Feedback loops report from the providers' networks: a local address, not relaying.
            # Only configured sources count; signed reports are checked at DATA.
            if not (policy.is_feedback_source(_peer_ip(session)) or policy.feedback_domains):
                return self._refuse(
                    "feedback-source",
                    f"550 5.7.1 <{address}>: feedback reports are accepted from the"
                    " configured feedback loops only",
                )
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Ok (feedback)"
        if not (session.authenticated or policy.is_trusted(_peer_ip(session))):
            if policy.users is not None:
                return self._refuse("auth-required", "530 5.7.0 Authentication required")
            return self._refuse("relay-denied", "554 5.7.1 Relay access denied")
        domain = domain_of(address)
        if is_address_literal(domain):
            if not policy.accept_address_literals:
                return self._refuse(
                    "address-literal",
                    f"550 5.7.1 <{address}>: recipients at address literals are not accepted here",
                )
            why = private_literal_reason(domain, policy)
            if why is not None:
                return self._refuse("address-literal", f"550 5.7.1 <{address}>: {why}")
        if self.suppressed is not None:
            why = await self.suppressed(address)
            if why is not None:
                if not policy.drop_suppressed:
                    self.metrics.suppressed.labels("rejected").inc()
                    return self._refuse(
                        "suppressed",
                        f"550 5.7.1 <{address}>: recipient is on the suppression list"
                        f" ({reply_text(why, 64)})",
                    )
                dropped = getattr(envelope, "dropped", [])
                dropped.append(address)
                envelope.dropped = dropped  # type: ignore[attr-defined]
                return "250 2.1.5 Ok"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.perf_counter()
        if not self.accepting:
            return self._refuse("draining", "421 4.3.2 Service shutting down, try another server")
        if self.low_on_disk():
            return self._refuse("disk-full", DISK_FULL)
        data = envelope.original_content or b""
        assert isinstance(data, bytes)
        if has_bare_newline(data):
            if self.policy.bare_newlines == "reject":
                # Postfix's smtpd_forbid_bare_newline=reject answers the same way. Permanent:
                # the client would send the same bytes again.
                return self._refuse(
                    "bare-newline",
                    "550 5.5.2 Message refused: bare <CR> or <LF> in the message data"
                    " (every line must end with <CR><LF>, RFC 5321 section 2.3.8)",
                )
            # Normalised before anything is added or signed: what is signed is what is sent.
            data = normalize_newlines(data)
        # Content no next hop should get, refused before anything is parsed, added or queued.
        if b"\x00" in data:
            return self._refuse("nul-character", NUL_REFUSAL)
        too_large = header_block_refusal(data, **_header_limits(server))
        if too_large is not None:
            return self._refuse("header-too-large", f"552 5.3.4 Message refused: {too_large}")
        user = _auth_user(session) or ""
        if user:
            # What the pool's keys would sign is the From header's domain: the user's to send.
            domain = from_header_domain(data) or ""
            refusal = self._sender_refusal(session, user, domain, "From header")
            if refusal is not None:
                return refusal
        queue_id = new_message_id()
        peer_ip = _peer_ip(session)
        rcpts = list(envelope.rcpt_tos)
        feedback = [r for r in rcpts if r.lower() in self.policy.feedback_addresses]
        if feedback and self.feedback is not None:
            from_source = self.policy.is_feedback_source(peer_ip)
            if len(feedback) == len(rcpts):
                return await self.feedback(data, peer_ip, from_source)
            rcpts = [r for r in rcpts if r not in feedback]
            await self.feedback(data, peer_ip, from_source)
        reports = [r for r in rcpts if r.lower() in self.policy.dmarc_addresses]
        if reports and self.dmarc_reports is not None:
            reply = await self.dmarc_reports(data, peer_ip, reports)
            # Nothing else is queued unless the report was taken: a retry resends it all.
            if len(reports) == len(rcpts) or not reply.startswith("2"):
                return reply
            rcpts = [r for r in rcpts if r not in reports]
        dropped = getattr(envelope, "dropped", [])
        if dropped:
            self.metrics.suppressed.labels("dropped").inc(len(dropped))
            log.info(
                "suppressed recipients dropped",
                extra={"queue_id": queue_id, "recipients": len(dropped)},
            )
            rcpts = [r for r in rcpts if r not in dropped]
            if not rcpts:
                self.metrics.received.inc()
                return f"250 2.0.0 Ok: queued as {queue_id} (suppressed, not delivered)"
        trace = trace_headers(
            data,
            hostname=self.policy.hostname,
            helo=session.host_name or "",
            peer_ip=peer_ip,
            queue_id=queue_id,
            tls=session.ssl is not None,
            user=user,
        )
        try:
            await self.ingest(
                queue_id,
                "" if envelope.mail_from in (None, "", "<>") else envelope.mail_from,
                rcpts,
                trace + data,
                peer_ip + (f" user={user}" if user else ""),
                True,  # checked above: bare line ends refused or normalized
            )
        except Exception as e:
            if is_disk_full(e):
                log.error("spool disk full: refusing mail until there is room")
                return self._refuse(
                    "disk-full", "452 4.3.1 Insufficient system storage, try again later"
                )
            log.exception("could not queue a message")
            return self._refuse("spool-error", "451 4.3.0 Could not queue the message, try again")
        self.metrics.received.inc()
        self.metrics.accept_latency.observe(time.perf_counter() - started)
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def check_login(self, peer_ip: str, auth_data: LoginPassword) -> AuthOutcome:
        """AUTH PLAIN/LOGIN (only after STARTTLS): "ok", "failed" (535), or "locked" (421, too
        many failures from this client, or from this client for this user, within the window;
        never for the user from everywhere: see `auth_keys`)."""
        users = self.policy.users
        login = auth_data.login.decode(errors="replace")
        keys = auth_keys(peer_ip, login)
        if self.auth_limiter.locked(keys, time.monotonic()):
            self.metrics.rejected.labels("auth-locked").inc()
            log.warning("authentication locked out", extra={"user": login, "peer": peer_ip})
            return "locked"
        if users is not None and await users.verify(login, auth_data.password):
            return "ok"
        self.metrics.rejected.labels("auth-failed").inc()
        log.warning("authentication failed", extra={"user": login, "peer": peer_ip})
        self.auth_limiter.failure(keys, time.monotonic())
        return "failed"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        # Never the real check (SubmissionSMTP._authenticate hands over to check_login); given
        # to aiosmtpd only so that it offers AUTH.
        return AuthResult(success=False, handled=False)


AuthOutcome = Literal["ok", "failed", "locked"]


@dataclass(frozen=True)
class _PendingAuth:
    """What aiosmtpd's synchronous authenticator hook hands over to the asynchronous check."""

    login: LoginPassword


class SubmissionSMTP(SMTP):
    """aiosmtpd's SMTP with what the submission listener adds: one strict address parser for
    MAIL and RCPT, EHLO validation, session limits and the session gauge, a command timeout
    shorter than the DATA timeout with a minimum data rate, and AUTH checked off the loop."""

    _held: list[bytes] | None = None  # replies held back to go out in one write

    def __init__(
        self,
        handler: SubmissionHandler,
        owner: SubmissionServer,
        *,
        hostname: str,
        ident: str,
        data_size_limit: int,
        tls_context: ssl.SSLContext | None,
        timeout: float,
        hooks: dict[str, Callable[..., Any]],
    ) -> None:
        # aiosmtpd's SMTP.__init__ reflects on the instance and the handler for every connection
        # (inspect.getmembers, dir, inspect.signature: about a tenth of the loop's time at one
        # session per message). Here the same attributes are set from lookups made once per
        # class (_LEAN_NAMES) and once per server (`hooks`); tests/unit/test_lean_smtp.py
        # checks them against a stock SMTP's.
        self.__ident__ = ident
        self.loop = asyncio.get_running_loop()
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=self.loop,
        )
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.command_size_limits.clear()
        self.hostname = hostname
        self.tls_context = tls_context
        self.require_starttls = tls_context and False  # falsy, as aiosmtpd computes it
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = True
        self._proxy_timeout = None
        self._authenticator = handler.authenticate
        self._auth_callback = None
        self._auth_required = False
        smtp_names, auth_names = _lean_names(type(self))
        self._auth_methods = {
            mech: _AuthMechAttr(getattr(self, name), True) for mech, name in auth_names
        }
        self._handle_hooks = hooks
        self._ehlo_hook_ver = "new"
        self._smtp_methods = {cmd: getattr(self, name) for cmd, name in smtp_names}
        self._enforce_call_limit = False

        self.owner = owner
        self._parsed: ParsedPath | None = None
        self._counted_ip: str | None = None
        self._refused = False
        self._in_data = False
        self._data_start = 0.0
        self._data_bytes = 0
        self._deadline = 0.0
        # Not authenticated nor trusted: its DATA counts against the untrusted budget.
        self._untrusted = False
        self._counting = False
        self._held_bytes = 0

    # -- sessions: limits and the gauge --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is not None:
            # STARTTLS calls this again for the same session: not a new session.
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        refusal = self.owner.sessions.open(ip)
        if refusal is not None:
            self._refused = True
            self.owner.metrics.rejected.labels("too-many-sessions").inc()
            # uvloop's transports are not asyncio.WriteTransport subclasses: cast, not check.
            cast(asyncio.WriteTransport, transport).write(f"{refusal}\r\n".encode())
            transport.close()
            return
        self._counted_ip = ip
        self.owner.metrics.sessions.inc()
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        if self._counted_ip is not None:
            self.owner.sessions.close(self._counted_ip)
            self._counted_ip = None
            self.owner.metrics.sessions.dec()
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()  # type: ignore[no-any-return]

    # -- timeouts ------------------------------------------------------------------------------

    def _timeout_cb(self) -> None:
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is not None and not transport.is_closing():
            why = "data rate too low" if self._in_data else "idle"
            transport.write(
                f"421 4.4.2 {self.hostname} Error: timeout exceeded ({why})\r\n".encode()
            )
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's own reply names the exception and repeats its text ("500 Error:
        # (ValueError) ..."): internals, for the client to read. The log gets them instead, and
        # the session ends: after an unexpected error its state (mid-DATA even) is not known.
        log.error(
            "SMTP session error",
            exc_info=error,
            extra={"peer": _peer_ip(self.session) if self.session is not None else ""},
        )
        transport = self.transport
        if transport is not None:
            self.loop.call_soon(transport.close)  # once the reply below is written
        return f"421 4.3.0 {self.hostname} Internal error, closing the connection"

    def data_received(self, data: bytes) -> None:
        if self._in_data:
            self._data_bytes += len(data)
            if self._counting:
                self._held_bytes += len(data)
                self.owner.untrusted_held += len(data)
            self._extend_deadline()
        super().data_received(data)

    def _extend_deadline(self) -> None:
        cfg = self.owner.cfg
        assert cfg is not None
        deadline = data_deadline(
            self._data_start,
            self._data_bytes,
            grace=cfg.command_timeout,
            min_rate=float(cfg.min_data_rate),
            max_duration=cfg.data_timeout,
        )
        # Re-arm only when it moved by a second or more: chunks arrive often.
        if deadline - self._deadline >= 1.0 or self._deadline == 0.0:
            self._deadline = deadline
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._timeout_handle = self.loop.call_at(deadline, self._timeout_cb)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's own DATA reads the message a line at a time (a coroutine call and a few
        # list operations per line: ~1,400 for 100 KB). This one reads it in chunks up to each
        # ".<CRLF>" and checks what aiosmtpd checks on the whole: a line over 1001 octets with
        # its CRLF is 500, more than data_size_limit octets is 552 (both said after the end of
        # the data, as aiosmtpd does), dot-stuffing undone (RFC 5321 §4.5.2).
        self._in_data = True
        self._data_start = self.loop.time()
        self._data_bytes = 0
        self._deadline = 0.0
        self._extend_deadline()
        try:
            if await self.check_helo_needed():
                return
            if await self.check_auth_needed("DATA"):
                return
            assert self.envelope is not None
            if not self.envelope.rcpt_tos:
                await self.push("503 Error: need RCPT command")
                return
            if arg:
                await self.push("501 Syntax: DATA")
                return
            assert self.session is not None
            self._untrusted = self._counting = not self.owner.handler._exempt(self.session)
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            content, refusal = await self._read_data()
            # The data is in: the data-rate deadline is over. The client now waits for the reply
            # (RFC 5321 §4.5.3.2.6 gives it 10 minutes); a deadline firing now would say 421
            # while the message may be committed all the same.
            self._in_data = False
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            if refusal is not None:
                await self.push(refusal)
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                return
            self.envelope.content = content
            self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push("250 OK" if status is MISSING else status)
        finally:
            self._in_data = False
            self._release_held()
            if self.envelope is not None:
                # A session cancelled mid-handler keeps its envelope until it is collected.
                self.envelope.content = self.envelope.original_content = None
            if self.transport is not None:
                self._reset_timeout()

    def _release_held(self) -> None:
        """What this session held no longer counts (and what it still reads will not)."""
        self._counting = False
        self.owner.untrusted_held -= self._held_bytes
        self._held_bytes = 0

    async def _read_data(self) -> tuple[bytes, str | None]:
        """The message up to <CRLF>.<CRLF> (or "." on the first line): (content, None), or
        (b"", the reply) when it was too long or had a line too long."""
        reader = self._reader
        limit = self.data_size_limit or 0
        cfg = self.owner.cfg
        budget = cfg.untrusted_data_budget if cfg is not None and self._untrusted else 0
        report_limit = (
            cfg is not None and self._untrusted and (not limit or cfg.max_report_size < limit)
        )
        if report_limit:
            assert cfg is not None
            limit = cfg.max_report_size
        parts: list[bytes] = []
        size = 0
        tail = b"\r\n"  # the data starts at the start of a line
        refusal: str | None = None
        # The reader's limit is the command line length; in DATA a chunk runs to the next
        # ".<CRLF>", wherever it is. (StreamReader also pauses the socket above twice this.)
        reader._limit = DATA_CHUNK  # type: ignore[attr-defined]
        try:
            while True:
                try:
                    chunk = await reader.readuntil(b".\r\n")
                except asyncio.LimitOverrunError as e:
                    chunk = await reader.readexactly(e.consumed)
                except asyncio.CancelledError:
                    self._writer.close()
                    raise
                tail = (tail + chunk[-5:])[-5:]
                size += len(chunk)
                if refusal is None:
                    parts.append(chunk)
                    if limit and size - (3 if tail == b"\r\n.\r\n" else 0) > limit:
                        refusal = (
                            _report_too_big(limit)
                            if report_limit
                            else _data_refusal(b"".join(parts))
                        )
                        parts.clear()
                        self._release_held()
                    elif budget and self.owner.untrusted_held > budget:
                        # Counted as they arrive (data_received): in the reader's buffer, then
                        # here, until the reply.
                        self.owner.metrics.rejected.labels("untrusted-budget").inc()
                        refusal = UNTRUSTED_BUDGET
                        parts.clear()
                        self._release_held()
                if tail == b"\r\n.\r\n":
                    break
        finally:
            reader._limit = self.line_length_limit  # type: ignore[attr-defined]
        if refusal is not None:
            return b"", refusal
        data = b"".join(parts)[:-3] if len(parts) != 1 else parts[0][:-3]
        if has_long_line(data, MAX_LINE - 2):
            return b"", LINE_TOO_LONG
        if data.startswith(b"."):
            data = data[1:]
        if has_dot_line(data):
            data = data.replace(b"\r\n.", b"\r\n")
        return data, None

    # -- EHLO/HELO -----------------------------------------------------------------------------

    async def smtp_EHLO(self, hostname: str) -> None:
        if hostname and not valid_helo(hostname):
            await self.push("501 5.5.4 Syntax: EHLO hostname (a domain name or address literal)")
            return
        # aiosmtpd pushes each line of the EHLO reply with a write and a drain of its own (a
        # system call each, seven of them); the reply goes out in one write instead.
        held: list[bytes] = []
        self._held = held
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._held = None
        if held and self._writer is not None:
            self._writer.write(b"".join(held))
            await self._writer.drain()

    async def push(self, status: AnyStr) -> None:
        if self._held is None:
            await super().push(status)
            return
        if isinstance(status, str):
            self._held.append(status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii"))
        else:
            self._held.append(bytes(status))
        self._held.append(b"\r\n")

    async def smtp_HELO(self, hostname: str) -> None:
        if hostname and not valid_helo(hostname):
            await self.push("501 5.5.4 Syntax: HELO hostname (a domain name or address literal)")
            return
        await super().smtp_HELO(hostname)

    async def smtp_VRFY(self, arg: str) -> None:
        # aiosmtpd's VRFY echoes its argument (undecodable bytes made it raise); a relay has
        # nothing to verify anyway (RFC 5321 §3.5.3 allows 252; Postfix's disable_vrfy_command).
        await self.push("502 5.5.1 VRFY command is disabled")

    # -- MAIL/RCPT: one strict parser ----------------------------------------------------------

    async def _parse_first(self, keyword: str, arg: str | None) -> bool:
        """Parse the path before aiosmtpd's own checks; push the reply and return False for an
        address that can never be valid. aiosmtpd's checks (HELO first, nested MAIL, SIZE, ...)
        then run as usual, and its `_getaddr` returns what was parsed here."""
        self._parsed = None
        assert self.session is not None and self.envelope is not None
        if arg is None or not self.session.host_name:
            return True  # aiosmtpd answers these
        text = self._strip_command_keyword(keyword, arg)
        if text is None:
            return True
        try:
            self._parsed = parse_path(
                text,
                "sender" if keyword == "FROM:" else "recipient",
                smtputf8=bool(self.envelope.smtp_utf8) and keyword == "TO:",
            )
        except AddressError as e:
            self.owner.metrics.rejected.labels("bad-address").inc()
            await self.push(e.reply)
            return False
        return True

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self._parse_first("FROM:", arg):
            await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self._parse_first("TO:", arg):
            await super().smtp_RCPT(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        parsed, self._parsed = self._parsed, None
        if parsed is None:  # VRFY, or a path _parse_first did not see: parse it here
            try:
                parsed = parse_path(arg, "recipient")
            except AddressError:
                return None, None
        # aiosmtpd takes an empty address for "no MAIL yet": the null path stays "<>".
        return parsed.address or "<>", " ".join(parsed.params)

    # -- AUTH, checked off the event loop ------------------------------------------------------

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd calls this synchronously; hand the credentials to _finish_auth instead.
        if not isinstance(auth_data, LoginPassword) or self.owner.handler.policy.users is None:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=False, handled=False, auth_data=_PendingAuth(auth_data))

    async def _finish_auth(self, result: AuthResult) -> AuthResult:
        pending = result.auth_data
        if not isinstance(pending, _PendingAuth):
            return result
        assert self.session is not None
        outcome = await self.owner.handler.check_login(_peer_ip(self.session), pending.login)
        if outcome == "ok":
            return AuthResult(success=True, auth_data=pending.login)
        if outcome == "locked":
            await self.push("421 4.7.0 Too many failed authentications, try again later")
            if self.transport is not None:
                self.transport.close()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_LOGIN(_, args))


SessionCounter = SubmissionSMTP  # the former name

# Longest line in DATA, CRLF included (RFC 5321 §4.5.3.1.6: 1000 octets). Not aiosmtpd's
# line_length_limit (1001, for command lines), which let a 999-octet text line through.
MAX_LINE = 1000
LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH_DATA = "552 Error: Too much mail data"
# DATA is read in chunks of at most this (each ends at a ".<CRLF>" or here).
DATA_CHUNK = 256 * 1024

_LEAN: dict[type, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = {}


def _lean_names(
    cls: type,
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """(command, smtp_ method name) and (mechanism, auth_ method name) of an SMTP class, found
    once: what aiosmtpd's SMTP.__init__ looks up by reflection for every connection."""
    names = _LEAN.get(cls)
    if names is None:
        smtp = tuple((m[5:], m) for m in dir(cls) if m.startswith("smtp_"))
        auth = tuple(
            (
                getattr(getattr(cls, m), "__auth_mechanism_name__", None)
                or m.replace("auth_", "").replace("__", "-"),
                m,
            )
            for m in dir(cls)
            if m.startswith("auth_")
        )
        names = _LEAN[cls] = (smtp, auth)
    return names


def handler_hooks(handler: object) -> dict[str, Callable[..., Any]]:
    """The handler's handle_* hooks by command, as aiosmtpd's SMTP.__init__ finds them."""
    return {m[7:]: getattr(handler, m) for m in dir(handler) if m.startswith("handle_")}


def _data_refusal(seen: bytes) -> str:
    """Over the size limit: 500 when a line already seen was too long (aiosmtpd says the first
    of the two it meets), else 552."""
    return LINE_TOO_LONG if has_long_line(seen, MAX_LINE - 2) else TOO_MUCH_DATA


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class SubmissionServer:
    def __init__(self, handler: SubmissionHandler, metrics: EngineMetrics) -> None:
        self.handler = handler
        self.metrics = metrics
        self.server: asyncio.Server | None = None
        self.listen: str = ""
        self.tls: ssl.SSLContext | None = None
        self.cfg: SubmissionConfig | None = None
        self.sessions = SessionLimiter(1000, 50)
        # Message bytes held right now by sessions neither authenticated nor trusted.
        self.untrusted_held = 0
        self._hooks: dict[str, Callable[..., Any]] = {}
        self._hooks_of: SubmissionHandler | None = None

    def _factory(self) -> SMTP:
        cfg = self.cfg
        assert cfg is not None
        if self._hooks_of is not self.handler:
            self._hooks, self._hooks_of = handler_hooks(self.handler), self.handler
        return SubmissionSMTP(
            self.handler,
            self,
            hostname=self.handler.policy.hostname,
            ident="mailfleet ESMTP",
            data_size_limit=cfg.max_message_size,
            tls_context=self.tls,
            timeout=cfg.command_timeout,
            hooks=self._hooks,
        )

    def prepare(self, cfg: SubmissionConfig) -> ssl.SSLContext | None:
        """The TLS context cfg asks for; raises (ssl.SSLError, OSError) when it cannot be built.
        Nothing changes until `start` is given the result."""
        if cfg.tls is None:
            return None
        return server_tls_context(str(cfg.tls.cert_file), str(cfg.tls.key_file))

    async def start(self, cfg: SubmissionConfig, tls: ssl.SSLContext | None = None) -> None:
        """Listen per cfg; on a reload with a new address, the old socket stops listening but its
        sessions carry on to the end. All or nothing: when the new socket cannot be opened,
        nothing changes (the caller prepared `tls` with `prepare` first)."""
        if cfg.tls is not None and tls is None:
            tls = self.prepare(cfg)
        if self.server is None or cfg.listen != self.listen:
            host, port = parse_hostport(cfg.listen)
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                self._factory,
                host=host,
                port=port,
                reuse_address=True,
                reuse_port=cfg.reuse_port or None,
                family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            )
            old, self.server, self.listen = self.server, server, cfg.listen
            if old is not None:
                old.close()
            log.info("submission listening", extra={"listen": cfg.listen})
        self.cfg, self.tls = cfg, tls
        self.sessions.configure(cfg.max_sessions, cfg.max_sessions_per_client)
        limits = cfg.auth_limits
        self.handler.auth_limiter.configure(
            limits.max_failures, limits.window, limits.lockout, limits.max_failures_per_client
        )

    def stop_listening(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port
