"""`mailfleet operator`: run the Kopf operator that turns SendingPools into MTA workloads."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import secrets
import sys
from typing import TYPE_CHECKING

import kopf

if TYPE_CHECKING:
    from mailfleet.operator.settings import WebhookOptions

DEFAULT_PEERING = "mailfleet"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mailfleet operator",
        description="Reconcile SendingPools, DeliveryPolicies and IPWarmups (mailfleet.io).",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="serve this namespace (repeatable); default: all namespaces",
    )
    where.add_argument(
        "--all-namespaces", "-A", action="store_true", help="serve every namespace (the default)"
    )
    peering = p.add_mutually_exclusive_group()
    peering.add_argument(
        "--standalone", action="store_true", help="no peering: for development, one operator only"
    )
    peering.add_argument(
        "--peering",
        metavar="NAME",
        help=f"the Kopf peering object that elects one active replica (default {DEFAULT_PEERING}"
        ", used when it exists)",
    )
    p.add_argument(
        "--priority",
        type=int,
        metavar="N",
        help="peering priority; the highest works, the others wait (default: random, so that "
        "replicas of one Deployment never tie: Kopf pauses every operator on a tie)",
    )
    p.add_argument(
        "--liveness",
        metavar="URL-or-PORT",
        help="serve a liveness endpoint, e.g. 8081 or http://0.0.0.0:8081/healthz",
    )
    p.add_argument("--metrics-port", type=int, metavar="N", help="serve /metrics on this port")
    p.add_argument("--metrics-addr", default="0.0.0.0", metavar="ADDR", help=argparse.SUPPRESS)
    p.add_argument("--engine-image", metavar="IMG", help="the default engine image of pools")
    p.add_argument(
        "--dmarc-listen",
        metavar="HOST:PORT",
        help="serve POST /dmarc/<namespace>/<sendingdomain> for DMARC aggregate reports "
        "(needs --dmarc-token-file)",
    )
    p.add_argument(
        "--dmarc-token-file",
        metavar="PATH",
        help="a file holding the bearer token report uploads must carry",
    )
    p.add_argument(
        "--dmarc-url",
        metavar="URL",
        help="the URL pods reach --dmarc-listen at, e.g. http://mailfleet-operator.mailfleet:8090"
        ": pools then take the reports mailed to a SendingDomain's dmarc.reportAddress "
        "(dmarc.acceptReportsFrom) and forward them there",
    )
    p.add_argument(
        "--dns-nameservers",
        metavar="IP[,IP...]",
        help="the resolvers SendingDomain checks ask when the domain's spec.dns names none "
        "(default: the operator's /etc/resolv.conf)",
    )
    p.add_argument("--dns-port", type=int, default=53, metavar="N", help="their port (default 53)")
    e = p.add_argument_group("managed egress (SendingPools with egress.mode: managed)")
    e.add_argument(
        "--egress-namespace",
        metavar="NS",
        help="where the per-node egress proxies run (default: $POD_NAMESPACE, the operator's "
        "own namespace in a pod; else default)",
    )
    e.add_argument(
        "--egress-port",
        type=int,
        default=1080,
        metavar="N",
        help="the proxies' SOCKS5 port on each sending address (default 1080)",
    )
    e.add_argument(
        "--egress-admin-port",
        type=int,
        default=9481,
        metavar="N",
        help="the proxies' /metrics and /readyz port on their node's address (default 9481)",
    )
    add_webhook_arguments(p)
    p.add_argument("--verbose", "-v", action="store_true", help="log more (never Secret data)")
    return p


def add_webhook_arguments(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("admission webhook (cross-object validation)")
    w.add_argument(
        "--webhook-listen",
        metavar="HOST:PORT",
        help="serve the validating admission webhook (HTTPS) here; off by default",
    )
    certs = w.add_mutually_exclusive_group()
    certs.add_argument(
        "--webhook-cert-dir",
        metavar="DIR",
        help="a provided certificate: tls.crt, tls.key and ca.crt (cert-manager's Secret)",
    )
    certs.add_argument(
        "--webhook-tls-secret",
        metavar="NAME",
        help="manage the certificate: a CA and a server certificate kept in this Secret of "
        "the operator's namespace (POD_NAMESPACE), shared by the replicas",
    )
    w.add_argument(
        "--webhook-service",
        metavar="NAME",
        help="the webhook Service: its DNS names go into the managed certificate",
    )
    w.add_argument(
        "--webhook-san",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address for the managed certificate (repeatable)",
    )
    w.add_argument(
        "--webhook-configuration",
        metavar="NAME",
        help="the ValidatingWebhookConfiguration whose caBundle the operator keeps (managed "
        "certificate)",
    )
    w.add_argument(
        "--webhook-work-dir",
        default="/tmp/mailfleet-webhook",
        metavar="DIR",
        help="where the managed certificate's files are written for the TLS server",
    )


def webhook_options(args: argparse.Namespace) -> WebhookOptions | str | None:
    """The webhook's options from the command line (None: no webhook), or an error to print."""
    if args.webhook_listen is None:
        return None
    import os
    from pathlib import Path

    host, _, port = args.webhook_listen.rpartition(":")
    if not port.isdigit():
        return "--webhook-listen wants HOST:PORT"
    if not (args.webhook_cert_dir or args.webhook_tls_secret):
        return "--webhook-listen needs --webhook-cert-dir or --webhook-tls-secret"
    namespace = os.environ.get("POD_NAMESPACE") or "default"
    names = list(args.webhook_san)
    if args.webhook_service:
        from mailfleet.operator.decide.webhookcerts import service_names

        names = service_names(args.webhook_service, namespace) + names
    if args.webhook_tls_secret and not names:
        return "--webhook-tls-secret needs --webhook-service or --webhook-san (the names)"
    from mailfleet.operator.settings import WebhookOptions

    return WebhookOptions(
        host=host.strip("[]") or "0.0.0.0",
        port=int(port),
        cert_dir=Path(args.webhook_cert_dir) if args.webhook_cert_dir else None,
        tls_secret=args.webhook_tls_secret,
        namespace=namespace,
        names=names,
        work_dir=Path(args.webhook_work_dir),
        configuration=args.webhook_configuration,
    )


def _quiet_success(record: logging.LogRecord) -> bool:
    """Drop "Handler ... succeeded": one per watch event, nothing an SRE needs."""
    return not (record.levelno <= logging.INFO and str(record.msg).endswith("succeeded."))


def liveness_url(value: str | None) -> str | None:
    if value is None:
        return None
    if value.isdigit():
        return f"http://0.0.0.0:{value}/healthz"
    return value


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.FULL)
    logging.getLogger("mailfleet.operator").setLevel(
        logging.DEBUG if args.verbose else logging.INFO
    )
    # Registers the handlers with Kopf's default registry; they read `settings` from the memo.
    from mailfleet.operator import handlers  # noqa: F401
    from mailfleet.operator.settings import Memo, Settings

    settings = Settings()
    if args.engine_image:
        settings.image = args.engine_image
    settings.egress_namespace = (
        args.egress_namespace or os.environ.get("POD_NAMESPACE") or "default"
    )
    for flag, port in (
        ("--egress-port", args.egress_port),
        ("--egress-admin-port", args.egress_admin_port),
    ):
        if not 1 <= port <= 65535:
            print(
                f"mailfleet operator: {flag}: expected a port 1-65535, got {port}", file=sys.stderr
            )
            return 2
    settings.egress_port, settings.egress_admin_port = args.egress_port, args.egress_admin_port
    if (args.dmarc_listen is None) != (args.dmarc_token_file is None):
        print(
            "mailfleet operator: --dmarc-listen and --dmarc-token-file go together", file=sys.stderr
        )
        return 2
    if args.dmarc_listen is not None:
        host, _, port = args.dmarc_listen.rpartition(":")
        try:
            with open(args.dmarc_token_file) as f:
                token = f.read().strip()
        except OSError as e:
            print(f"mailfleet operator: --dmarc-token-file: {e}", file=sys.stderr)
            return 2
        if not port.isdigit() or not token:
            print(
                "mailfleet operator: --dmarc-listen wants HOST:PORT and a non-empty token",
                file=sys.stderr,
            )
            return 2
        settings.dmarc = (host.strip("[]") or "0.0.0.0", int(port), token)
    if args.dmarc_url is not None:
        if args.dmarc_listen is None or not re.fullmatch(r"https?://[^\s/]+/?", args.dmarc_url):
            print(
                "mailfleet operator: --dmarc-url wants http(s)://host:port and --dmarc-listen",
                file=sys.stderr,
            )
            return 2
        settings.dmarc_url = args.dmarc_url.rstrip("/")
    if args.dns_nameservers:
        servers = tuple(s.strip() for s in args.dns_nameservers.split(",") if s.strip())
        try:
            for s in servers:
                ipaddress.ip_address(s)
        except ValueError as e:
            print(f"mailfleet operator: --dns-nameservers: {e}", file=sys.stderr)
            return 2
        if not 0 < args.dns_port < 65536:
            print("mailfleet operator: --dns-port must be 1 to 65535", file=sys.stderr)
            return 2
        settings.dns = (servers, args.dns_port)
    webhook = webhook_options(args)
    if isinstance(webhook, str):
        print(f"mailfleet operator: {webhook}", file=sys.stderr)
        return 2
    if webhook is not None:
        from mailfleet.operator import webhook as _  # noqa: F401  (registers its handlers)

        settings.webhook = webhook
    if args.metrics_port is not None:
        settings.metrics.serve(args.metrics_port, args.metrics_addr)
    namespaces: list[str] = args.namespace
    settings.namespaces = list(namespaces)
    peering_name = args.peering or DEFAULT_PEERING
    # An explicitly named peering must exist; the default one is used only if it does.
    settings.peering_mandatory = args.peering is not None
    try:
        kopf.run(
            standalone=args.standalone,
            peering_name=None if args.standalone else peering_name,
            namespaces=namespaces,
            clusterwide=not namespaces,
            priority=args.priority if args.priority is not None else 1 + secrets.randbelow(2**30),
            liveness_endpoint=liveness_url(args.liveness),
            memo=Memo(settings),
        )
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        print(f"mailfleet operator: {e}", file=sys.stderr)
        return 1
    return 0
