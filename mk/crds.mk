# CRDs: generated from the pydantic models in operator/api/crd_models.py, never edited by hand.

.PHONY: crds
crds: $(STAMP) ## regenerate crds/ and charts/mailfleet/crds/ from the pydantic models
	$(PY) -m mailfleet.operator.crdgen

.PHONY: crds-check
crds-check: $(STAMP) ## fail if crds/ or charts/mailfleet/crds/ drifted from the models
	$(PY) -m mailfleet.operator.crdgen --check

# The operations guide's tables of events, condition reasons and metrics: from the code.

.PHONY: docs
docs: $(STAMP) ## regenerate docs/operations.md's tables (events, conditions, metrics) from the code
	$(PY) -m mailfleet.operator.docgen

.PHONY: docs-check
docs-check: $(STAMP) ## fail if docs/operations.md's generated tables drifted from the code
	$(PY) -m mailfleet.operator.docgen --check
