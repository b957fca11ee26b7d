# Local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) built from the
# Go module proxy by hack/ and run on loopback; see hack/cluster.py. Binaries are cached in
# $(MAILFLEET_CACHE) (default ~/.cache/mailfleet/k8s-<version>/bin); state lives in .local/.

CLUSTER_PY    := python3 hack/cluster.py
CLUSTER_STATE ?= .local

.PHONY: envtest
envtest: ## build (once) the pinned kube-apiserver, kube-controller-manager, kubectl and etcd
	@hack/envtest.sh

.PHONY: cluster-up
cluster-up: envtest ## start the local control plane; writes .local/kubeconfig and .local/bin/kubectl
	@$(CLUSTER_PY) up --state-dir $(CLUSTER_STATE)

.PHONY: cluster-down
cluster-down: ## stop the local control plane (by PID)
	@$(CLUSTER_PY) down --state-dir $(CLUSTER_STATE)

.PHONY: cluster-status
cluster-status: ## show whether the local control plane runs
	@$(CLUSTER_PY) status --state-dir $(CLUSTER_STATE)

.PHONY: cluster-clean
cluster-clean: ## stop the local control plane and delete its PKI and etcd data
	@$(CLUSTER_PY) clean --state-dir $(CLUSTER_STATE)

.PHONY: test-kube
test-kube: envtest $(STAMP) ## the tests that need the control plane (marker: kube)
	$(VENV)/bin/pytest -m kube tests
