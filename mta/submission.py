"""The submission listener: ESMTP (aiosmtpd) that accepts mail only from trusted networks or
authenticated users, and says 250 only once the message is in the spool."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate, make_msgid
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailfleet.mta.auth import UserDB
from mailfleet.mta.config import SubmissionConfig, parse_hostport
from mailfleet.mta.metrics import EngineMetrics
from mailfleet.mta.spool import new_message_id

DISK_FULL = "452 4.3.1 Insufficient system storage, try again later"

log = logging.getLogger("mailfleet.mta.submission")

# Accepts a message (queue id, sender, recipients, raw bytes, client) once it is durable; raises to
# refuse it.
Ingest = Callable[[str, str, list[str], bytes, str], Awaitable[None]]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# Looks up a recipient on the suppression list: None, or why it is suppressed.
Suppressed = Callable[[str], Awaitable[str | None]]
# Takes a message to a feedback address (an ARF report); returns the SMTP reply.
Feedback = Callable[[bytes, str], Awaitable[str]]


@dataclass
class SubmissionPolicy:
    """What the listener enforces; swapped as a whole on config reload."""

    hostname: str
    trusted: list[Network]
    users: UserDB | None
    max_recipients: int
    feedback_addresses: frozenset[str] = frozenset()
    drop_suppressed: bool = False

    def is_trusted(self, peer_ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(peer_ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.trusted)


def _peer_ip(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


def _has_header(head: bytes, name: bytes) -> bool:
    prefix = name.lower() + b":"
    return any(line.lower().startswith(prefix) for line in head.split(b"\n"))


def trace_headers(
    data: bytes, *, hostname: str, helo: str, peer_ip: str, queue_id: str, tls: bool, user: str
) -> bytes:
    """A Received line (RFC 5321 §4.4), plus Date and Message-ID when the submitter left them out
    (RFC 6409 §8.3, as an MSA may)."""
    head, _, _ = data.partition(b"\r\n\r\n")
    with_ = "ESMTPSA" if user else ("ESMTPS" if tls else "ESMTP")
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
        # True while the spool's disk is below its reserve: new mail is refused with 452 4.3.1.
        self.low_on_disk: Callable[[], bool] = lambda: False

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
        # aiosmtpd takes an empty mail_from for "no MAIL yet", so the null path stays "<>" here.
        envelope.mail_from = address or "<>"
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        policy = self.policy
        if address.lower() in policy.feedback_addresses and self.feedback is not None:
            # Feedback loops report from the providers' networks: a local address, not relaying.
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Ok (feedback)"
        if not (session.authenticated or policy.is_trusted(_peer_ip(session))):
            if policy.users is not None:
                return self._refuse("auth-required", "530 5.7.0 Authentication required")
            return self._refuse("relay-denied", "554 5.7.1 Relay access denied")
        if len(envelope.rcpt_tos) >= policy.max_recipients:
            return self._refuse("too-many-recipients", "452 4.5.3 Too many recipients")
        if "@" not in address:
            return self._refuse("bad-recipient", "501 5.1.3 Recipient address must be user@domain")
        if self.suppressed is not None:
            why = await self.suppressed(address)
            if why is not None:
                if not policy.drop_suppressed:
                    self.metrics.suppressed.labels("rejected").inc()
                    return self._refuse(
                        "suppressed",
                        f"550 5.7.1 <{address}>: recipient is on the suppression list ({why})",
                    )
                dropped = getattr(envelope, "dropped", [])
                dropped.append(address)
                envelope.dropped = dropped  # type: ignore[attr-defined]
                return "250 2.1.5 Ok"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not self.accepting:
            return self._refuse("draining", "421 4.3.2 Service shutting down, try another server")
        if self.low_on_disk():
            return self._refuse("disk-full", DISK_FULL)
        data = envelope.original_content or b""
        assert isinstance(data, bytes)
        if b"\r\n" not in data and b"\n" in data:
            data = data.replace(b"\n", b"\r\n")
        user = ""
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            user = session.auth_data.login.decode(errors="replace")
        queue_id = new_message_id()
        peer_ip = _peer_ip(session)
        rcpts = list(envelope.rcpt_tos)
        feedback = [r for r in rcpts if r.lower() in self.policy.feedback_addresses]
        if feedback and self.feedback is not None:
            if len(feedback) == len(rcpts):
                return await self.feedback(data, peer_ip)
            rcpts = [r for r in rcpts if r not in feedback]
            await self.feedback(data, peer_ip)
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
            )
        except Exception:
            log.exception("could not queue a message")
            return self._refuse("spool-error", "451 4.3.0 Could not queue the message, try again")
        self.metrics.received.inc()
        return f"250 2.0.0 Ok: queued as {queue_id}"

    # aiosmtpd calls this synchronously for AUTH PLAIN/LOGIN, only after STARTTLS
    # (auth_require_tls): a bcrypt check per new user/password pair, then a cached digest.
    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        users = self.policy.users
        if users is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode(errors="replace")
        if users.check(login, auth_data.password):
            return AuthResult(success=True, auth_data=auth_data)
        self.metrics.rejected.labels("auth-failed").inc()
        log.warning("authentication failed", extra={"user": login, "peer": _peer_ip(session)})
        return AuthResult(success=False, handled=False)


_SIMPLE_PATH = re.compile(r"\s*<([^<>\s\"\\()\[\],;:]*)>(.*)", re.DOTALL)


class SessionCounter(SMTP):
    """aiosmtpd's SMTP with a session gauge, and a fast path for plain addresses."""

    metrics: EngineMetrics | None = None

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd parses every MAIL/RCPT argument with the email header parser (and defines a
        # class per call); "<local@domain> PARAMS" needs none of that. Quoted local parts and
        # other rare forms still go to the full parser.
        m = _SIMPLE_PATH.match(arg)
        if m is None:
            return super()._getaddr(arg)  # type: ignore[no-any-return]
        addr = m.group(1) or "<>"  # as aiosmtpd gives the null path
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, m.group(2).lstrip()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.metrics is not None:
            self.metrics.sessions.inc()
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.metrics is not None:
            self.metrics.sessions.dec()
        super().connection_lost(exc)


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

    def _factory(self) -> SMTP:
        cfg = self.cfg
        assert cfg is not None
        smtp = SessionCounter(
            self.handler,
            hostname=self.handler.policy.hostname,
            ident="mailfleet ESMTP",
            data_size_limit=cfg.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=self.tls,
            require_starttls=False,
            auth_require_tls=True,
            authenticator=self.handler.authenticate,
            timeout=cfg.data_timeout,
        )
        smtp.metrics = self.metrics
        return smtp

    async def start(self, cfg: SubmissionConfig) -> None:
        """Listen per cfg; on a reload with a new address, the old socket stops listening but its
        sessions carry on to the end."""
        self.cfg = cfg
        self.tls = (
            server_tls_context(str(cfg.tls.cert_file), str(cfg.tls.key_file)) if cfg.tls else None
        )
        if self.server is not None and cfg.listen == self.listen:
            return
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

    def stop_listening(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port
