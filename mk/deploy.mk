# Container image, Helm chart and a kind cluster, for people who have Docker and a real cluster.
# The tests need none of this: they use the local control plane (mk/cluster.mk).
#
#   make image                     hack/image.sh: buildah (or docker build), tagged by content
#   make image deploy IMAGE_REPO=registry.example.com/mailfleet IMAGE_TAG=0.1.0
#   make kind-up image kind-load deploy
#   make kind-down

IMAGE_REPO      ?= mailfleet
IMAGE_TAG       ?= dev
IMAGE           ?= $(IMAGE_REPO):$(IMAGE_TAG)
KIND            ?= kind
KIND_CLUSTER    ?= mailfleet
KIND_NODE_IMAGE ?=
RELEASE         ?= mailfleet
DEPLOY_NS       ?= mailfleet-system
HELM_ARGS       ?=
KUBECTL         ?= kubectl
HELM             = $(shell hack/helm.sh)

# hack/image.sh: buildah from a base made here by debootstrap (no registry), or `docker build`
# where there is no buildah; tagged mailfleet:<hash of what goes in>, rebuilt only when that
# changes. IMAGE_TAG given: also tagged $(IMAGE), for `make deploy` or a push.
.PHONY: image
image: ## build the operator/engine image (cached by content); IMAGE_REPO/IMAGE_TAG also tag it
	@set -e; ref=$$(hack/image.sh | tail -1 | cut -d' ' -f1); echo "$$ref"; \
	if [ "$(IMAGE_TAG)" != "dev" ]; then \
	  if command -v buildah >/dev/null; then buildah tag "$$ref" "$(IMAGE)"; else docker tag "$$ref" "$(IMAGE)"; fi; \
	  echo "tagged $(IMAGE)"; \
	fi

.PHONY: helm
helm: ## build (once) the pinned helm from the Go module proxy; prints its path
	@hack/helm.sh

.PHONY: chart
chart: ## regenerate the chart's RBAC template from deploy/rbac.yaml
	@python3 hack/sync-chart.py

.PHONY: chart-check
chart-check: ## fail if the chart's RBAC drifted from deploy/rbac.yaml; helm lint
	python3 hack/sync-chart.py --check
	$(HELM) lint charts/mailfleet --strict

.PHONY: kind-up
kind-up: ## create a kind cluster (1 control plane + 2 workers; needs Docker and kind)
	$(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml \
	  $(if $(KIND_NODE_IMAGE),--image $(KIND_NODE_IMAGE))

.PHONY: kind-load
kind-load: ## load $(IMAGE) into the kind cluster's nodes
	$(KIND) load docker-image $(IMAGE) --name $(KIND_CLUSTER)

.PHONY: kind-down
kind-down: ## delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)

# Helm installs a chart's crds/ only on first install and never upgrades them, so the CRDs are
# applied (server-side: they are large) before every install or upgrade.
.PHONY: deploy
deploy: ## install/upgrade the CRDs and the operator chart into the current kubectl context
	$(KUBECTL) apply --server-side --force-conflicts -f crds/
	$(HELM) upgrade --install $(RELEASE) charts/mailfleet \
	  --namespace $(DEPLOY_NS) --create-namespace \
	  --set image.repository=$(IMAGE_REPO) --set image.tag=$(IMAGE_TAG) \
	  $(HELM_ARGS)

.PHONY: undeploy
undeploy: ## uninstall the operator release (the CRDs and your pools stay)
	$(HELM) uninstall $(RELEASE) --namespace $(DEPLOY_NS)
