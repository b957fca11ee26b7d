"""The SMTP client that hands messages to MX hosts, with a connection pool.

`DeliveryClient.deliver()` makes one delivery attempt of one message to one domain: it tries the
destinations in order until one accepts a session, then reports every recipient's reply. It never
raises for anything the network or the peer does; failures come back as replies (synthetic 4xx
ones when no destination could be reached), so the queue runner has a single path.

Connections are pooled per (source IP, destination address, port) and reused for up to
`max_messages_per_connection` messages, or fewer when the provider's policy says so (its
`perIP.maxMessagesPerConnection`, passed to each `deliver()`), at most
`max_connections_per_host` at a time per destination. A pooled connection that went stale is
replaced before MAIL FROM, so a message is never sent twice because of the pool; a connection
lost after the message was sent is reported as a 4xx and the message may arrive twice, which is
what RFC 5321 §6.1 accepts over losing it.

aiosmtplib opens each session (connect, EHLO, STARTTLS); the transactions then run on
`smtpwire.Wire`: MAIL, every RCPT and DATA go in one write where the server offers PIPELINING
(RFC 2920), and the body is framed without rewriting it when its line ends are CRLF already.

The pure parts (reply parsing, what a message needs from the server, TLS policy) are functions at
the top of this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import aiosmtplib
from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.asyncio import Proxy

from mailfleet.mta.classify import QMAIL_ENHANCED
from mailfleet.mta.config import DeliveryConfig, parse_hostport
from mailfleet.mta.metrics import OUTBOUND_CONNECTIONS
from mailfleet.mta.routing import Destination
from mailfleet.mta.safefiles import TOKEN_MAX, read_file
from mailfleet.mta.smtpwire import Wire, WireLost, command, frame_body

TLSPolicy = Literal["none", "opportunistic", "required"]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


# --------------------------------------------------------------------------- pure parts
@dataclass
class RecipientReply:
    """What happened to one recipient in one attempt."""

    recipient: str
    code: int
    enhanced: str | None
    text: str

    @property
    def reply(self) -> str:
        """The reply as one line, e.g. "550 5.1.1 no such user" (for logs and DSNs)."""
        return " ".join(str(p) for p in (self.code, self.enhanced, self.text) if p)


@dataclass
class AttemptResult:
    """One delivery attempt of one message; `error` is set when no destination was reachable."""

    replies: list[RecipientReply]
    destination: Destination | None
    source_ip: str | None
    tls: bool
    error: str | None


def parse_reply(code: int, message: str) -> tuple[str | None, str]:
    """(enhanced status, text) of a reply; the RFC 3463 code is taken off every line's start.

    The enhanced code counts only when its class agrees with the reply code ("550 2.0.0" is
    nonsense and its "2.0.0" is kept as text). Multi-line replies become one line.
    """
    enhanced: str | None = None
    lines: list[str] = []
    for raw in message.splitlines() or [""]:
        line = raw.strip()
        m = _ENHANCED.match(line)
        if m and m.group(1) == str(code)[:1]:
            enhanced = enhanced or ".".join(m.groups())
            line = line[m.end() :].strip()
        if line:
            lines.append(line)
    if enhanced is None:
        # qmail-style: the enhanced code last, "sorry, no mailbox here by that name. (#5.1.1)"
        m = QMAIL_ENHANCED.search(message)
        if m and m.group(1) == str(code)[:1]:
            enhanced = ".".join(m.groups())
    return enhanced, " ".join(lines)


def make_reply(recipient: str, code: int, message: str) -> RecipientReply:
    enhanced, text = parse_reply(code, message)
    return RecipientReply(recipient, code, enhanced, text)


def synthetic_replies(
    recipients: Iterable[str], code: int, enhanced: str, text: str
) -> list[RecipientReply]:
    """The same local reply for every recipient (no server said it; we did)."""
    return [RecipientReply(r, code, enhanced, text) for r in recipients]


def needs_8bitmime(data: bytes) -> bool:
    return not data.isascii()


def needs_smtputf8(mail_from: str, recipients: Iterable[str], data: bytes) -> bool:
    """RFC 6531: UTF-8 in an address, or raw UTF-8 in the header section (RFC 6532)."""
    if not mail_from.isascii() or not all(r.isascii() for r in recipients):
        return True
    if data.isascii():  # a fast whole-message check first: most mail is ASCII throughout
        return False
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
    return not head.isascii()


def tls_policy(cfg: DeliveryConfig, domain: str | None, require_tls: bool = False) -> TLSPolicy:
    """What TLS this delivery needs: a per-message or per-domain requirement beats the default."""
    if require_tls or cfg.tls == "required":
        return "required"
    if domain is not None and domain.lower().rstrip(".") in {
        d.lower().rstrip(".") for d in cfg.require_tls_domains
    }:
        return "required"
    default: TLSPolicy = cfg.tls
    return default


def proxy_for(cfg: DeliveryConfig, source_ip: str | None) -> str | None:
    """The SOCKS5 proxy that sends from `source_ip`: its own, else the egress default when the
    egress mode is socks5; None means bind the address locally."""
    for ip in cfg.source_ips:
        if str(ip.address) == source_ip and ip.proxy:
            return ip.proxy
    return cfg.egress.proxy if cfg.egress.mode == "socks5" else None


@dataclass(frozen=True)
class ProxyAuth:
    """The RFC 1929 credentials presented to every SOCKS5 proxy (delivery.egress.authFile)."""

    username: str
    password: str = field(repr=False)  # never in a log or a traceback


AUTH_FILE_FIELD = "delivery.egress.authFile"


def parse_proxy_auth(text: bytes, source: str = AUTH_FILE_FIELD) -> ProxyAuth:
    """ProxyAuth from one line "username:password" (the password may hold ':'; surrounding
    whitespace and the final newline are ignored). ValueError names `source`, never the
    password."""
    try:
        line = text.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{source}: not ASCII text") from None
    username, colon, password = line.partition(":")
    if not colon or not username or not password:
        raise ValueError(f"{source}: expected one line username:password")
    if not all(0x21 <= ord(c) <= 0x7E for c in line):
        raise ValueError(f"{source}: expected one line username:password of printable ASCII")
    if len(username) > 255 or len(password) > 255:
        raise ValueError(f"{source}: user name and password are at most 255 bytes each")
    return ProxyAuth(username, password)


def read_proxy_auth(path: Path) -> ProxyAuth:
    """delivery.egress.authFile's credentials; ValueError (or safefiles.UnsafeFile) names the
    field."""
    try:
        raw = read_file(path, AUTH_FILE_FIELD, TOKEN_MAX)
    except OSError as e:
        raise ValueError(f"{AUTH_FILE_FIELD} {path}: cannot read it: {e.strerror}") from None
    return parse_proxy_auth(raw, f"{AUTH_FILE_FIELD} {path}")


async def _socks5_connect(
    proxy: str, dest: Destination, connect_timeout: float, auth: ProxyAuth | None = None
) -> socket.socket:
    host, port = parse_hostport(proxy.removeprefix("socks5://"))
    # The constructor, not from_url: a user name "namespace/pool" holds a '/'.
    client = Proxy(
        ProxyType.SOCKS5,
        host,
        port,
        username=auth.username if auth else None,
        password=auth.password if auth else None,
    )
    try:
        sock: socket.socket = await client.connect(dest.address, dest.port, timeout=connect_timeout)
    except ProxyError as e:
        # The proxy answered and said no: bad credentials, an address or port not this pool's.
        code = f" (reply {e.error_code:#04x})" if e.error_code is not None else ""
        raise OSError(
            f"through the SOCKS5 proxy {proxy}: refused by the proxy: {e}{code}"
        ) from None
    except (ProxyConnectionError, ProxyTimeoutError, OSError) as e:
        raise OSError(f"through the SOCKS5 proxy {proxy}: {e}") from None
    return sock


def connection_uses(engine_cap: int, provider_cap: int | None) -> int:
    """Messages one connection may carry: the engine's delivery.maxMessagesPerConnection, or
    the provider policy's perIP.maxMessagesPerConnection when that is lower."""
    return engine_cap if provider_cap is None else max(1, min(engine_cap, provider_cap))


def same_family(source_ip: str | None, address: str) -> bool:
    """Whether a socket bound to `source_ip` can reach `address` (IPv4 cannot reach IPv6)."""
    if source_ip is None:
        return True
    try:
        return ipaddress.ip_address(source_ip).version == ipaddress.ip_address(address).version
    except ValueError:
        return True


def _domain_of(recipients: list[str]) -> str | None:
    for r in recipients:
        if "@" in r:
            return r.rpartition("@")[2].lower()
    return None


def _opportunistic_context() -> ssl.SSLContext:
    # Opportunistic and "required" TLS between MTAs encrypt without authenticating (RFC 7435):
    # MX certificates are too often self-signed or for another name to refuse them.
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------- the pool
PoolKey = tuple[str | None, str, int]  # (source IP, destination address, port)
HostKey = tuple[str, int]  # (destination address, port)


@dataclass
class _Conn:
    key: PoolKey
    helo: str
    dest: Destination
    wire: Wire
    extensions: frozenset[str]  # EHLO keywords, lower case
    tls: bool
    uses: int = 0  # transactions started, successful or not
    # Transactions it may carry: the lower of the engine's cap and the last sender's policy.
    max_uses: int = 1
    # A transaction may still be open on the server (MAIL accepted, DATA not answered).
    dirty: bool = False
    closed: bool = False
    idle_timer: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        return self.wire.alive

    def supports(self, extension: str) -> bool:
        return extension in self.extensions


@dataclass
class _Host:
    open: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class _SessionFailure(Exception):
    """No usable session with one destination; the next one may do better."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @classmethod
    def from_server(cls, code: int, message: str, when: str) -> _SessionFailure:
        """The server's own refusal, kept as it said it (its enhanced code and text first), so
        reply rules such as ^421 4.7.28 see what the provider answered. Anything but a 421 is
        taken as temporary here: the next MX, or a later try, may do better."""
        enhanced, text = parse_reply(code, message)
        return cls(
            421 if code == 421 else 451,
            enhanced or ("4.4.2" if code == 421 else "4.3.0"),
            f"{text} ({when}: {code})",
        )


class _Stale(Exception):
    """A pooled connection died before the transaction started: replace it and go again."""


class DeliveryClient:
    """Delivers messages over pooled SMTP connections; one per engine."""

    def __init__(
        self, cfg: DeliveryConfig, hostname: str, proxy_auth: ProxyAuth | None = None
    ) -> None:
        self._cfg = cfg
        # The engine passes what it read with the config; read here for anyone else.
        if proxy_auth is None and cfg.egress.auth_file is not None:
            proxy_auth = read_proxy_auth(cfg.egress.auth_file)
        self.proxy_auth = proxy_auth
        self._hostname = hostname
        self._idle: dict[PoolKey, list[_Conn]] = {}
        self._hosts: dict[HostKey, _Host] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._tls_context = _opportunistic_context()
        self._closed = False

    @property
    def config(self) -> DeliveryConfig:
        return self._cfg

    def update_config(self, cfg: DeliveryConfig) -> None:
        """New limits apply from the next checkout; open connections live out their use."""
        self._cfg = cfg
        for host in self._hosts.values():
            self._wake(host)

    def stats(self) -> dict[str, dict[str, int]]:
        """Open and idle connections per destination "address:port" (for /v1/status)."""
        out: dict[str, dict[str, int]] = {}
        for (address, port), host in sorted(self._hosts.items()):
            if host.open == 0:
                continue
            name = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            idle = sum(
                len(conns) for (_, a, p), conns in self._idle.items() if (a, p) == (address, port)
            )
            out[name] = {"open": host.open, "idle": idle}
        return out

    async def close(self) -> None:
        """QUIT every idle connection; connections in use close when their delivery ends."""
        self._closed = True
        for conns in list(self._idle.values()):
            for conn in list(conns):
                self._discard(conn, polite=True)
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    # -- one attempt -----------------------------------------------------------------------
    async def deliver(
        self,
        *,
        source_ip: str | None,
        helo: str | None,
        destinations: list[Destination],
        mail_from: str,
        recipients: list[str],
        data: bytes,
        require_tls: bool = False,
        domain: str | None = None,
        crlf: bool = False,
        max_messages: int | None = None,
    ) -> AttemptResult:
        """Try `destinations` in order; per-recipient replies from the first that takes a session.

        `domain` (default: the first recipient's) selects per-domain TLS requirements. `crlf`:
        every line end of `data` is known to be CRLF (it is not scanned again to frame it).
        `max_messages`: the provider's messages per connection (None: only the engine's cap);
        a pooled connection that has carried that many is closed rather than reused.
        """
        helo = helo or self._hostname
        limit = connection_uses(self._cfg.max_messages_per_connection, max_messages)
        policy = tls_policy(self._cfg, domain or _domain_of(recipients), require_tls)
        if not data.endswith(b"\n"):
            data += b"\r\n"
        failures: list[tuple[Destination, _SessionFailure]] = []
        candidates = [d for d in destinations if same_family(source_ip, d.address)]
        for dest in candidates:
            # A stale pooled connection gets one fresh replacement to the same destination.
            for reuse in (True, False):
                try:
                    conn = await self._checkout(
                        source_ip, helo, dest, policy, reuse=reuse, limit=limit
                    )
                except _SessionFailure as f:
                    failures.append((dest, f))
                    break
                conn.max_uses = limit
                try:
                    replies = await self._transaction(conn, mail_from, recipients, data, crlf)
                except _Stale:
                    continue
                except _SessionFailure as f:
                    failures.append((dest, f))
                    break
                except Exception as e:  # a bug or an odd peer must not kill the queue runner
                    self._discard(conn)
                    text = f"local error talking to {_name(dest)}: {type(e).__name__}: {e}"
                    return AttemptResult(
                        synthetic_replies(recipients, 451, "4.3.0", text),
                        dest,
                        source_ip,
                        conn.tls,
                        text,
                    )
                return AttemptResult(replies, dest, source_ip, conn.tls, None)
        if not candidates:
            family = "IPv4" if source_ip and ":" not in source_ip else "IPv6"
            text = f"no destination reachable from source address {source_ip} ({family})"
            if not destinations:
                text = "no destination to try"
            return AttemptResult(
                synthetic_replies(recipients, 451, "4.4.4", text), None, source_ip, False, text
            )
        # The first host's answer leads, as the server said it; the host names follow.
        error = "; ".join(f"{f.text} [{_name(d)}]" for d, f in failures)
        first = failures[0][1]
        return AttemptResult(
            synthetic_replies(recipients, first.code, first.enhanced, error),
            None,
            source_ip,
            False,
            error,
        )

    async def _transaction(
        self, conn: _Conn, mail_from: str, recipients: list[str], data: bytes, crlf: bool
    ) -> list[RecipientReply]:
        wire = conn.wire
        timeout = float(self._cfg.command_timeout)
        conn.uses += 1
        reused = conn.uses > 1
        utf8 = needs_smtputf8(mail_from, recipients, data)
        encoding = "utf-8" if utf8 else "ascii"
        if utf8 and not conn.supports("smtputf8"):
            self._release(conn)
            return synthetic_replies(
                recipients,
                550,
                "5.6.7",
                f"{_name(conn.dest)} does not support SMTPUTF8, which this message needs",
            )
        options: list[str] = []
        if conn.supports("size"):
            options.append(f"SIZE={len(data)}")
        if needs_8bitmime(data) and conn.supports("8bitmime"):
            options.append("BODY=8BITMIME")
        if utf8:
            options.append("SMTPUTF8")

        # A transaction that ended with a reply to its data needs no RSET; one that did not (no
        # recipient accepted, DATA refused) is reset first.
        reset = reused and conn.dirty
        commands = [b"RSET\r\n"] if reset else []
        commands.append(command("MAIL FROM", mail_from, options, encoding))
        commands.extend(command("RCPT TO", r, [], encoding) for r in recipients)
        commands.append(b"DATA\r\n")
        group = _Group(wire, commands, conn.supports("pipelining"), timeout)

        # Until MAIL FROM is accepted no data has been sent: a pooled connection that fails here
        # is replaced, a fresh one counts as that destination failing.
        try:
            if reset:
                code, text = await group.next_reply()
                if code // 100 != 2:
                    raise WireLost(f"RSET answered {code} {text}")
                conn.dirty = False
            code, text = await group.next_reply()
        except WireLost as e:
            self._discard(conn)
            if reused:
                raise _Stale from None
            raise _SessionFailure(451, "4.4.2", f"lost connection before MAIL: {e}") from None
        if code // 100 != 2:
            if code == 421 or not conn.alive:
                self._discard(conn)
                if reused:
                    raise _Stale from None
                raise _SessionFailure.from_server(code, text, "at MAIL FROM")
            await self._settle(conn, group)
            return [make_reply(r, code, text) for r in recipients]

        conn.dirty = True
        replies: dict[str, RecipientReply] = {}
        for rcpt in recipients:
            try:
                code, text = await group.next_reply()
            except WireLost:
                break
            replies[rcpt] = make_reply(rcpt, code, text)
            if code == 421:
                break
        if not conn.alive or len(replies) < len(recipients) or code == 421:
            self._discard(conn)
            lost = f"lost connection with {_name(conn.dest)} during RCPT"
            return [replies.get(r) or RecipientReply(r, 451, "4.4.2", lost) for r in recipients]

        accepted = [r for r in recipients if 200 <= replies[r].code < 300]
        if not accepted:
            await self._settle(conn, group)
            return [replies[r] for r in recipients]

        try:
            code, text = await group.next_reply()
            if code == 354:
                wire.send(frame_body(data, crlf=crlf))
                code, text = await wire.reply(timeout)
                # The reply to the data ends the transaction whatever it says (RFC 5321 §4.1.1.4).
                conn.dirty = False
            final = (code, text)
        except WireLost as e:
            # The server may have the message already; deferring risks a duplicate, not a loss.
            final = (451, f"4.4.2 lost connection with {_name(conn.dest)} after DATA: {e}")
        for r in accepted:
            replies[r] = make_reply(r, final[0], final[1])
        if conn.alive and final[0] != 421:
            self._release(conn)
        else:
            self._discard(conn)
        return [replies[r] for r in recipients]

    async def _settle(self, conn: _Conn, group: _Group) -> None:
        """The transaction stops short of the data: read the replies still owed for commands
        already written (a pipelined group), so the next transaction reads its own replies, then
        pool the connection; one that cannot be brought into step is closed."""
        try:
            while group.owed:
                code, _ = await group.next_reply()
                if code == 354 and not group.owed:
                    # DATA accepted with no recipient (RFC 2920 §3.1 says it must not be): an
                    # empty message ends it, and with no recipient it goes nowhere.
                    conn.wire.send([b".\r\n"])
                    await conn.wire.reply(group.timeout)
        except WireLost:
            self._discard(conn)
            return
        if conn.alive:
            self._release(conn)
        else:
            self._discard(conn)

    # -- pool ------------------------------------------------------------------------------
    async def _checkout(
        self,
        source_ip: str | None,
        helo: str,
        dest: Destination,
        policy: TLSPolicy,
        *,
        reuse: bool,
        limit: int,
    ) -> _Conn:
        key: PoolKey = (source_ip, dest.address, dest.port)
        host_key: HostKey = (dest.address, dest.port)
        while True:
            if reuse:
                conn = self._take_idle(key, helo, policy, limit)
                if conn is not None:
                    return conn
            # Looked up after _take_idle: closing the last connection drops the entry.
            host = self._hosts.setdefault(host_key, _Host())
            if host.open < self._cfg.max_connections_per_host:
                host.open += 1
                break
            victim = self._idle_of_host(dest.address, dest.port)
            if victim is not None:
                # Another source IP's idle connection gives up its slot to someone with work.
                self._discard(victim, polite=True)
                host = self._hosts.setdefault(host_key, _Host())
                host.open += 1
                break
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            host.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):
                    host.waiters.remove(waiter)
                if waiter.done() and not waiter.cancelled():
                    self._wake(host)
                raise
        try:
            return await self._connect(key, helo, dest, policy)
        except BaseException:
            self._free_slot(host_key)
            raise

    def _take_idle(self, key: PoolKey, helo: str, policy: TLSPolicy, limit: int) -> _Conn | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if (
                conn.alive
                and conn.wire.quiet
                and conn.helo == helo
                and (conn.tls or policy != "required")
                # Another provider's mail may have left it past this provider's share.
                and conn.uses < limit
            ):
                return conn
            self._close_now(conn)
        return None

    def _idle_of_host(self, address: str, port: int) -> _Conn | None:
        for (_, a, p), conns in self._idle.items():
            if (a, p) == (address, port) and conns:
                return conns[0]
        return None

    def _release(self, conn: _Conn) -> None:
        """Back to the pool, or closed if it has done its share or the client is closing."""
        if (
            self._closed
            or not conn.alive
            or conn.uses >= min(conn.max_uses, self._cfg.max_messages_per_connection)
        ):
            self._discard(conn, polite=True)
            return
        self._idle.setdefault(conn.key, []).append(conn)
        conn.idle_timer = asyncio.get_running_loop().call_later(
            float(self._cfg.idle_timeout), self._expire, conn
        )
        self._wake(self._hosts[(conn.key[1], conn.key[2])])

    def _expire(self, conn: _Conn) -> None:
        conn.idle_timer = None
        self._discard(conn, polite=True)

    def _discard(self, conn: _Conn, *, polite: bool = False) -> None:
        """Take a connection out of the pool for good and free its slot."""
        if conn.closed:
            return
        conn.closed = True
        conns = self._idle.get(conn.key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._idle[conn.key]
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
        self._free_slot((conn.key[1], conn.key[2]))
        if polite and conn.alive:
            task = asyncio.get_running_loop().create_task(self._quit(conn))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            conn.wire.close()
            OUTBOUND_CONNECTIONS.closed()

    def _close_now(self, conn: _Conn) -> None:
        """Like _discard for a connection already taken out of the idle list."""
        self._discard(conn)

    async def _quit(self, conn: _Conn) -> None:
        try:
            conn.wire.send([b"QUIT\r\n"])
            await conn.wire.reply(5.0)
        except WireLost:
            pass
        finally:
            conn.wire.close()
            OUTBOUND_CONNECTIONS.closed()

    def _free_slot(self, host_key: HostKey) -> None:
        host = self._hosts[host_key]
        host.open -= 1
        self._wake(host)
        if host.open == 0 and not host.waiters:
            del self._hosts[host_key]

    @staticmethod
    def _wake(host: _Host) -> None:
        while host.waiters:
            waiter = host.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- session setup ---------------------------------------------------------------------
    async def _connect(
        self, key: PoolKey, helo: str, dest: Destination, policy: TLSPolicy
    ) -> _Conn:
        try:
            return await self._open_session(key, helo, dest, policy, try_tls=policy != "none")
        except _TLSHandshakeFailed as e:
            if policy == "required":
                raise _SessionFailure(451, "4.7.5", f"TLS handshake failed: {e}") from None
        # Opportunistic TLS that fails in the handshake falls back to plain text, as
        # Postfix does: encryption was never promised to anyone.
        return await self._open_session(key, helo, dest, policy, try_tls=False)

    async def _open_session(
        self, key: PoolKey, helo: str, dest: Destination, policy: TLSPolicy, *, try_tls: bool
    ) -> _Conn:
        source_ip = key[0]
        proxy = proxy_for(self._cfg, source_ip)
        smtp = aiosmtplib.SMTP(
            hostname=dest.address,
            port=dest.port if proxy is None else None,  # a proxied socket is already connected
            local_hostname=helo,
            source_address=(source_ip, 0) if source_ip and proxy is None else None,
            timeout=float(self._cfg.command_timeout),
            use_tls=False,
            start_tls=False,
            validate_certs=False,
        )
        try:
            if proxy is not None:
                sock = await _socks5_connect(
                    proxy, dest, float(self._cfg.connect_timeout), self.proxy_auth
                )
                await smtp.connect(sock=sock, timeout=float(self._cfg.connect_timeout))
            else:
                await smtp.connect(timeout=float(self._cfg.connect_timeout))
        except aiosmtplib.SMTPConnectResponseError as e:
            smtp.close()
            raise _SessionFailure.from_server(e.code, e.message, "in the greeting") from None
        except aiosmtplib.SMTPConnectTimeoutError:
            smtp.close()
            raise _SessionFailure(451, "4.4.1", "connection timed out") from None
        except (aiosmtplib.SMTPException, OSError) as e:
            smtp.close()
            raise _SessionFailure(451, "4.4.1", _connect_error_text(e, source_ip)) from None

        try:
            await self._hello(smtp)
            tls = False
            if try_tls and smtp.supports_extension("starttls"):
                try:
                    await smtp.starttls(
                        tls_context=self._tls_context,
                        server_hostname=None if _is_ip(dest.hostname) else dest.hostname,
                    )
                except aiosmtplib.SMTPResponseException as e:
                    if policy == "required" or not smtp.is_connected:
                        raise _SessionFailure(
                            451, "4.7.4", f"STARTTLS refused: {e.code} {e.message}"
                        ) from None
                    # A server that offers STARTTLS and then refuses it: go on in plain text.
                except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as e:
                    raise _TLSHandshakeFailed(str(e) or type(e).__name__) from None
                else:
                    tls = True
                    await self._hello(smtp)
            if policy == "required" and not tls:
                raise _SessionFailure(
                    451, "4.7.4", "TLS is required, but was not offered by the host"
                )
        except (_SessionFailure, _TLSHandshakeFailed):
            smtp.close()
            raise
        except aiosmtplib.SMTPResponseException as e:
            smtp.close()
            raise _SessionFailure.from_server(e.code, e.message, "in reply to EHLO/HELO") from e
        except (aiosmtplib.SMTPException, OSError) as e:
            smtp.close()
            raise _SessionFailure(451, "4.4.2", f"lost connection during setup: {e}") from None
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        transport = cast(asyncio.Transport | None, smtp.transport)
        if transport is None or transport.is_closing():
            smtp.close()
            raise _SessionFailure(451, "4.4.2", "lost connection during setup")
        conn = _Conn(
            key=key,
            helo=helo,
            dest=dest,
            wire=Wire(transport),
            extensions=frozenset(smtp.esmtp_extensions),
            tls=tls,
        )
        OUTBOUND_CONNECTIONS.opened()
        return conn

    @staticmethod
    async def _hello(smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not smtp.is_connected:
                raise
            await smtp.helo()


class _TLSHandshakeFailed(Exception):
    pass


class _Group:
    """A transaction's commands and the replies owed for them: with PIPELINING every command
    up to DATA goes in one write (RFC 2920 puts DATA last in a group), without it each waits
    for the previous reply."""

    def __init__(self, wire: Wire, commands: list[bytes], pipelining: bool, timeout: float) -> None:
        self.wire = wire
        self.commands = commands
        self.pipelining = pipelining
        self.timeout = timeout
        self.sent = 0
        self.read = 0

    @property
    def owed(self) -> int:
        return self.sent - self.read

    async def next_reply(self) -> tuple[int, str]:
        if self.read == self.sent:
            end = len(self.commands) if self.pipelining else self.sent + 1
            self.wire.send(self.commands[self.sent : end])
            self.sent = end
        self.read += 1
        return await self.wire.reply(self.timeout)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _name(dest: Destination) -> str:
    if dest.hostname == dest.address:
        return f"[{dest.address}]:{dest.port}"
    return f"{dest.hostname}[{dest.address}]:{dest.port}"


def _connect_error_text(e: BaseException, source_ip: str | None) -> str:
    cause = e.__cause__ or e
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, OSError) and cause.errno == 99 and source_ip:
        return f"cannot bind source address {source_ip}"
    return f"cannot connect: {cause}"


__all__ = [
    "AttemptResult",
    "DeliveryClient",
    "ProxyAuth",
    "RecipientReply",
    "connection_uses",
    "make_reply",
    "needs_8bitmime",
    "needs_smtputf8",
    "parse_reply",
    "same_family",
    "synthetic_replies",
    "tls_policy",
]
