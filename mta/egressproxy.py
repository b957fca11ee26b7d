"""The egress proxy (`mailfleet egress-proxy --config FILE`): a SOCKS5 server on a node's host
network that sends a pool's mail from the node's addresses.

It listens on `port` at each address of each client (pool), and a connection reached on address
X leaves from X: the outbound socket is bound to (X, 0) before it connects. So a proxy can only
send from addresses its node holds, and the source address needs no protocol extension (as
KumoMTA's kumo-proxy does it). Each client authenticates with RFC 1929 username/password and may
send only from its own addresses, to its allowed ports, and only to IP addresses (no DNS here).

Relays are plain asyncio protocols coupled back to back (no streams, no copies beyond the
kernel's): what one side reads is written to the other, reading pauses while the other side's
write buffer is full, an EOF is passed on as a half-close, and a relay silent both ways for
idleTimeout is cut.

Around it: listeners come and go with the addresses on the host (checked every few seconds: an
address that cannot be bound is missing, /readyz says which); the config file is polled and
reloaded on SIGHUP (a bad one is logged and the running one kept); SIGTERM stops listening,
waits drainTimeout for relays to end, and exits 0. /metrics, /livez and /readyz on adminListen.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from mailfleet.mta import socks5
from mailfleet.mta.config import (
    ConfigError,
    EgressClient,
    EgressProxyConfig,
    config_digest,
    parse_egress_proxy_config,
    parse_hostport,
    read_config_text,
)
from mailfleet.mta.socks5 import IPAddress, Reply

log = logging.getLogger("mailfleet.mta.egressproxy")

# How often the config file is looked at and every address checked on the host.
CONFIG_POLL_INTERVAL = 2.0
ADDRESS_CHECK_INTERVAL = 2.0
# A client has this long from connecting to sending its CONNECT request.
HANDSHAKE_TIMEOUT = 10.0
# Connections accepted beyond maxConnections are still answered (0x01) up to this many times
# it; past that they are closed unanswered, so a flood cannot take every descriptor.
HARD_LIMIT_FACTOR = 2
LISTEN_BACKLOG = 1024
# Linux: bind() picks no port until connect(), so many relays from one address are not limited
# to the ephemeral ports a bind alone could reserve (the 4-tuple is what must be unique).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

RESULTS = (
    "relayed",
    "auth_failed",
    "not_allowed",
    "refused",
    "unreachable",
    "timeout",
    "limit",
    "bad_request",
)
# The client label of a connection that never named a configured client.
NO_CLIENT = "-"


# --------------------------------------------------------------------------- metrics
class _ByteCounts(Collector):
    """mailfleet_egress_bytes_total from plain integers: a relay adds to them on every read,
    which a prometheus Counter (a lock per increment) would make costly."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "mailfleet_egress_bytes",
            "Bytes relayed, by source address and direction (out: to the destination, in: from it)",
            labels=["source", "direction"],
        )
        for (source, direction), n in sorted(self.counts.items()):
            family.add_metric([source, direction], float(n))
        yield family


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.connections = Counter(
            "mailfleet_egress_connections",
            "Connections to the egress proxy, by the address reached (source), the client and"
            " how each ended up: relayed, auth_failed, not_allowed, refused (by the destination),"
            " unreachable, timeout (connecting), limit, bad_request",
            ["source", "client", "result"],
            registry=r,
        )
        self.active = Gauge(
            "mailfleet_egress_active_connections",
            "Relays open now, by source address",
            ["source"],
            registry=r,
        )
        self.present = Gauge(
            "mailfleet_egress_address_present",
            "1 while the source address is on this host and listened on, else 0",
            ["source"],
            registry=r,
        )
        self.reloads = Counter(
            "mailfleet_egress_config_reloads",
            "Config reloads, by result (ok, failed)",
            ["result"],
            registry=r,
        )
        self.bytes = _ByteCounts()
        r.register(self.bytes)

    def add_bytes(self, source: str, direction: str, n: int) -> None:
        key = (source, direction)
        self.bytes.counts[key] = self.bytes.counts.get(key, 0) + n


# --------------------------------------------------------------------------- one connection
class _Inbound(asyncio.Protocol):
    """A client's connection: the SOCKS5 handshake, then one side of the relay."""

    def __init__(self, proxy: EgressProxy, reached: IPAddress) -> None:
        self.proxy = proxy
        self.reached = reached
        self.source = str(reached)
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.state = "greeting"  # greeting, auth, request, connecting, relay, closed
        self.client: EgressClient | None = None
        self.over_limit = False
        self.counted_client = False  # holds one of its client's connections
        self.outbound: _Outbound | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last = 0.0
        self.eof_in = False  # the client sent EOF (passed on to the destination)
        self.eof_out = False  # the destination sent EOF (passed on to the client)
        self.connect_task: asyncio.Task[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        proxy = self.proxy
        proxy.inbound += 1
        limit = proxy.cfg.max_connections
        if proxy.inbound > limit * HARD_LIMIT_FACTOR:
            self._refused_unanswered("limit", "connections past twice maxConnections")
            return
        # Answered at CONNECT with 0x01, so the engine reads a reply rather than a reset.
        self.over_limit = proxy.inbound > limit
        self.timer = proxy.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self.state == "relay":
            self.last = self.proxy.loop.time()
            self.proxy.metrics.add_bytes(self.source, "out", len(data))
            out = self.outbound.transport if self.outbound is not None else None
            if out is not None and not out.is_closing():
                out.write(data)
            return
        self.buf += data
        try:
            self._advance()
        except socks5.ProtocolError as e:
            self._fail(e.reply, "bad_request", str(e))

    def eof_received(self) -> bool | None:
        if self.state != "relay":
            self._close()
            return None
        self.eof_in = True
        out = self.outbound.transport if self.outbound else None
        if out is not None and out.can_write_eof():
            out.write_eof()
        if self.eof_out:
            self._end()
        return True  # keep writing what the destination still sends (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def pause_writing(self) -> None:
        # The client reads slower than the destination sends: stop reading the destination.
        if self.outbound is not None and self.outbound.transport is not None:
            self.outbound.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.outbound is not None and self.outbound.transport is not None:
            self.outbound.transport.resume_reading()

    # -- the handshake ---------------------------------------------------------------------
    def _advance(self) -> None:
        assert self.transport is not None
        while self.state in ("greeting", "auth", "request") and self.buf:
            if self.state == "greeting":
                got = socks5.parse_greeting(self.buf)
                if got is None:
                    return
                greeting, used = got
                self.buf = self.buf[used:]
                method = socks5.choose_method(greeting)
                self.transport.write(socks5.encode_method(method))
                if method == socks5.METHOD_NONE_ACCEPTABLE:
                    # No username/password offered: nothing anonymous is served.
                    self._count("auth_failed", NO_CLIENT)
                    self._log_refusal("auth_failed", "no username/password method offered")
                    self._close()
                    return
                self.state = "auth"
            elif self.state == "auth":
                got_auth = socks5.parse_auth(self.buf)
                if got_auth is None:
                    return
                creds, used = got_auth
                self.buf = self.buf[used:]
                client = socks5.authenticate(self.proxy.clients, creds)
                self.transport.write(socks5.encode_auth_status(client is not None))
                if client is None:
                    # A configured name with a wrong password is worth naming; anything else
                    # is an attacker's string and stays out of labels.
                    name = creds.username.decode("ascii", "replace")
                    label = name if name in self.proxy.clients else NO_CLIENT
                    self._count("auth_failed", label)
                    self._log_refusal("auth_failed", "wrong user name or password", user=name)
                    self._close()
                    return
                self.client = client
                self.state = "request"
            else:
                got_req = socks5.parse_request(self.buf)
                if got_req is None:
                    return
                request, used = got_req
                self.buf = self.buf[used:]
                self._request(request)
                return

    def _request(self, request: socks5.Request) -> None:
        client = self.client
        assert client is not None and self.transport is not None
        decision = socks5.authorize(client, self.reached, request)
        if not decision.allowed:
            self._fail(decision.reply, decision.result, decision.reason, request)
            return
        proxy = self.proxy
        if self.over_limit or proxy.stopping:
            why = "the proxy is stopping" if proxy.stopping else "over maxConnections"
            self._fail(Reply.GENERAL_FAILURE, "limit", why, request)
            return
        if proxy.client_open.get(client.name, 0) >= client.max_connections:
            reason = f"{client.name} has {client.max_connections} connections (maxConnections)"
            self._fail(Reply.GENERAL_FAILURE, "limit", reason, request)
            return
        proxy.client_open[client.name] = proxy.client_open.get(client.name, 0) + 1
        self.counted_client = True
        self.state = "connecting"
        proxy.relays.add(self)  # a drain waits for it (and cuts it) like a relay
        # The client waits for the reply; anything it sends early waits in self.buf.
        self.transport.pause_reading()
        self.connect_task = proxy.loop.create_task(self._connect(request))

    async def _connect(self, request: socks5.Request) -> None:
        proxy = self.proxy
        assert request.address is not None
        dest = (str(request.address), request.port)
        family = socket.AF_INET if request.address.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # Linux only; IPv6 sockets take it too
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            try:
                sock.bind((self.source, 0))
            except OSError as e:
                # The address left the host since the listener opened.
                sock.close()
                self._fail(Reply.GENERAL_FAILURE, "unreachable", f"cannot bind: {e}", request)
                return
            try:
                async with asyncio.timeout(proxy.cfg.connect_timeout):
                    await proxy.loop.sock_connect(sock, dest)
            except TimeoutError:
                sock.close()
                self._fail(Reply.HOST_UNREACHABLE, "timeout", "connect timed out", request)
                return
            except OSError as e:
                sock.close()
                reply, result = _connect_failure(e)
                self._fail(reply, result, os.strerror(e.errno) if e.errno else str(e), request)
                return
            outbound = _Outbound(self)
            await proxy.loop.create_connection(lambda: outbound, sock=sock)
        except asyncio.CancelledError:
            sock.close()
            raise
        except OSError as e:
            sock.close()
            self._fail(Reply.GENERAL_FAILURE, "unreachable", str(e), request)
            return
        if self.state != "connecting" or self.transport is None or self.transport.is_closing():
            # The client went away while we connected.
            if outbound.transport is not None:
                outbound.transport.close()
            self._end()
            return
        self._relay(outbound, sock, request)

    def _relay(self, outbound: _Outbound, sock: socket.socket, request: socks5.Request) -> None:
        assert self.transport is not None and outbound.transport is not None
        proxy = self.proxy
        self.outbound = outbound
        self.state = "relay"
        if self.timer is not None:
            self.timer.cancel()
        try:
            host, port = sock.getsockname()[:2]
            bound: tuple[IPAddress, int] | None = (ipaddress.ip_address(host), port)
        except OSError:
            bound = None
        self.transport.write(socks5.encode_reply(Reply.SUCCEEDED, bound))
        if outbound.early:
            proxy.metrics.add_bytes(self.source, "in", len(outbound.early))
            self.transport.write(outbound.early)
            outbound.early = b""
        self._count("relayed")
        proxy.metrics.active.labels(self.source).inc()
        if self.buf:
            proxy.metrics.add_bytes(self.source, "out", len(self.buf))
            outbound.transport.write(self.buf)
            self.buf = b""
        self.last = proxy.loop.time()
        self.timer = proxy.loop.call_later(proxy.cfg.idle_timeout, self._idle_check)
        self.transport.resume_reading()
        if outbound.lost:
            self._close()
        elif outbound.early_eof:
            self.outbound_eof()

    # -- endings ---------------------------------------------------------------------------
    def _handshake_timeout(self) -> None:
        self.timer = None
        if self.state in ("greeting", "auth", "request"):
            self._count("bad_request", self.client.name if self.client else NO_CLIENT)
            self._close()

    def _idle_check(self) -> None:
        self.timer = None
        if self.state != "relay":
            return
        idle = self.proxy.cfg.idle_timeout
        silent = self.proxy.loop.time() - self.last
        if silent >= idle:
            log.info(
                "relay idle; closed",
                extra={"source": self.source, "client": self._client_name(), "seconds": idle},
            )
            self.abort()
            return
        self.timer = self.proxy.loop.call_later(idle - silent, self._idle_check)

    def outbound_eof(self) -> None:
        if self.state != "relay":
            return
        self.eof_out = True
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        if self.eof_in:
            self._end()

    def abort(self) -> None:
        """Cut the relay at once (idle, or still open when the drain ends)."""
        if self.outbound is not None and self.outbound.transport is not None:
            self.outbound.transport.abort()
        if self.transport is not None:
            self.transport.abort()
        self._end()

    def _fail(
        self,
        reply: Reply | None,
        result: str,
        reason: str,
        request: socks5.Request | None = None,
    ) -> None:
        """Refuse: the reply (when the client is far enough to read one), counted, logged."""
        self._count(result)
        where = ""
        if request is not None and request.address is not None:
            where = f"{request.address}:{request.port}"
        self._log_refusal(result, reason, destination=where)
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(socks5.encode_reply(reply))
        self._close()

    def _refused_unanswered(self, result: str, reason: str) -> None:
        self._count(result)
        self._log_refusal(result, reason)
        self._close()

    def _close(self) -> None:
        """Close the client's side after what was written is flushed."""
        if self.transport is not None:
            self.transport.close()
        self._end()

    def _end(self) -> None:
        """Release everything this connection holds; runs once whatever ends it."""
        if self.state == "closed":
            return
        was_relay = self.state == "relay"
        self.state = "closed"
        proxy = self.proxy
        proxy.inbound -= 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        if self.counted_client and self.client is not None:
            self.counted_client = False
            left = proxy.client_open.get(self.client.name, 1) - 1
            if left:
                proxy.client_open[self.client.name] = left
            else:
                proxy.client_open.pop(self.client.name, None)
        if was_relay:
            proxy.metrics.active.labels(self.source).dec()
        if self in proxy.relays:
            proxy.relays.discard(self)
            proxy.relay_ended()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        out = self.outbound.transport if self.outbound is not None else None
        if out is not None and not out.is_closing():
            out.close()

    def _client_name(self) -> str:
        return self.client.name if self.client is not None else NO_CLIENT

    def _count(self, result: str, client: str | None = None) -> None:
        self.proxy.metrics.connections.labels(
            self.source, client if client is not None else self._client_name(), result
        ).inc()

    def _log_refusal(self, result: str, reason: str, **extra: Any) -> None:
        fields: dict[str, Any] = {
            "source": self.source,
            "client": self._client_name(),
            "result": result,
            "reason": reason,
        }
        if self.transport is not None:
            peer = self.transport.get_extra_info("peername")
            if peer:
                fields["peer"] = peer[0]
        fields.update({k: v for k, v in extra.items() if v})
        # Whatever reaches a node's public address on the proxy port (scanners) is bad_request:
        # kept out of the info log, counted in the metric.
        level = logging.DEBUG if result == "bad_request" else logging.INFO
        log.log(level, "egress connection not relayed", extra=fields)


class _Outbound(asyncio.Protocol):
    """The destination's side of a relay."""

    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound
        self.transport: asyncio.Transport | None = None
        # What the destination sent (its banner, an EOF, a reset) before the client has its
        # CONNECT reply: passed on once it has.
        self.early = b""
        self.early_eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        inbound = self.inbound
        if inbound.state != "relay":
            self.early += data
            return
        inbound.last = inbound.proxy.loop.time()
        inbound.proxy.metrics.add_bytes(inbound.source, "in", len(data))
        if inbound.transport is not None and not inbound.transport.is_closing():
            inbound.transport.write(data)

    def eof_received(self) -> bool | None:
        if self.inbound.state != "relay":
            self.early_eof = True
        else:
            self.inbound.outbound_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.inbound.state == "relay":
            # Whatever the client has not read yet is flushed before its side closes.
            if self.inbound.transport is not None:
                self.inbound.transport.close()
            self.inbound._end()

    def pause_writing(self) -> None:
        if self.inbound.transport is not None:
            self.inbound.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.inbound.transport is not None:
            self.inbound.transport.resume_reading()


def _connect_failure(e: OSError) -> tuple[Reply, str]:
    """The SOCKS5 reply and the metric's result for a failed connect to the destination."""
    if isinstance(e, ConnectionRefusedError) or e.errno == errno.ECONNREFUSED:
        return Reply.CONNECTION_REFUSED, "refused"
    if e.errno == errno.ENETUNREACH:
        return Reply.NETWORK_UNREACHABLE, "unreachable"
    if e.errno in (errno.EHOSTUNREACH, errno.EHOSTDOWN):
        return Reply.HOST_UNREACHABLE, "unreachable"
    if e.errno == errno.ETIMEDOUT:
        return Reply.HOST_UNREACHABLE, "timeout"
    return Reply.GENERAL_FAILURE, "unreachable"


# --------------------------------------------------------------------------- the host
def address_present(address: IPAddress) -> bool:
    """Whether `address` is on this host: a socket can be bound to it (EADDRNOTAVAIL: not)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((str(address), 0))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def _file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when the file is edited or a ConfigMap swaps the symlink it is behind."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


# --------------------------------------------------------------------------- the proxy
class EgressProxy:
    def __init__(
        self,
        config_path: Path,
        cfg: EgressProxyConfig,
        *,
        digest: str = "",
        listen_host: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.listen_host = listen_host
        self.cfg = cfg
        self.digest = digest
        self.metrics = ProxyMetrics()
        self.clients: dict[str, EgressClient] = {}
        self.addresses: list[IPAddress] = []
        self.apply(cfg)
        self.servers: dict[IPAddress, asyncio.Server] = {}
        self.listen_errors: dict[IPAddress, str] = {}
        self.present: dict[IPAddress, bool] = {}
        self.relays: set[_Inbound] = set()
        self.inbound = 0  # client connections open, in any state
        self.client_open: dict[str, int] = {}  # per client: connects and relays
        self.stopping = False
        self._stopped = asyncio.Event()
        self._drained = asyncio.Event()
        self._identity = _file_identity(config_path)
        self._reload_lock = asyncio.Lock()
        self._reconcile_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background: set[asyncio.Task[bool]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def apply(self, cfg: EgressProxyConfig) -> None:
        """The clients of `cfg` for every new connection (relays keep the client they had)."""
        self.cfg = cfg
        self.clients = {c.name: c for c in cfg.clients}
        self.addresses = [ip for c in cfg.clients for ip in c.addresses]

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        await self._start_admin()
        await self.reconcile()
        log.info(
            "egress proxy ready" if self.readiness()[0] else "egress proxy started; not ready",
            extra={
                "port": self.cfg.port,
                "addresses": [str(a) for a in self.addresses],
                "admin": self.cfg.listen_admin,
                "missing": self.readiness()[1],
            },
        )
        watcher = loop.create_task(self._watch())
        await self._stopped.wait()
        watcher.cancel()
        await self._drain()
        if self._runner is not None:
            await self._runner.cleanup()

    def _sighup(self) -> None:
        task = self.loop.create_task(self.reload("SIGHUP"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drain(self) -> None:
        self.stopping = True
        for server in self.servers.values():
            server.close()
        self.servers.clear()
        log.info(
            "stopping: no longer listening; waiting for relays",
            extra={"relays": len(self.relays), "drain_timeout": self.cfg.drain_timeout},
        )
        started = time.monotonic()
        if self.relays:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.cfg.drain_timeout)
        left = len(self.relays)
        for relay in list(self.relays):
            relay.abort()
        log.info(
            "stopped",
            extra={"seconds": round(time.monotonic() - started, 2), "relays_cut": left},
        )

    def relay_ended(self) -> None:
        if self.stopping and not self.relays:
            self._drained.set()

    async def _watch(self) -> None:
        # Polling, not inotify: a Kubernetes ConfigMap volume swaps a symlink, which inotify on
        # the file itself does not see.
        while True:
            await asyncio.sleep(min(CONFIG_POLL_INTERVAL, ADDRESS_CHECK_INTERVAL))
            try:
                identity = _file_identity(self.config_path)
                if identity is not None and identity != self._identity:
                    self._identity = identity
                    await self.reload("file changed")
                await self.reconcile()
            except Exception:
                # A watcher that died would ignore every later change, silently.
                log.exception("egress proxy watcher failed; still watching")

    async def reload(self, why: str) -> bool:
        async with self._reload_lock:
            if self.stopping:
                return False
            try:
                text = await asyncio.to_thread(read_config_text, self.config_path)
                digest = config_digest(text)
                if digest == self.digest and why != "SIGHUP":
                    return True
                cfg = parse_egress_proxy_config(text, str(self.config_path), self.listen_host)
            except ConfigError as e:
                self.metrics.reloads.labels("failed").inc()
                log.error(
                    "config reload refused; keeping the running config",
                    extra={"error": str(e), "trigger": why},
                )
                return False
            old = self.cfg
            notes = []
            if cfg.listen_admin != old.listen_admin:
                notes.append("adminListen changes on restart only")
                cfg = cfg.model_copy(update={"listen_admin": old.listen_admin})
            if cfg.port != old.port:
                # Every listener moves to the new port; open relays stay.
                for server in self.servers.values():
                    server.close()
                self.servers.clear()
            self.apply(cfg)
            self.digest = digest
            await self.reconcile()
            self.metrics.reloads.labels("ok").inc()
            log.info(
                "config reloaded",
                extra={
                    "trigger": why,
                    "addresses": [str(a) for a in self.addresses],
                    "notes": "; ".join(notes) or "applied",
                },
            )
            return True

    # -- listeners -------------------------------------------------------------------------
    async def reconcile(self) -> None:
        """A listener on every configured address the host has, and on no other."""
        async with self._reconcile_lock:  # the watcher's and a reload's, one at a time
            if not self.stopping:
                await self._reconcile()

    async def _reconcile(self) -> None:
        wanted = set(self.addresses)
        for address in list(self.servers):
            if address not in wanted:
                self.servers.pop(address).close()
                log.info("stopped listening", extra={"source": str(address)})
        for address in list(self.present):
            if address not in wanted:
                del self.present[address]
                self.listen_errors.pop(address, None)
                with contextlib.suppress(KeyError):
                    self.metrics.present.remove(str(address))
        for address in self.addresses:
            try:
                here, why = address_present(address), "not on this host"
            except OSError as e:
                here, why = False, f"cannot bind it: {e.strerror or e}"
            was = self.present.get(address)
            self.present[address] = here
            if not here:
                if address in self.servers:
                    # Nothing can reach it nor leave from it; listened on again when it is back.
                    self.servers.pop(address).close()
                self.listen_errors[address] = why
                if was is not False:
                    log.warning(
                        "source address not on this host",
                        extra={"source": str(address), "why": why},
                    )
            elif address not in self.servers:
                await self._listen(address)
            up = here and address in self.servers
            self.metrics.present.labels(str(address)).set(1 if up else 0)

    async def _listen(self, address: IPAddress) -> None:
        try:
            server = await self.loop.create_server(
                lambda: _Inbound(self, address),
                host=str(address),
                port=self.cfg.port,
                reuse_address=True,
                backlog=LISTEN_BACKLOG,
            )
        except OSError as e:
            first = self.listen_errors.get(address) != str(e)
            self.listen_errors[address] = f"cannot listen: {e.strerror or e}"
            if first:
                log.error(
                    "cannot listen",
                    extra={"source": str(address), "port": self.cfg.port, "error": str(e)},
                )
            return
        if self.stopping:  # SIGTERM came while it opened
            server.close()
            return
        self.servers[address] = server
        self.listen_errors.pop(address, None)
        log.info("listening", extra={"source": str(address), "port": self.cfg.port})

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, missing address -> why): ready when every address is here and listened on."""
        missing = {
            str(a): self.listen_errors.get(a, "not listening")
            for a in self.addresses
            if a not in self.servers
        }
        return not missing and not self.stopping, missing

    # -- admin -----------------------------------------------------------------------------
    async def _start_admin(self) -> None:
        host, port = parse_hostport(self.cfg.listen_admin)
        app = web.Application()

        async def livez(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(_: web.Request) -> web.Response:
            ready, missing = self.readiness()
            if self.stopping:
                reason = "stopping"
            elif missing:
                reason = "missing " + ", ".join(f"{a} ({why})" for a, why in missing.items())
            else:
                reason = "ready"
            body = {"ready": ready, "reason": reason, "missing": sorted(missing)}
            return web.json_response(body, status=200 if ready else 503)

        async def metrics(_: web.Request) -> web.Response:
            resp = web.Response(body=generate_latest(self.metrics.registry))
            resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return resp

        app.add_routes(
            [web.get("/livez", livez), web.get("/readyz", readyz), web.get("/metrics", metrics)]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, reuse_address=True).start()


# --------------------------------------------------------------------------- entry points
def check_proxy_config(path: Path, listen_host: str | None = None) -> EgressProxyConfig:
    """`mailfleet egress-proxy --check`."""
    return parse_egress_proxy_config(read_config_text(path), str(path), listen_host)


def run_proxy(config_path: Path, listen_host: str | None = None) -> int:
    """Run the proxy until SIGTERM; 0 after a drain, 2 for a config it cannot use."""
    from mailfleet.mta.logs import setup_logging

    try:
        text = read_config_text(config_path)
        cfg = parse_egress_proxy_config(text, str(config_path), listen_host)
    except ConfigError as e:
        print(f"mailfleet egress-proxy: {e}", file=sys.stderr)
        return 2
    setup_logging("info", "json")
    proxy = EgressProxy(config_path, cfg, digest=config_digest(text), listen_host=listen_host)
    try:
        import uvloop

        uvloop.run(proxy.run())
    except OSError as e:
        log.error("egress proxy failed", extra={"error": str(e)})
        return 1
    return 0
