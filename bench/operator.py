"""Operator benchmark: N SendingPools created at once on the local control plane.

    python -m bench.operator [--pools 1000] [--steady 300] [--settle 10] [--every SECONDS]

At 10,000 pools: `--pools 10000 --steady 60 --timeout 3600` (the window shortened: the figure is
writes per window, so compare it per minute).

A throwaway control plane (hack/cluster.py, free loopback ports, a temp dir) with the API
server's audit log on; crds/ and a DeliveryPolicy applied; N pools created in parallel batches;
then `mailfleet operator --standalone --namespace NS` started with a ServiceAccount token of its
own (bound to deploy/rbac.yaml's roles when that file exists). Measured:

- seconds from the operator's start until every pool has its children (StatefulSet, ConfigMap,
  two Services, PodDisruptionBudget, ServiceAccount, owned by the pool) and
  status.observedGeneration == metadata.generation (polled every `every` seconds: 1 s up to
  2,000 pools, then pools / 2,000 s, so that listing every pool does not itself load the two
  cores the operator runs on; children as metadata-only lists);
- the operator's peak RSS (VmHWM of its process);
- API writes (create/update/patch/delete by the operator's user, from the audit log, minus Kopf
  peering keep-alives) during `steady` seconds, counted once the cluster has settled (the
  controller-manager has made every StatefulSet's pods and each pool's status shows its
  StatefulSet's replicas: until then status changes are real news) and `settle` seconds more.

Prints `operator: N pools reconciled in S s, rss M MB, steady-state writes W` and returns the
figures from measure(). Everything it started is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
GROUP = "mailfleet.io"
VERSION = "v1alpha1"
OPERATOR_SA = "mailfleet-operator"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
PEERING_RESOURCES = frozenset({"clusterkopfpeerings", "kopfpeerings"})
# What a reconciled pool owns: kind -> how many at least.
CHILDREN = {
    "StatefulSet": 1,
    "ConfigMap": 1,
    "Service": 2,
    "PodDisruptionBudget": 1,
    "ServiceAccount": 1,
}
CHILD_LISTS = {
    "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Service": "/api/v1/namespaces/{ns}/services",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
}
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""


def _load_cluster() -> ModuleType:
    name = "mailfleet_hack_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "hack" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- manifests


def policy_manifest(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DeliveryPolicy",
        "metadata": {"name": "bench", "namespace": namespace, "labels": {"tier": "bench"}},
        "spec": {
            "providers": [
                {
                    "name": "gmail",
                    "match": {"mxSuffixes": ["google.com"]},
                    "perIP": {"maxConnections": 5, "maxMessageRate": "300/min"},
                }
            ]
        },
    }


def pool_manifest(i: int, namespace: str) -> dict[str, Any]:
    """Pool i: two IPs of its own (one standby) from the benchmarking range 198.18.0.0/15, DKIM
    from a shared Secret."""
    first = ipaddress.IPv4Address("198.18.0.1") + 2 * i
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SendingPool",
        "metadata": {"name": f"pool-{i:04d}", "namespace": namespace, "labels": {"tier": "bench"}},
        "spec": {
            "replicas": {"min": 1, "max": 3},
            "ips": [
                {"address": str(first), "hostname": f"mta{i}a.example.com"},
                {
                    "address": str(first + 1),
                    "hostname": f"mta{i}b.example.com",
                    "standby": True,
                },
            ],
            "dkim": [{"domain": "example.com", "selector": "bench", "secretRef": "dkim-bench"}],
            "policySelector": {"matchLabels": {"tier": "bench"}},
            "storage": {"size": "1Gi"},
        },
    }


def dkim_secret(namespace: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "dkim-bench", "namespace": namespace},
        "type": "Opaque",
        "data": {"private.key": base64.b64encode(pem).decode()},
    }


def k8s_list(items: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


# --------------------------------------------------------------------------- pure counting


def pools_done(pools: list[dict[str, Any]], children: dict[str, list[dict[str, Any]]]) -> int:
    """How many pools have all their children and a status for their current generation."""
    owned: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for kind, items in children.items():
        for item in items:
            for ref in item["metadata"].get("ownerReferences") or []:
                if ref.get("kind") == "SendingPool":
                    owned[ref["uid"]][kind] += 1
    done = 0
    for p in pools:
        meta, status = p["metadata"], p.get("status") or {}
        if status.get("observedGeneration") != meta.get("generation"):
            continue
        have = owned.get(meta["uid"], collections.Counter())
        if all(have[k] >= n for k, n in CHILDREN.items()):
            done += 1
    return done


def cluster_settled(pools: list[dict[str, Any]], statefulsets: list[dict[str, Any]]) -> int:
    """How many pools are settled: their StatefulSet's controller has caught up (status for the
    current generation, all pods made) and the pool's status shows the StatefulSet's replicas."""
    by_name = {s["metadata"]["name"]: s for s in statefulsets}
    done = 0
    for p in pools:
        sts = by_name.get(p["metadata"]["name"])
        if sts is None:
            continue
        st, pool_status = sts.get("status") or {}, p.get("status") or {}
        if st.get("observedGeneration") != sts["metadata"].get("generation"):
            continue
        if int(st.get("replicas") or 0) != int(sts["spec"].get("replicas") or 0):
            continue
        if (pool_status.get("replicas"), pool_status.get("readyReplicas")) != (
            int(st.get("replicas") or 0),
            int(st.get("readyReplicas") or 0),
        ):
            continue
        done += 1
    return done


def count_writes(audit_lines: list[str], username: str) -> collections.Counter[str]:
    """Write requests by `username` in audit log lines, as "verb resource[/subresource]"
    (Kopf peering keep-alives left out)."""
    out: collections.Counter[str] = collections.Counter()
    for line in audit_lines:
        if not line.strip():
            continue
        ev = json.loads(line)
        if ev.get("stage") != "ResponseComplete" or ev.get("verb") not in WRITE_VERBS:
            continue
        if ev.get("user", {}).get("username") != username:
            continue
        ref = ev.get("objectRef") or {}
        if ref.get("resource") in PEERING_RESOURCES:
            continue
        what = ref.get("resource", "?") + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        out[f"{ev['verb']} {what}"] += 1
    return out


# --------------------------------------------------------------------------- I/O


class Api:
    """Minimal HTTPS client for the admin user (client certificate), for the polling loop."""

    def __init__(self, cp: Any) -> None:
        self.server = cp.server
        self.ctx = ssl.create_default_context(cafile=str(cp.pki / "ca.crt"))
        self.ctx.load_cert_chain(str(cp.pki / "admin.crt"), str(cp.pki / "admin.key"))

    def get(self, path: str, accept: str = "application/json") -> dict[str, Any]:
        req = urllib.request.Request(self.server + path, headers={"Accept": accept})
        with urllib.request.urlopen(req, context=self.ctx, timeout=60) as r:
            body: dict[str, Any] = json.loads(r.read())
        return body


def token_kubeconfig(cp: Any, namespace: str, path: Path) -> str:
    """A kubeconfig for the operator's ServiceAccount; returns its audit username.

    Bound to deploy/rbac.yaml's roles when the file exists (least privilege), else cluster-admin.
    """
    rbac = REPO / "deploy" / "rbac.yaml"
    if rbac.is_file():
        # deploy/rbac.yaml names its own ServiceAccount and namespace: use them as they are.
        docs = [d for d in yaml.safe_load_all(rbac.read_text()) if d]
        sa = next(d for d in docs if d["kind"] == "ServiceAccount")
        sa_name, sa_ns = sa["metadata"]["name"], sa["metadata"].get("namespace", namespace)
        if cp.kubectl("get", "namespace", sa_ns, check=False).returncode != 0:
            cp.kubectl("create", "namespace", sa_ns)
        cp.kubectl("apply", "-f", str(rbac))
    else:
        sa_name, sa_ns = OPERATOR_SA, namespace
        cp.kubectl("-n", sa_ns, "create", "serviceaccount", sa_name)
        cp.kubectl(
            "create", "clusterrolebinding", "bench-operator", "--clusterrole=cluster-admin",
            f"--serviceaccount={sa_ns}:{sa_name}",
        )  # fmt: skip
    token = cp.kubectl("-n", sa_ns, "create", "token", sa_name, "--duration=24h").stdout.strip()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "bench",
                "cluster": {"server": cp.server, "certificate-authority": str(cp.pki / "ca.crt")},
            }
        ],
        "users": [{"name": sa_name, "user": {"token": token}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": sa_name}}],
        "current-context": "bench",
    }
    path.write_text(json.dumps(cfg))
    path.chmod(0o600)
    return f"system:serviceaccount:{sa_ns}:{sa_name}"


def create_in_parallel(cp: Any, items: list[dict[str, Any]], batches: int) -> None:
    chunks = [items[i::batches] for i in range(batches)]
    with ThreadPoolExecutor(batches) as ex:
        for f in [
            ex.submit(cp.kubectl, "create", "-f", "-", input=k8s_list(c), timeout=600)
            for c in chunks
        ]:
            f.result()


def vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRss:
    """VmHWM of a process, read every second (the last reading before it exits wins)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.kb = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.kb = max(self.kb, vm_hwm_kb(self.pid))

    def stop(self) -> int:
        self.kb = max(self.kb, vm_hwm_kb(self.pid))
        self._stop.set()
        self._thread.join()
        return self.kb


def operator_command() -> list[str]:
    exe = Path(sys.executable).with_name("mailfleet")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from mailfleet.cli import main; sys.exit(main())"]


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    cluster = _load_cluster()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=cluster._die_with_parent,
        )  # fmt: skip
    try:
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to a process this bench started, SIGKILL if it is still there after 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_reconciled(
    api: Api,
    namespace: str,
    pools: int,
    proc: subprocess.Popen[bytes],
    timeout: float,
    progress: Callable[[str], None],
    every: float = 1.0,
) -> tuple[float | None, int]:
    """Poll until every pool is done: (seconds since start or None on timeout, pools done)."""
    t0 = time.monotonic()
    done, last_report = 0, 0.0
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with code {proc.returncode}")
        items = (
            api.get(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/sendingpools")["items"] or []
        )
        # The operator writes a pool's status after its children: the children are listed only
        # once every status is current, so the poll loads the API server little meanwhile.
        done = 0
        current = sum(
            1
            for p in items
            if (p.get("status") or {}).get("observedGeneration") == p["metadata"].get("generation")
        )
        if current >= pools:
            children = {
                kind: api.get(path.format(ns=namespace), METADATA_ONLY)["items"] or []
                for kind, path in CHILD_LISTS.items()
            }
            done = pools_done(items, children)
        elapsed = time.monotonic() - t0
        if done >= pools:
            return elapsed, done
        if elapsed - last_report >= 10:
            progress(
                f"  {elapsed:5.0f} s: {done}/{pools} pools reconciled ({current} with a status)"
            )
            last_report = elapsed
        time.sleep(every)
    return None, done


def wait_settled(
    api: Api,
    namespace: str,
    pools: int,
    proc: subprocess.Popen[bytes],
    timeout: float,
    progress: Callable[[str], None],
    every: float = 2.0,
) -> float | None:
    """Poll until cluster_settled covers every pool: seconds waited, or None on timeout."""
    t0 = time.monotonic()
    last_report = 0.0
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with code {proc.returncode}")
        items = api.get(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/sendingpools")["items"]
        sts = api.get(CHILD_LISTS["StatefulSet"].format(ns=namespace))["items"]
        done = cluster_settled(items or [], sts or [])
        elapsed = time.monotonic() - t0
        if done >= pools:
            return elapsed
        if elapsed - last_report >= 10:
            progress(f"  settling: {done}/{pools} pools show their StatefulSet's pods")
            last_report = elapsed
        time.sleep(every)
    return None


def measure(
    pools: int = 1000,
    steady: float = 300.0,
    *,
    settle: float = 10.0,
    namespace: str = "bench",
    timeout: float = 900.0,
    keep: bool = False,
    every: float | None = None,
    progress: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Run the benchmark; returns pools, reconcile_s (None if not all within timeout),
    pools_done, rss_mb, steady_writes, steady_s, writes_by (Counter during the window),
    reconcile_writes (total during the cold start and the controller-manager's catch-up),
    settled_s (seconds from reconciled until the cluster settled), state_dir (only when keep)."""
    cluster = _load_cluster()
    look = every if every is not None else max(1.0, pools / 2000)
    bin_dir = cluster.ensure_binaries()
    state = Path(tempfile.mkdtemp(prefix="mailfleet-bench-operator-"))
    audit_log = state / "audit.log"
    (state / "audit-policy.yaml").write_text(AUDIT_POLICY)
    cp = cluster.ControlPlane(
        bin_dir,
        state / "kube",
        fsync=False,
        die_with_parent=True,
        # The operator alone: a thousand pools' pods stay Pending, as without a kubelet.
        node=False,
        extra_apiserver_args=[
            f"--audit-policy-file={state / 'audit-policy.yaml'}",
            f"--audit-log-path={audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=0",
            "--audit-log-mode=blocking",
        ],
    )
    result: dict[str, Any] = {"pools": pools}
    try:
        t = time.monotonic()
        cp.start()
        progress(f"control plane up in {time.monotonic() - t:.1f} s ({cp.server})")
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.wait_crds_established()
        cp.kubectl("create", "namespace", namespace)
        cp.kubectl(
            "create",
            "-f",
            "-",
            input=k8s_list([policy_manifest(namespace), dkim_secret(namespace)]),
        )
        t = time.monotonic()
        manifests = [pool_manifest(i, namespace) for i in range(pools)]
        create_in_parallel(cp, manifests, batches=max(4, pools // 1000))
        progress(f"{pools} SendingPools created in {time.monotonic() - t:.1f} s")

        kubeconfig = state / "operator.kubeconfig"
        username = token_kubeconfig(cp, namespace, kubeconfig)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        free = cluster.free_port
        cmd = [
            *operator_command(), "operator", "--standalone", "--namespace", namespace,
            "--liveness", f"http://127.0.0.1:{free()}/healthz", "--metrics-port", str(free()),
        ]  # fmt: skip
        api = Api(cp)
        start_offset = audit_log.stat().st_size
        with running(cmd, env, state / "operator.log") as proc:
            rss = PeakRss(proc.pid)
            try:
                elapsed, done = wait_reconciled(
                    api, namespace, pools, proc, timeout, progress, look
                )
                result.update(reconcile_s=elapsed, pools_done=done)
                if elapsed is not None:
                    progress(f"all {pools} pools reconciled in {elapsed:.1f} s")
                    settled = wait_settled(
                        api, namespace, pools, proc, timeout, progress, max(2.0, look)
                    )
                    result["settled_s"] = settled
                    progress(
                        f"the controller-manager caught up {settled or 0:.0f} s later; "
                        f"settling {settle:.0f} s"
                    )
                    time.sleep(settle)
                    window_start = audit_log.stat().st_size
                    progress(f"counting writes for {steady:.0f} s of steady state")
                    deadline = time.monotonic() + steady
                    while time.monotonic() < deadline:
                        if proc.poll() is not None:
                            raise RuntimeError(f"the operator exited with code {proc.returncode}")
                        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                    window_end = audit_log.stat().st_size
                    with audit_log.open() as f:
                        f.seek(start_offset)
                        cold = f.read(window_start - start_offset).splitlines()
                        window = f.read(window_end - window_start).splitlines()
                    writes = count_writes(window, username)
                    result.update(
                        steady_s=steady,
                        steady_writes=sum(writes.values()),
                        writes_by=dict(writes),
                        reconcile_writes=sum(count_writes(cold, username).values()),
                    )
            finally:
                result["rss_mb"] = rss.stop() / 1024
    finally:
        cp.stop()
        if keep:
            result["state_dir"] = str(state)
        else:
            shutil.rmtree(state, ignore_errors=True)
    return result


def summary(r: dict[str, Any]) -> str:
    if r.get("reconcile_s") is None:
        return (
            f"operator: {r['pools']} pools NOT all reconciled ({r.get('pools_done', 0)} done) "
            f"before the timeout, rss {r.get('rss_mb', 0):.0f} MB"
        )
    return (
        f"operator: {r['pools']} pools reconciled in {r['reconcile_s']:.1f} s, "
        f"rss {r['rss_mb']:.0f} MB, steady-state writes {r['steady_writes']}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pools", type=int, default=1000)
    ap.add_argument("--steady", type=float, default=300.0, help="seconds of steady state counted")
    ap.add_argument(
        "--settle", type=float, default=10.0, help="seconds between reconciled and the window"
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="give up reconciling after this")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, audit log)")
    ap.add_argument(
        "--every", type=float, help="seconds between looks at the pools (default max(1, N/2000))"
    )
    a = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the control plane and the operator are stopped by PID.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    r = measure(a.pools, a.steady, settle=a.settle, timeout=a.timeout, keep=a.keep, every=a.every)
    if r.get("writes_by"):
        print(f"  steady-state writes by verb/resource: {r['writes_by']}", file=sys.stderr)
    if "reconcile_writes" in r:
        print(f"  writes during the cold start: {r['reconcile_writes']}", file=sys.stderr)
    if r.get("settled_s") is not None:
        print(f"  cluster settled {r['settled_s']:.0f} s after reconciled", file=sys.stderr)
    if "state_dir" in r:
        print(f"  logs kept in {r['state_dir']}", file=sys.stderr)
    print(summary(r), flush=True)
    return 0 if r.get("reconcile_s") is not None else 1


if __name__ == "__main__":
    sys.exit(main())
