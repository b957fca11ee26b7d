"""The `mailfleet` command: `mailfleet mta` runs the engine, `mailfleet operator` the operator."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

# `--processes auto`: one engine process per CPU (mailfleet.mta.supervisor.AUTO, not imported
# here so that `mailfleet --help` does not load the engine).
AUTO = "auto"


def _mta(args: argparse.Namespace) -> int:
    if args.check:
        from mailfleet.mta.config import ConfigError
        from mailfleet.mta.engine import check_config

        try:
            # The config and every file it names (users, DKIM keys, TLS): what a reload checks.
            check_config(Path(args.config), args.listen_address)
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 2
        print(f"{args.config}: ok")
        return 0
    # The pod this engine runs in, read here once and passed in: which of the pool's addresses
    # are its own. Unset outside a pod.
    pod_name = os.environ.get("POD_NAME") or None
    if args.worker:
        from mailfleet.mta.engine import Worker, run_engine

        index, count = (int(x) for x in args.worker.split("/"))
        worker = Worker(index, count, args.worker_admin or "127.0.0.1:0")
        return run_engine(Path(args.config), args.listen_address, worker, pod_name=pod_name)
    processes = default_processes(args.processes, pod_name)
    if processes != 1:
        from mailfleet.mta.supervisor import run_supervisor

        return run_supervisor(Path(args.config), processes, args.listen_address, pod_name)
    from mailfleet.mta.engine import run_engine

    return run_engine(Path(args.config), args.listen_address, pod_name=pod_name)


def default_processes(given: int | str | None, pod_name: str | None) -> int | str:
    """--processes as given; without it, one per CPU ("auto") when started by hand, and one in
    a pod: the operator passes the count it derives from the pod's CPU request (a pod without a
    CPU limit would otherwise start a process for every core of its node)."""
    if given is not None:
        return given
    return 1 if pod_name else AUTO


def _processes(text: str) -> int | str:
    if text == AUTO:
        return AUTO
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of processes (at least 1) or {AUTO!r}, got {text!r}"
        )
    return n


def _hash_password(args: argparse.Namespace) -> int:
    from mailfleet.mta.auth import hash_password

    password = sys.stdin.readline().rstrip("\n") if args.stdin else getpass.getpass()
    if not password:
        print("mailfleet mta hash-password: the password is empty", file=sys.stderr)
        return 2
    print(f"{args.user}:{hash_password(password)}")
    return 0


def _dkim_keygen(args: argparse.Namespace) -> int:
    from mailfleet.mta.dkimkeys import generate_key, zone_record

    path = Path(args.out)
    try:
        txt = generate_key(args.algorithm, path)
    except FileExistsError:
        print(f"mailfleet mta dkim-keygen: {path} exists; not overwriting it", file=sys.stderr)
        return 2
    print(f"wrote {path}; publish:")
    print(zone_record(args.domain, args.selector, txt))
    return 0


def _drain(args: argparse.Namespace) -> int:
    from mailfleet.mta.adminclient import admin_token, admin_url, drain_until_empty
    from mailfleet.mta.config import ConfigError, load_config

    listen = args.listen_address
    if args.listen_address_env:
        listen = os.environ.get(args.listen_address_env) or None
        if listen is None:
            print(f"mailfleet mta drain: --listen-address-env: ${args.listen_address_env} is "
                  "not set", file=sys.stderr)  # fmt: skip
            return 2
    try:
        cfg = load_config(args.config, listen)
        token = admin_token(cfg)
    except (ConfigError, ValueError) as e:
        print(f"mailfleet mta drain: {e}", file=sys.stderr)
        return 2
    empty, state = drain_until_empty(admin_url(cfg), token, args.wait)
    print(f"mailfleet mta drain: {'empty' if empty else 'not empty'} ({state})")
    return 0 if empty else 1


def _egress_proxy(args: argparse.Namespace) -> int:
    from mailfleet.mta.config import ConfigError
    from mailfleet.mta.egressproxy import check_proxy_config, run_proxy

    if args.check:
        try:
            check_proxy_config(Path(args.config), args.listen_address)
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 2
        print(f"{args.config}: ok")
        return 0
    return run_proxy(Path(args.config), args.listen_address)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailfleet", description=__doc__)
    sub = p.add_subparsers(
        dest="command", required=True, metavar="{mta,egress-proxy,operator,crds}"
    )

    mta = sub.add_parser("mta", help="run the delivery engine")
    mta.add_argument("--config", "-c", required=False, help="engine config (YAML)")
    mta.add_argument("--check", action="store_true", help="validate the config and exit")
    mta.add_argument(
        "--listen-address",
        default=None,
        help="listen on this address instead of the host part of submission.listen and "
        "admin.listen (a pod passes its pod IP)",
    )
    mta.add_argument(
        "--processes",
        type=_processes,
        default=None,
        metavar="N|auto",
        help="engine processes sharing the submission port (SO_REUSEPORT), each with its share "
        "of every limit and spool.path/<i>; the admin API answers for all of them. 'auto': one "
        "per CPU this process may use (its CPU affinity, capped by its cgroup's CPU quota). "
        "Default: auto when started by hand, 1 in a pod (POD_NAME set; the operator passes N)",
    )
    # How the supervisor starts one of its processes: "i/N", and its loopback admin address.
    mta.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    mta.add_argument("--worker-admin", default=None, help=argparse.SUPPRESS)
    mta_sub = mta.add_subparsers(dest="mta_command", metavar="{hash-password,dkim-keygen,drain}")
    dr = mta_sub.add_parser(
        "drain", help="tell a running engine to stop taking mail; wait until its queue is empty"
    )
    dr.add_argument("--config", "-c", required=True, help="the engine's config (YAML)")
    dr_listen = dr.add_mutually_exclusive_group()
    dr_listen.add_argument("--listen-address", default=None, help="the engine's --listen-address")
    dr_listen.add_argument(
        "--listen-address-env",
        default=None,
        metavar="VAR",
        help="the engine's --listen-address from this environment variable (a pod's preStop "
        "hook gets no $(VAR) expansion: POD_IP)",
    )
    dr.add_argument("--wait", type=float, default=60.0, help="seconds to wait for an empty queue")
    hp = mta_sub.add_parser("hash-password", help="print a users-file line for SMTP AUTH")
    hp.add_argument("user")
    hp.add_argument("--stdin", action="store_true", help="read the password from stdin")
    kg = mta_sub.add_parser("dkim-keygen", help="write a DKIM private key, print its TXT record")
    kg.add_argument("--domain", required=True)
    kg.add_argument("--selector", required=True)
    kg.add_argument("--algorithm", choices=["rsa-sha256", "ed25519-sha256"], default="rsa-sha256")
    kg.add_argument("--out", required=True, help="where to write the PEM private key")
    ep = sub.add_parser(
        "egress-proxy",
        help="run the SOCKS5 egress proxy that sends a node's pool addresses (one per node)",
    )
    ep.add_argument("--config", "-c", required=True, help="egress proxy config (YAML)")
    ep.add_argument("--check", action="store_true", help="validate the config and exit")
    ep.add_argument(
        "--listen-address",
        default=None,
        help="serve /metrics, /livez and /readyz on this address instead of adminListen's host"
        " (the pod passes its pod IP)",
    )
    sub.add_parser(
        "operator", help="run the Kubernetes operator (arguments: --help)", add_help=False
    )
    sub.add_parser("crds", help="write crds/ from the models (arguments: --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The operator and the CRD generator parse their own arguments.
    if argv and argv[0] == "operator":
        from mailfleet.operator.main import main as operator_main

        return operator_main(argv[1:])
    if argv and argv[0] == "crds":
        from mailfleet.operator.crdgen import main as crdgen_main

        return crdgen_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "mta":
        if args.mta_command == "hash-password":
            return _hash_password(args)
        if args.mta_command == "dkim-keygen":
            return _dkim_keygen(args)
        if args.mta_command == "drain":
            return _drain(args)
        if not args.config:
            parser.error("mta: --config FILE is required")
        return _mta(args)
    if args.command == "egress-proxy":
        return _egress_proxy(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
