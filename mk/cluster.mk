# Local Kubernetes cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) built
# from the Go module proxy by hack/ and run on loopback, plus one node: hack/nodeagent stands in
# for the kubelet and runs pods as local processes; see hack/cluster.py. Binaries are cached in
# $(MAILFLEET_CACHE) (default ~/.cache/mailfleet/k8s-<version>/bin); state lives in .local/
# (the node's pods, logs and volumes under .local/node/).

CLUSTER_PY    := python3 hack/cluster.py
CLUSTER_STATE ?= .local

.PHONY: envtest
envtest: ## build (once) the pinned kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd
	@hack/envtest.sh

.PHONY: cluster-up
cluster-up: envtest ## start the local cluster and its node; writes .local/kubeconfig and .local/bin/kubectl
	@$(CLUSTER_PY) up --state-dir $(CLUSTER_STATE)

.PHONY: cluster-down
cluster-down: ## stop the local cluster (by PID; the node stops its pods first)
	@$(CLUSTER_PY) down --state-dir $(CLUSTER_STATE)

.PHONY: cluster-status
cluster-status: ## show whether the local cluster and its node run
	@$(CLUSTER_PY) status --state-dir $(CLUSTER_STATE)

.PHONY: cluster-clean
cluster-clean: ## stop the local cluster and delete its PKI, etcd data and node state
	@$(CLUSTER_PY) clean --state-dir $(CLUSTER_STATE)

.PHONY: test-kube
test-kube: envtest $(STAMP) ## the tests that need the control plane (marker: kube)
	$(VENV)/bin/pytest -m kube tests
