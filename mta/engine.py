"""The engine: wires spool, queue runner, submission and admin together; reloads config."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import queue
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver

from mailfleet import __version__
from mailfleet.mta.admin import AdminServer
from mailfleet.mta.adminapi import (
    ConnectionCount,
    DrainState,
    EngineStatus,
    FleetLimits,
    HandoffProgress,
    QueueActionResult,
    QueueStatus,
    ShapingRow,
    SubmissionState,
    WarmupRow,
)
from mailfleet.mta.adminclient import (
    ensure_generated_token,
    generated_token_path,
    read_admin_token,
)
from mailfleet.mta.arf import ARFError, from_feedback_domain, parse_arf
from mailfleet.mta.auth import CredentialsError, UserDB
from mailfleet.mta.config import (
    ConfigError,
    EngineConfig,
    config_digest,
    load_config,
    parse_config_text,
    read_config_text,
)
from mailfleet.mta.delivery import DeliveryClient, ProxyAuth, read_proxy_auth
from mailfleet.mta.dkim import DKIMSigner
from mailfleet.mta.dmarcforward import Forwarder
from mailfleet.mta.dmarcmail import NotAReport, report_attachments
from mailfleet.mta.handoff import HandoffSender
from mailfleet.mta.headers import add_headers, has_internal_headers, load_token_key
from mailfleet.mta.lineends import crlf_only
from mailfleet.mta.metrics import EngineMetrics
from mailfleet.mta.queue import QueueRunner
from mailfleet.mta.reportverify import Busy, HeaderTooLarge, ReportVerifier
from mailfleet.mta.routing import Router
from mailfleet.mta.safefiles import (
    DKIM_KEY_MAX,
    TLS_FILE_MAX,
    TOKEN_KEY_MAX,
    TOKEN_MAX,
    USERS_FILE_MAX,
    UnsafeFile,
    check_file,
    read_token,
)
from mailfleet.mta.spool import QueuedMessage, Spool, new_message_id
from mailfleet.mta.submission import (
    SubmissionHandler,
    SubmissionPolicy,
    SubmissionServer,
    in_networks,
    server_tls_context,
)
from mailfleet.mta.suppression import SQLiteSuppressions, open_store
from mailfleet.mta.workers import SPOOL_FILE, numbered_dirs, orphan_spools, worker_config

log = logging.getLogger("mailfleet.mta.engine")

CONFIG_POLL_INTERVAL = 1.0
# Threads that DKIM-sign off the event loop: OpenSSL's RSA releases the GIL, so signing runs
# beside the loop (and beside another message's signing) instead of stalling every session.
SIGNING_THREADS = 2


def named_files(cfg: EngineConfig) -> list[tuple[str, Path, int]]:
    """Every file `cfg` names: (field, path, the most it may hold)."""
    out: list[tuple[str, Path, int]] = []
    for i, key in enumerate(cfg.dkim.keys):
        out.append((f"dkim.keys[{i}].keyFile", key.key_file, DKIM_KEY_MAX))
    sub = cfg.submission
    if sub.auth_users_file is not None:
        out.append(("submission.authUsersFile", sub.auth_users_file, USERS_FILE_MAX))
    if sub.tls is not None:
        out.append(("submission.tls.certFile", sub.tls.cert_file, TLS_FILE_MAX))
        out.append(("submission.tls.keyFile", sub.tls.key_file, TLS_FILE_MAX))
    if cfg.headers.token_key_file is not None:
        out.append(("headers.tokenKeyFile", cfg.headers.token_key_file, TOKEN_KEY_MAX))
    if cfg.admin.token_file is not None:
        out.append(("admin.tokenFile", cfg.admin.token_file, TOKEN_MAX))
    if cfg.dmarc_reports.token_file is not None:
        out.append(("dmarcReports.tokenFile", cfg.dmarc_reports.token_file, TOKEN_MAX))
    if cfg.delivery.egress.auth_file is not None:
        out.append(("delivery.egress.authFile", cfg.delivery.egress.auth_file, TOKEN_MAX))
    return out


def check_named_files(cfg: EngineConfig) -> None:
    """UnsafeFile naming the field of the first file `cfg` names that is not a regular file
    of a bounded size: refused before any reader opens it."""
    for field, path, limit in named_files(cfg):
        check_file(path, field, limit)


def build_policy(cfg: EngineConfig) -> SubmissionPolicy:
    users = None
    if cfg.submission.auth_users_file is not None:
        users = UserDB.from_file(cfg.submission.auth_users_file)
    return SubmissionPolicy(
        hostname=cfg.hostname,
        trusted=list(cfg.submission.trusted_networks),
        users=users,
        max_recipients=cfg.submission.max_recipients,
        feedback_addresses=frozenset(a.lower() for a in cfg.suppression.feedback_addresses),
        feedback_sources=list(cfg.suppression.feedback_sources),
        feedback_domains=frozenset(cfg.suppression.feedback_domains),
        drop_suppressed=cfg.suppression.on_suppressed == "drop",
        bare_newlines=cfg.submission.bare_newlines,
        accept_address_literals=cfg.submission.address_literals == "accept",
        allow_private_literals=cfg.routing.allow_private_mx,
        static_routes=frozenset(d.lower() for d in cfg.routing.routes),
        dmarc_addresses={
            a.address: (list(a.sources), bool(a.signed_by)) for a in cfg.dmarc_reports.addresses
        },
    )


@dataclass
class Prepared:
    """Everything a config needs that can fail, built before any of it is applied."""

    cfg: EngineConfig
    policy: SubmissionPolicy
    signer: DKIMSigner
    token_key: bytes | None
    tls: ssl.SSLContext | None
    proxy_auth: ProxyAuth | None = None  # delivery.egress.authFile's credentials


def prepare(cfg: EngineConfig) -> Prepared:
    """Build what `cfg` needs (users file, DKIM keys, TLS certificate and key, token key);
    ConfigError names the field when one cannot be used. `mailfleet mta --check` and a reload
    refuse exactly the same configs."""
    try:
        # A FIFO or a device where a key should be would block or fill whoever reads it.
        check_named_files(cfg)
    except UnsafeFile as e:
        raise ConfigError(str(e)) from None
    try:
        policy = build_policy(cfg)
    except CredentialsError as e:
        raise ConfigError(f"submission.authUsersFile: {e}") from None
    try:
        signer = DKIMSigner(cfg.dkim)
    except (ValueError, OSError) as e:
        raise ConfigError(f"dkim.keys: {e}") from None
    try:
        key = token_key(cfg)
    except (ValueError, OSError) as e:
        raise ConfigError(f"headers.tokenKeyFile: {e}") from None
    tls = None
    if cfg.submission.tls is not None:
        t = cfg.submission.tls
        try:
            tls = server_tls_context(str(t.cert_file), str(t.key_file))
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(
                f"submission.tls: cannot use certFile {t.cert_file} with keyFile {t.key_file}: {e}"
            ) from None
    proxy_auth = None
    if cfg.delivery.egress.auth_file is not None:
        try:
            proxy_auth = read_proxy_auth(cfg.delivery.egress.auth_file)
        except ValueError as e:  # names delivery.egress.authFile, never the password
            raise ConfigError(str(e)) from None
    return Prepared(cfg, policy, signer, key, tls, proxy_auth)


def check_config(path: Path, listen_host: str | None = None) -> EngineConfig:
    """`mailfleet mta --check`: the config file and every file it names, as a reload checks
    them."""
    cfg = load_config(path, listen_host)
    prepare(cfg)
    try:
        read_admin_token(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def token_key(cfg: EngineConfig) -> bytes | None:
    path = cfg.headers.token_key_file
    return load_token_key(path) if path is not None else None


class Engine:
    def __init__(
        self,
        config_path: Path,
        cfg: EngineConfig,
        *,
        config_hash: str = "",
        listen_host: str | None = None,
        worker: Worker | None = None,
        pod_name: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.worker = worker or Worker()
        # The directory of the pod's spools; this process's own is a numbered one below it
        # when it is one of several.
        self.spool_root = cfg.spool.path
        cfg = self.worker.config(cfg)
        self.cfg = cfg
        self.config_hash = config_hash
        self.listen_host = listen_host
        # Always a token: without admin.tokenFile one generated beside the spool, which the
        # CLI on this host reads and a web page (DNS rebinding, a form post) cannot know.
        self.admin_token: bytes = read_admin_token(cfg) or ensure_generated_token(
            generated_token_path(self.spool_root)
        )
        self.generation = 1
        self.metrics = EngineMetrics()
        self.signer = DKIMSigner(cfg.dkim)
        self.spool = Spool(
            cfg.spool.path,
            group_commit_window=cfg.spool.group_commit_window,
            observe_commit=self.metrics.observe_commit,
        )
        self.router = Router(cfg.routing, mx_port=cfg.routing.mx_port)
        self.client = DeliveryClient(cfg.delivery, cfg.hostname)
        # One list for every process of the pod: a complaint one of them takes suppresses the
        # recipient for all.
        self.suppressions = open_store(cfg.suppression, self.spool_root)
        self.token_key = token_key(cfg)
        self.queue = QueueRunner(
            cfg,
            self.spool,
            self.router,
            self.client,
            self.metrics,
            self.inject,
            self.suppress,
            pod_name=pod_name,
        )
        self.handler = SubmissionHandler(
            build_policy(cfg), self.ingest, self.metrics, self.is_suppressed, self.on_feedback
        )
        self.handler.low_on_disk = self.queue.low_on_disk
        self.handler.dmarc_reports = self.on_dmarc_report
        self.dmarc_forwarder = Forwarder()
        self.report_verifier = ReportVerifier()
        self.submission = SubmissionServer(self.handler, self.metrics)
        self.admin = AdminServer(self)
        self.recovered = False
        self.draining = False
        self.handoff: HandoffSender | None = None
        self._handoff_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._config_mtime = self._mtime()
        self._reload_lock = asyncio.Lock()
        self.started_at = time.time()
        self._background: set[asyncio.Task[None]] = set()
        # Messages to sign, for the signing threads (started at the first message). A plain
        # queue: ThreadPoolExecutor.submit's future and bookkeeping showed in the loop's profile.
        self._to_sign: queue.SimpleQueue[_SignJob | None] = queue.SimpleQueue()
        self._signers: list[threading.Thread] = []

    # -- mail in -------------------------------------------------------------------------------

    def _sign_and_store(
        self,
        signer: DKIMSigner,
        fut: asyncio.Future[QueuedMessage],
        queue_id: str,
        mail_from: str,
        recipients: list[str],
        data: bytes,
        client: str,
    ) -> None:
        """On a signing thread: DKIM-sign the message and hand it to the spool's writer, which
        resolves `fut` once it is fsynced (one hop back to the loop, not two)."""
        try:
            try:
                result = signer.sign_result(data, crlf=True)
            except ValueError as e:
                self.metrics.dkim.labels("none", "error").inc()
                log.warning("message not DKIM-signed", extra={"reason": str(e)})
            else:
                for sig in result.signatures:
                    self.metrics.dkim.labels(sig.algorithm, "signed").inc()
                if result.header:
                    data = result.header + data
            _, op = self.spool.accept_op(mail_from, recipients, data, client, queue_id)
            self.spool.enqueue(op, fut)
        except BaseException as e:
            fut.get_loop().call_soon_threadsafe(_fail, fut, e)

    async def ingest(
        self,
        queue_id: str,
        mail_from: str,
        recipients: list[str],
        data: bytes,
        client: str,
        crlf: bool = False,
    ) -> None:
        """Sign, spool and queue a message; returns once it is fsynced. `crlf`: the caller has
        made every line end a CRLF; otherwise it is done here, so that what is signed, stored
        and sent has CRLF line ends throughout and none of them scans for bare ones again."""
        if not crlf:
            data = crlf_only(data)
        hc = self.cfg.headers
        if hc.list_unsubscribe or hc.feedback_id or has_internal_headers(data):
            added = add_headers(
                data, hc, recipients=recipients, message_id=queue_id, token_key=self.token_key
            )
            for note in added.notes:
                log.info("header not added", extra={"queue_id": queue_id, "note": note})
            data = added.data
        # Signed off the event loop (OpenSSL releases the GIL), then stored by the spool's
        # writer: 250 only once it is fsynced.
        fut: asyncio.Future[QueuedMessage] = asyncio.get_running_loop().create_future()
        if not self._signers:
            self._start_signers()
        # From here the message is being committed, whatever the client does: once stored it
        # is queued (and counted) exactly once, by this callback, even when the session is
        # cancelled meanwhile (the client left after its final dot). Not committing it then
        # is no longer possible, and storing it without queueing it left an orphan that the
        # loader delivered later and counted out twice. The client saw no 250 and may send it
        # again: the duplicate window of RFC 1047, kept short (the reply follows the commit).
        fut.add_done_callback(self._stored)
        self._to_sign.put((self.signer, fut, queue_id, mail_from, recipients, data, client))
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            log.info(
                "client gone before the reply; the message is kept and queued",
                extra={"queue_id": queue_id},
            )
            raise

    def _stored(self, fut: asyncio.Future[QueuedMessage]) -> None:
        """A message's commit is over: queued once it is stored (the one place that counts it
        in); a failed commit stored nothing, and the waiting session answers it."""
        if fut.cancelled() or fut.exception() is not None:
            return
        self.queue.add(fut.result(), crlf=True)

    def _start_signers(self) -> None:
        for i in range(SIGNING_THREADS):
            t = threading.Thread(target=self._signer, name=f"dkim-{i}", daemon=True)
            t.start()
            self._signers.append(t)

    def _signer(self) -> None:
        while (job := self._to_sign.get()) is not None:
            self._sign_and_store(*job)

    async def inject(self, mail_from: str, recipients: list[str], data: bytes) -> str:
        qid = new_message_id()
        await self.ingest(qid, mail_from, recipients, data, "local")
        return qid

    # -- reputation: suppression list and complaints --------------------------------------------

    async def is_suppressed(self, recipient: str) -> str | None:
        entry = await self.suppressions.get(recipient)
        return entry.reason if entry is not None else None

    async def suppress(self, recipient: str, reason: str, source: str) -> None:
        await self.suppressions.add(recipient, reason, source)
        self.metrics.suppressions.labels(reason).inc()
        log.info("recipient suppressed", extra={"reason": reason, "source": source[:200]})

    async def _dkim_domains(
        self, data: bytes, wanted: frozenset[str], client: str
    ) -> tuple[set[str], str | None]:
        """The domains under `wanted` of the message's valid DKIM signatures, verified off the
        loop within the bounds of reportverify (a stranger's message: at most a few signatures,
        of those domains only, a small header, a few at a time); or the reply when it cannot be
        verified now (451 4.3.2) or ever (554 5.6.0)."""
        try:
            return await self.report_verifier.verify(data, wanted, client, self._txt_lookup), None
        except Busy:
            self.metrics.rejected.labels("report-verify-busy").inc()
            return set(), "451 4.3.2 Too many reports being verified now, try again later"
        except HeaderTooLarge as e:
            self.metrics.rejected.labels("report-header").inc()
            return set(), f"554 5.6.0 Report refused: its {e}, too large to verify"

    def _refuse_unverified(self, sender: _Senders, client: str, verified: set[str]) -> str:
        """A report from neither a configured network nor a configured signer: counted, logged
        with the domains that did sign it, and refused for good."""
        self.metrics.rejected.labels(sender.metric).inc()
        log.warning(
            f"{sender.what} refused: not from {sender.who}",
            extra={"client": client, "dkim_domains": sorted(verified)[:5]},
        )
        return (
            f"550 5.7.1 {sender.what[:1].upper()}{sender.what[1:]} refused: neither from"
            f" {sender.network} nor DKIM-signed by {sender.signer}"
        )

    async def on_feedback(self, data: bytes, client: str, from_source: bool) -> str:
        """An ARF complaint: suppress the recipient, count it against the source IP. Only from a
        configured feedback source: the client's network, or a valid DKIM signature of one of
        suppression.feedbackDomains."""
        if not from_source:
            domains = frozenset(self.cfg.suppression.feedback_domains)
            verified, reply = await self._dkim_domains(data, domains, client)
            if reply is not None:
                return reply
            if from_feedback_domain(verified, domains) is None:
                return self._refuse_unverified(_FEEDBACK_SOURCES, client, verified)
        try:
            report = parse_arf(data)
        except ARFError as e:
            self.metrics.rejected.labels("not-arf").inc()
            return f"554 5.6.0 The feedback address takes ARF reports (RFC 5965) only: {e}"
        rcpt = report.original_recipient
        if rcpt:
            await self.suppress(rcpt, "complaint", report.source)
        provider = self.queue.shaper.table.by_domain(rcpt.rpartition("@")[2]) if rcpt else None
        self.metrics.complaints.labels(report.source_ip or "", provider or "default").inc()
        log.info(
            "complaint received",
            extra={
                "feedback_type": report.feedback_type,
                "source_ip": report.source_ip,
                "provider": provider or "default",
                "reporter": report.source,
                "client": client,
            },
        )
        return "250 2.0.0 Ok: complaint recorded"

    async def on_dmarc_report(self, data: bytes, client: str, addresses: list[str]) -> str:
        """A DMARC aggregate report mailed to `addresses`: from a configured reporter (network
        or DKIM signature), its attachment forwarded to the operator, which counts it."""
        cfg = self.cfg.dmarc_reports
        by_address = {a.address: a for a in cfg.addresses}
        entries = [by_address[a.lower()] for a in addresses if a.lower() in by_address]
        if not entries:
            return "451 4.3.0 The DMARC report address changed meanwhile, try again later"
        unsourced = [e for e in entries if not in_networks(client, e.sources)]
        if unsourced:
            signers = frozenset(d for e in unsourced for d in e.signed_by)
            verified, reply = await self._dkim_domains(data, signers, client)
            if reply is not None:
                return reply
            for e in unsourced:
                if from_feedback_domain(verified, frozenset(e.signed_by)) is None:
                    return self._refuse_unverified(_DMARC_REPORTERS, client, verified)
        try:
            reports = report_attachments(data)
        except NotAReport as e:
            self.metrics.rejected.labels("not-dmarc").inc()
            return f"554 5.6.0 {e}"
        assert cfg.token_file is not None  # the config requires it with addresses
        try:
            # Off the loop, a regular file of a token's size only: never a FIFO or a device.
            token = (
                await asyncio.to_thread(read_token, cfg.token_file, "dmarcReports.tokenFile")
            ).decode()
        except ValueError as e:
            log.error("dmarcReports.tokenFile unreadable", extra={"error": str(e)})
            return "451 4.3.0 DMARC reports cannot be forwarded now, try again later"
        reply = ""
        for url in dict.fromkeys(e.forward_url for e in entries):
            reply = await self.dmarc_forwarder.forward(url, token, reports, cfg.timeout)
            if not reply.startswith("2"):
                break
        self.metrics.dmarc_reports.labels(reply[:1] + "xx").inc()
        return reply

    def _txt_lookup(self, name: bytes, timeout: float = 5.0) -> bytes | None:
        """dkimpy's DNS function (run in a thread): TXT records from the engine's resolvers."""
        dns_cfg = self.cfg.routing.dns
        resolver = dns.resolver.Resolver(configure=not dns_cfg.nameservers)
        if dns_cfg.nameservers:
            resolver.nameservers = list(dns_cfg.nameservers)
            resolver.port = dns_cfg.port
        resolver.lifetime = min(float(dns_cfg.timeout), timeout)
        try:
            answer = resolver.resolve(name.decode("ascii", "replace"), "TXT", search=False)
        except dns.exception.DNSException:
            return None
        for rr in answer:
            return b"".join(rr.strings)
        return None

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        await self.admin.start(self.cfg.admin.listen)
        await self.spool.start()
        await self._adopt_orphans()
        # Counts only (index scans, no bodies): the loader then pages in what is due, oldest
        # first, up to spool.activeLimit, while the engine already takes new mail.
        reader = self.spool.reader()
        await self.queue.recover(reader)
        await asyncio.to_thread(self.queue.restore_shaping)
        self.recovered = True
        log.info(
            "spool recovered",
            extra={
                "messages": self.queue.counts.messages,
                "seconds": round(time.time() - self.started_at, 2),
            },
        )
        await self.queue.start()
        await self.submission.start(self.cfg.submission)
        self.metrics.config_generation.set(self.generation)
        _settle_gc()
        self.metrics.ready.set(1)
        log.info(
            "engine ready",
            extra={"submission": self.cfg.submission.listen, "admin": self.cfg.admin.listen},
        )
        watcher = asyncio.create_task(self._watch_config())
        shared = None
        if self.worker.count > 1 and isinstance(self.suppressions, SQLiteSuppressions):
            shared = asyncio.create_task(_follow_suppressions(self.suppressions))
        await self._stopped.wait()
        log.info("shutting down")
        watcher.cancel()
        if shared is not None:
            shared.cancel()
        self.metrics.ready.set(0)
        self.submission.stop_listening()
        await self.queue.stop()
        await self.client.close()
        await reader.close()
        await self.spool.close()
        await self.suppressions.close()
        await self.dmarc_forwarder.close()
        await self.admin.stop()
        self.report_verifier.close()
        for _ in self._signers:
            self._to_sign.put(None)

    def stop(self) -> None:
        self._stopped.set()

    async def _adopt_orphans(self) -> None:
        """Spools a larger number of processes left (the pod's CPU request shrank): their
        messages, with their attempts and retry times, move into this process's spool before it
        accepts mail or recovers its queue, then their files go."""
        root, i, n = self.spool_root, self.worker.index, self.worker.count
        orphans = orphan_spools(root, i, n, numbered_dirs(root), (root / SPOOL_FILE).exists())
        for path in orphans:
            if path == self.spool.path:
                continue
            moved = await _move_spool(path, self.spool)
            log.info("adopted an orphaned spool", extra={"path": str(path), "messages": moved})

    # -- config reload -------------------------------------------------------------------------

    def _mtime(self) -> float:
        try:
            return self.config_path.stat().st_mtime
        except OSError:
            return 0.0

    async def _watch_config(self) -> None:
        # Polling, not inotify: a Kubernetes ConfigMap volume swaps a symlink, which inotify on
        # the file itself does not see.
        while True:
            await asyncio.sleep(CONFIG_POLL_INTERVAL)
            try:
                mtime = self._mtime()
                if mtime and mtime != self._config_mtime:
                    self._config_mtime = mtime
                    await self.reload(only_if_changed=True)
            except Exception:
                # A watcher that died would ignore every later edit, silently: said, counted,
                # and the next edit is tried again.
                self.metrics.config_reloads.labels("error").inc()
                log.exception("config watcher: reload failed unexpectedly; still watching")

    async def reload(
        self, text: str | None = None, *, only_if_changed: bool = False
    ) -> tuple[bool, str]:
        """Apply the config file, or `text` (pushed by the operator before the kubelet syncs the
        ConfigMap volume): all of it or, when anything is refused, none of it."""
        async with self._reload_lock:
            try:
                # Every file is read, the YAML parsed and the config validated off the loop:
                # sessions and probes go on meanwhile, however large or slow what it names is.
                loaded = await asyncio.to_thread(self._load, text, only_if_changed)
                if loaded is None:
                    return True, "unchanged"
                digest, ready, admin_token = loaded
            except (ConfigError, CredentialsError, ValueError, OSError) as e:
                self.metrics.config_reloads.labels("failed").inc()
                log.error(
                    "config reload refused; keeping the running config",
                    extra={"error": str(e), "generation": self.generation},
                )
                return False, str(e)
            cfg = ready.cfg
            old = self.cfg
            notes = []
            if cfg.spool.path != old.spool.path:
                notes.append("spool.path changes on restart only")
            if cfg.suppression != old.suppression:
                notes.append("suppression changes on restart only")
            if cfg.admin.listen != old.admin.listen:
                notes.append("admin.listen changes on restart only")
            if admin_token is None:
                if old.admin.token_file is not None:
                    # Dropping the token file would leave a non-loopback admin API open.
                    notes.append("admin.tokenFile removal takes effect on restart only")
                admin_token = self.admin_token
            if cfg.routing.mx_port != old.routing.mx_port:
                notes.append("routing.mxPort changes on restart only")
            try:
                await self.submission.start(cfg.submission, ready.tls)
            except OSError as e:
                self.metrics.config_reloads.labels("failed").inc()
                log.error("config reload refused: cannot listen", extra={"error": str(e)})
                return False, f"submission.listen {cfg.submission.listen}: {e}"
            # Nothing below can fail: the new config is applied whole.
            self.handler.policy = ready.policy
            self.signer = ready.signer
            self.token_key = ready.token_key
            self.admin_token = admin_token
            self.config_hash = digest
            self.router.update_config(cfg.routing)
            if (
                cfg.delivery != old.delivery
                or cfg.hostname != old.hostname
                or ready.proxy_auth != self.client.proxy_auth
            ):
                old_client, self.client = (
                    self.client,
                    DeliveryClient(cfg.delivery, cfg.hostname, ready.proxy_auth),
                )
                self.queue.client = self.client
                self._background.add(
                    asyncio.create_task(_close_later(old_client, cfg.delivery.command_timeout))
                )
            self.queue.update_config(cfg)
            self.cfg = cfg
            self.generation += 1
            self.metrics.config_generation.set(self.generation)
            self.metrics.config_reloads.labels("ok").inc()
            message = "; ".join(notes) or "applied"
            log.info("config reloaded", extra={"generation": self.generation, "notes": message})
            return True, message

    def _load(
        self, text: str | None, only_if_changed: bool
    ) -> tuple[str, Prepared, bytes | None] | None:
        """On a thread: the config file (or pushed `text`) parsed, checked and prepared, with
        its digest and admin token; None when it is the running one and `only_if_changed`."""
        source = "pushed config" if text is not None else str(self.config_path)
        raw = text if text is not None else read_config_text(self.config_path)
        digest = config_digest(raw)
        if only_if_changed and digest == self.config_hash:
            return None
        cfg = self.worker.config(parse_config_text(raw, source, self.listen_host))
        if text is not None:
            self._check_pushed_secrets(cfg)
        ready = prepare(cfg)
        return digest, ready, read_admin_token(ready.cfg)

    def _check_pushed_secrets(self, cfg: EngineConfig) -> None:
        """A config pushed through the admin API names no secret file the running one does not:
        the DMARC forward sends dmarcReports.tokenFile's content to forwardURL, which the same
        push sets, so a new path would send any file of the host anywhere. The config file
        (written by whoever runs the engine) may name others."""
        old = self.cfg
        known = {
            p
            for p in (
                old.admin.token_file,
                old.dmarc_reports.token_file,
                old.delivery.egress.auth_file,  # sent to whichever proxy the config names
            )
            if p is not None
        }
        for field, path in (
            ("admin.tokenFile", cfg.admin.token_file),
            ("dmarcReports.tokenFile", cfg.dmarc_reports.token_file),
            ("delivery.egress.authFile", cfg.delivery.egress.auth_file),
        ):
            if path is not None and path not in known:
                raise ConfigError(
                    f"{field}: {path} is not a token file the running config names; a config"
                    " pushed through the admin API may not name new secret files (change the"
                    " config file instead)"
                )

    # -- admin ---------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if not self.recovered:
            return False, "recovering the spool"
        if self.draining:
            return False, "draining"
        if self.submission.server is None:
            return False, "not listening"
        return True, "ready"

    async def queue_action(self, action: str, domain: str) -> QueueActionResult:
        """retry: what waits for a retry at `domain` is due now; bounce: what is queued for it
        now goes back to its senders as DSNs."""
        if action == "bounce":
            result = await self.queue.bounce(domain)
        else:
            result = await self.queue.retry_now(domain)
        log.info(f"queue {action} by domain", extra=result)
        return QueueActionResult.model_validate({"action": action, **result})

    async def drain(self, handoff: list[str] | None = None) -> DrainState:
        """Take no more mail; hand the queue to `handoff` peers (admin URLs) or deliver it."""
        if not self.draining:
            self.draining = True
            self.handler.accepting = False
            self.submission.stop_listening()
            self.metrics.ready.set(0)
            self.metrics.draining.set(1)
            log.info("draining: submission closed", extra={"handoff": handoff or []})
        if handoff and (self.handoff is None or self.handoff.state.done):
            token = self.admin_token.decode() if self.admin_token else None
            self.handoff = HandoffSender(
                self.spool,
                self.spool.reader(),
                self.queue,
                handoff,
                token,
                on_handed=lambda n: self.metrics.handoff.labels("out").inc(n),
            )
            self._handoff_task = asyncio.create_task(self.handoff.run(), name="handoff")
        return self.drain_state()

    def drain_state(self) -> DrainState:
        return DrainState(
            draining=self.draining,
            queue=QueueStatus.model_validate(self.queue.status()),
            empty=self.queue.empty,
            handoff=(
                HandoffProgress.model_validate(self.handoff.state.as_dict())
                if self.handoff is not None
                else None
            ),
        )

    async def undrain(self) -> DrainState:
        """Take mail again (a scale-down called off): what was not handed off stays here."""
        if self._handoff_task is not None:
            self._handoff_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._handoff_task
            self._handoff_task = None
        if self.draining:
            await self.submission.start(self.cfg.submission)
            self.draining = False
            self.handler.accepting = True
            self.metrics.ready.set(1)
            self.metrics.draining.set(0)
            log.info("undrained: taking mail again")
        return self.drain_state()

    async def adopt(self, messages: list[QueuedMessage]) -> int:
        """Messages a draining peer hands over: stored (fsynced) with their state, then
        scheduled here. Refused while this engine drains itself."""
        if self.draining:
            raise RuntimeError("this engine is draining: hand the mail to another pod")
        fresh = await self.spool.adopt(messages)
        for m in fresh:
            self.queue.adopt(m)
        self.metrics.handoff.labels("in").inc(len(fresh))
        return len(fresh)

    async def adopt_shaping(self, pairs: list[dict[str, Any]], warmup: list[dict[str, Any]]) -> int:
        """Shaping state and warmup counts of IPs the operator moves here from another pod."""
        return await self.queue.adopt_shaping(pairs, warmup)

    def status(self) -> EngineStatus:
        ready, reason = self.readiness()
        stats = getattr(self.client, "stats", None)
        return EngineStatus(
            version=__version__,
            hostname=self.cfg.hostname,
            ready=ready,
            reason=reason,
            draining=self.draining,
            config_generation=self.generation,
            config_hash=self.config_hash,
            uptime_seconds=round(time.time() - self.started_at, 1),
            submission=SubmissionState(
                listen=self.submission.listen, accepting=self.handler.accepting
            ),
            queue=QueueStatus.model_validate(self.queue.status()),
            shaping=[ShapingRow.model_validate(r) for r in self.queue.shaping_status()],
            warmup=[
                WarmupRow.model_validate(r) for r in self.queue.shaper.warmup_today(time.time())
            ],
            source_ips=self.queue.sending_ips(),
            fleet_limits=FleetLimits.model_validate(self.queue.fleet.status()),
            connections={
                k: ConnectionCount.model_validate(v)
                for k, v in (stats() if callable(stats) else {}).items()
            },
        )


@dataclass(frozen=True)
class _Senders:
    """Who may send a kind of report, in the words of its refusal."""

    what: str
    who: str
    network: str
    signer: str
    metric: str


_FEEDBACK_SOURCES = _Senders(
    "feedback report",
    "a feedback source",
    "a feedback loop's network",
    "a configured feedback domain",
    "feedback-source",
)
_DMARC_REPORTERS = _Senders(
    "DMARC report",
    "a configured reporter",
    "a configured reporter's network",
    "a configured reporter",
    "dmarc-source",
)

# What a signing thread is given: signer, future, queue id, sender, recipients, data, client.
_SignJob = tuple[DKIMSigner, "asyncio.Future[QueuedMessage]", str, str, list[str], bytes, str]


def _fail(fut: asyncio.Future[Any], e: BaseException) -> None:
    if not fut.done():
        fut.set_exception(e)


async def _close_later(client: DeliveryClient, delay: float) -> None:
    # Deliveries started on the old client finish on it; then its connections close.
    await asyncio.sleep(min(delay, 60.0))
    with contextlib.suppress(Exception):
        await client.close()


@dataclass(frozen=True)
class Worker:
    """Which of the pod's engine processes this is (`mailfleet mta --processes N`)."""

    index: int = 0
    count: int = 1
    admin_listen: str = ""

    def config(self, cfg: EngineConfig) -> EngineConfig:
        return worker_config(cfg, self.index, self.count, self.admin_listen)


async def _move_spool(path: Path, into: Spool) -> int:
    """Every message of the spool at `path` into `into` (fsynced there first, deleted here
    after: a crash in between delivers a message twice, never loses it), and its warmup counts;
    then its files go."""
    source = Spool(path)
    await source.start()
    reader = source.reader()
    moved = 0
    try:
        after = ""
        while batch := await reader.messages_after(after, 200):
            fresh = await into.adopt(batch)
            await source.remove([m.id for m in batch])
            moved += len(fresh)
            after = batch[-1].id
        # Today's warmup sends from those IPs count here too: an IP's daily cap holds across a
        # change of N (counted twice after a crash mid-move: less sent, never more).
        _, sent = await asyncio.to_thread(source.load_shaping)
        for (ip, provider, day), n in sorted(sent.items()):
            await into.warmup_add(ip, provider, day, n)
    finally:
        await reader.close()
        await source.close()
    for name in (SPOOL_FILE, f"{SPOOL_FILE}-wal", f"{SPOOL_FILE}-shm"):
        with contextlib.suppress(FileNotFoundError):
            (path / name).unlink()
    return moved


SUPPRESSION_REFRESH = 2.0
# Allocations of tracked objects between young-generation collections. A session allocates a
# few hundred (coroutines, futures, dicts), so CPython's default of 700 ran a collection every
# couple of messages; the older generations are collected every 10 of those, as by default.
GC_YOUNG_THRESHOLD = 20_000


def _settle_gc() -> None:
    """Once started: what startup built (modules, config, pydantic models, the spool's state)
    lives as long as the process, so it is moved out of the collector's sight (`gc.freeze`);
    collections then walk only what the traffic allocates, and run less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _follow_suppressions(store: SQLiteSuppressions) -> None:
    # A complaint or hard bounce one process takes must stop the others mailing that address.
    while True:
        await asyncio.sleep(SUPPRESSION_REFRESH)
        try:
            await store.refresh()
        except Exception as e:  # the next look tries again; the list only ever grows here
            log.warning("suppression list refresh failed", extra={"error": str(e)})


def _stop_with_parent(engine: Engine) -> None:
    """A worker whose supervisor died (kill -9) stops too, rather than hold the port and its
    spool beside the supervisor's next start."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_engine(
    config_path: Path,
    listen_host: str | None = None,
    worker: Worker | None = None,
    pod_name: str | None = None,
) -> int:
    """Run one engine until SIGTERM. `pod_name`: the pod it runs in (POD_NAME, read by the
    CLI), which decides the addresses it may send from; None outside a pod."""
    from mailfleet.mta.logs import setup_logging

    try:
        text = read_config_text(config_path)
        cfg = parse_config_text(text, str(config_path), listen_host)
        prepare(cfg)  # every file the config names, as a reload would check them
        engine = Engine(
            config_path,
            cfg,
            config_hash=config_digest(text),
            listen_host=listen_host,
            worker=worker,
            pod_name=pod_name,
        )
    except (ConfigError, CredentialsError, ValueError, OSError) as e:  # OSError: the token
        print(f"mailfleet mta: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level, cfg.logging.format)
    if worker is not None and worker.count > 1:
        _stop_with_parent(engine)
    try:
        import uvloop

        uvloop.run(engine.run())
    except OSError as e:
        log.error("engine failed", extra={"error": str(e)})
        return 1
    return 0
