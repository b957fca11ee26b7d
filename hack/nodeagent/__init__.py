"""A stand-in kubelet for the local control plane (hack/cluster.py): runs pods as local processes.

Modules:
    logic     pure decisions: $(VAR) expansion, env, phase and conditions, restart backoff,
              probe bookkeeping, ConfigMap/Secret projection, what cannot be honoured
    volumes   the kubelet's atomic writer (``..data`` symlink swap) for projected files
    kubeapi   a small HTTPS client (client certificate) with list+watch
    runner    the in-namespace exec helper: bind mounts, uid/gid, exec (run by path)
    agent     the node: Node + Lease, pod workers, the local volume provisioner
    __main__  ``python3 -m nodeagent --state-dir ... --server ...`` (PYTHONPATH=hack)

Standard library only, like hack/cluster.py, so it runs under any python3 >= 3.11.
"""
