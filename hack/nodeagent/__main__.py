"""``PYTHONPATH=hack python3 -m nodeagent --node-name N --state-dir DIR --server URL --ca CA
--cert CERT --key KEY [--provisioner-cert C --provisioner-key K]``"""

from __future__ import annotations

import argparse
import os
import logging
import sys
from pathlib import Path

from .agent import Config, serve
from .kubeapi import Credentials


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nodeagent", description=__doc__)
    ap.add_argument("--node-name", required=True)
    ap.add_argument("--state-dir", required=True, help="pods/, pvc/, agent.json live here")
    ap.add_argument("--server", required=True, help="https://127.0.0.1:PORT")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True, help="client certificate of system:node:<name>")
    ap.add_argument("--key", required=True)
    ap.add_argument("--provisioner-cert", help="client certificate of the volume provisioner")
    ap.add_argument("--provisioner-key")
    ap.add_argument("--kubelet-version", default="v0.0.0")
    ap.add_argument("--serving-cert", default="", help="serve `kubectl logs` with this cert")
    ap.add_argument("--serving-key", default="")
    ap.add_argument("--path-prefix", default="", help="put first on every container's PATH")
    ap.add_argument(
        "--keep-visible",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory of the node's programs no volume may hide in a container (repeatable)",
    )
    ap.add_argument("--max-pods", type=int, default=110)
    ap.add_argument("--backoff-initial", type=float, default=10.0)
    ap.add_argument("-v", "--verbose", action="store_true")
    ns = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s: %(message)s",
        stream=sys.stderr,
    )
    port = int(ns.server.rsplit(":", 1)[1].rstrip("/"))
    prov = None
    if ns.provisioner_cert:
        prov = Credentials(ns.server, ns.ca, ns.provisioner_cert, ns.provisioner_key)
    cfg = Config(
        node_name=ns.node_name,
        state_dir=Path(ns.state_dir).resolve(),
        node=Credentials(ns.server, ns.ca, ns.cert, ns.key),
        provisioner=prov,
        apiserver_port=port,
        kubelet_version=ns.kubelet_version,
        path_prefix=ns.path_prefix,
        keep_visible=tuple(os.path.realpath(d) for d in ns.keep_visible),
        max_pods=ns.max_pods,
        backoff_initial=ns.backoff_initial,
        serving_cert=ns.serving_cert,
        serving_key=ns.serving_key,
    )
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    serve(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
