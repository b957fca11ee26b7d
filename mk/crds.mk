# CRDs: generated from the pydantic models in operator/crd_models.py, never edited by hand.

.PHONY: crds
crds: $(STAMP) ## regenerate crds/ and charts/mailfleet/crds/ from the pydantic models
	$(PY) -m mailfleet.operator.crdgen

.PHONY: crds-check
crds-check: $(STAMP) ## fail if crds/ or charts/mailfleet/crds/ drifted from the models
	$(PY) -m mailfleet.operator.crdgen --check
