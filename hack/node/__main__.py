"""python3 hack/node {up,down,status,clean,load-image} [--state-dir DIR] [--image]

up          control plane (hack/cluster.py, no node agent) + containerd, kubelet, kube-proxy;
            --image also builds (hack/image.sh) and loads the mailfleet image
down        stop everything by PID (pods' sandboxes removed first)
status      what runs, with PIDs
clean       down + kube-proxy's iptables rules, the bridge and the state dir
load-image  build (cached) and import the mailfleet image into the node's containerd
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import node as n


def build_image() -> tuple[str, Path, float]:
    t0 = time.monotonic()
    out = subprocess.run([str(n.IMAGE_SH)], stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        raise n.NodeError("hack/image.sh failed")
    ref, tar = out.stdout.split()[-2:]
    return ref, Path(tar), time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status", "clean", "load-image"])
    ap.add_argument("--state-dir", default=str(n.default_state_dir()))
    ap.add_argument("--image", action="store_true", help="up: build and load the mailfleet image")
    ap.add_argument("--timeout", type=float, default=240.0)
    ns = ap.parse_args(argv)
    try:
        if ns.command in ("down", "status", "clean"):
            node = n.make_node(Path(ns.state_dir), build=False)
        else:
            node = n.make_node(Path(ns.state_dir))
        if ns.command == "up":
            tar = None
            if ns.image:
                ref, tar, secs = build_image()
                print(f"image {ref} ({secs:.1f}s)")
            figs = node.up(timeout=ns.timeout, image_tar=tar)
            print("node up: " + ", ".join(f"{k} {v:.1f}s" for k, v in figs.items()))
            print(f"  export KUBECONFIG={node.cp.kubeconfig}")
            print(f"  kubectl:  {node.cp.kubectl_path}")
            print(f"  logs:     {node.state_dir / 'log'}")
            print(
                f"  node:     {n.NODE_NAME} {n.NODE_IP} pods {n.POD_CIDR} services {n.SERVICE_CIDR}"
            )
        elif ns.command == "load-image":
            ref, tar, secs = build_image()
            node.load_image(tar)
            print(f"{ref} loaded (build {secs:.1f}s)")
        elif ns.command == "down":
            stopped = node.down()
            print("stopped:", ", ".join(stopped) if stopped else "nothing was running")
        elif ns.command == "status":
            running = {**node.cp.running(), **node.running()}
            comps = [*node.cp.components, "kube-scheduler", *n.NODE_COMPONENTS]
            for c in comps:
                print(f"{c:26} {'pid ' + str(running[c]) if c in running else 'stopped'}")
            return 0 if all(c in running for c in comps) else 1
        elif ns.command == "clean":
            node.clean()
            print("removed", node.state_dir)
    except (n.NodeError, n.cluster.ClusterError) as e:
        print(f"hack/node {ns.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
