# The local cluster with its real node (hack/cluster.py --node real, hack/realnode.py):
# containerd + runc (Debian), kubelet and kube-proxy built from the control plane's Kubernetes
# module, the CNI bridge plugins, a pause image built here, cluster DNS, local-path storage and
# NetworkPolicy enforcement, with the mailfleet image loaded. Binaries are cached in
# ~/.cache/mailfleet/node-<version>/ and node-addons/, images in ~/.cache/mailfleet/images/;
# state (PKI, etcd, containerd, kubelet, logs, PID files) lives in $(NODE_STATE). Needs root.

NODE_PY    := python3 hack/cluster.py
NODE_STATE ?= .local/realnode
NODE_APT   := containerd runc buildah debootstrap iptables conntrack ipset busybox-static

.PHONY: node-deps
node-deps: ## Debian packages the real node needs (containerd, runc, buildah, debootstrap, iptables, ipset, busybox)
	@missing=$$(for p in $(NODE_APT); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:" $$missing; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

.PHONY: node-build
node-build: envtest ## build (once) kubelet, kube-proxy, crictl, CNI plugins, pause/helper images, CoreDNS, local-path, kube-router
	@hack/nodebuild.sh

.PHONY: node-image
node-image: ## build (cached by content) the mailfleet image offline: debootstrap base + buildah
	@hack/image.sh

.PHONY: node-up
node-up: node-build node-image ## start the control plane and the real node; load the image into its containerd
	@$(NODE_PY) up --node real --image --state-dir $(NODE_STATE)

.PHONY: node-down
node-down: ## stop the real node (pods' sandboxes first) and its control plane, by PID
	@$(NODE_PY) down --state-dir $(NODE_STATE)

.PHONY: node-status
node-status: ## show whether the real node and its control plane run
	@$(NODE_PY) status --state-dir $(NODE_STATE)

.PHONY: node-clean
node-clean: ## node-down, then remove kube-proxy's iptables rules, the bridge and $(NODE_STATE)
	@$(NODE_PY) clean --state-dir $(NODE_STATE)

.PHONY: node-smoke
node-smoke: node-up ## a restricted pod of the image on the real node, via its pod IP and a ClusterIP; prints figures
	@python3 hack/node/smoke.py --state-dir $(NODE_STATE)

.PHONY: test-node
test-node: node-deps $(STAMP) ## the tests on the real node (tests/node: helm install, Services, storage, NetworkPolicy)
	$(VENV)/bin/pytest -m realnode tests
