"""A stand-in kubelet for the local cluster (hack/cluster.py): runs pods as local processes.

Modules:
    logic     pure decisions: $(VAR) expansion, env, phase and conditions, restart backoff,
              probe bookkeeping, ConfigMap/Secret projection, what cannot be honoured
    volumes   the kubelet's atomic writer (``..data`` symlink swap) for projected files
    kubeapi   a small HTTPS client (client certificate) with list+watch
    runner    the in-namespace exec helper: bind mounts, read-only root, uid/gid, exec
    server    the kubelet API's /containerLogs (kubectl logs through the API server)
    agent     the node: Node + Lease, pod workers, the local volume provisioner
    __main__  ``python3 -m nodeagent --state-dir ... --server ...`` (PYTHONPATH=hack)

Standard library only, like hack/cluster.py, so it runs under any python3 >= 3.11.

Where it differs from a kubelet (a pod spec field it cannot honour is named in a Warning event,
reason NotHonoured, once per pod):
- No images: the container's command runs with the node's programs, PATH starting with the
  repository's .venv/bin (an ImageNotPulled event says so). A container without ``command``
  runs its ``args``.
- Isolation is a mount and a UTS namespace per container plus cgroup v1 cpu/memory limits
  (cpu.shares from requests, CFS quota and memory limit from limits, OOMKilled reported) where
  /sys/fs/cgroup is writable; no network, PID, IPC or user namespace, no capabilities, seccomp
  or no_new_privs. Each pod has its own loopback address (127.10.N.M) as podIP, but every
  process can reach every address, and the node's files outside the mounted volumes are
  visible (read-only with readOnlyRootFilesystem).
- runAsUser/runAsGroup/fsGroup are honoured, except where that user cannot reach the program
  (a Python under /root): then it runs as the agent's user, with an event.
- Volumes: configMap, secret, downwardAPI, projected (with service account tokens), emptyDir
  (on disk), hostPath and PVCs (hostPath PVs from the agent's provisioner, StorageClass
  mailfleet-local, Immediate binding). Others are reported.
- No kube-proxy or cluster DNS: ClusterIPs do not route; KUBERNETES_SERVICE_HOST points at the
  API server's loopback address; service links are not set.
- The kubelet API serves only /containerLogs (kubectl logs, -f, -p, --tail): no exec, attach,
  port-forward, metrics or stats. Logs are raw (no CRI timestamps), one file per container.
- Sidecars (init containers with restartPolicy Always), ephemeral containers, grpc probes,
  hostPort and pod-level resources are not supported.
- Stopping the agent stops the pods' processes (bounded) without running preStop hooks;
  starting it again restarts them (restartCount goes up).
"""
