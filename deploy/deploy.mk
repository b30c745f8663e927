# deploy.mk: image and chart targets, included by the top-level Makefile.
#   make image          build the server image (IMAGE=paxoskv:dev, BASE_IMAGE= to force a base)
#   make image-smoke    run the chart's pods as Docker containers (needs a daemon, helm)
#   make base-image     build the local debootstrap base (paxoskv-base:bookworm), cached
#   make chart-tools    install pinned helm, kubeconform, promtool into $(PAXOSKV_TOOLS)/bin (cached)
#   make chart-check    helm lint + helm template | kubeconform -strict, for every value set
#   make chart-schemas  regenerate deploy/schemas/ from the Go module proxy (after a bump)
#   make dashboard      regenerate the Grafana dashboard JSON from deploy/scripts/gen_dashboard.py

IMAGE              ?= paxoskv:dev
BASE_IMAGE         ?=
PAXOSKV_TOOLS      ?= /var/cache/paxoskv-tools
HELM_VERSION       ?= v3.19.5
KUBECONFORM_VERSION ?= v0.7.0
PROMETHEUS_MODULE_VERSION ?= v0.316.0
# Kubernetes version the chart is rendered and validated for (= deploy/schemas/kubernetes/).
CHART_KUBE_VERSION ?= 1.34.4
CHART_DIR          := deploy/helm/paxoskv
CHART_VALUES       := $(sort $(wildcard $(CHART_DIR)/ci/*-values.yaml))
HELM               := $(PAXOSKV_TOOLS)/bin/helm
KUBECONFORM        := $(PAXOSKV_TOOLS)/bin/kubeconform
PAXOSKV_APP_VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n1)

.PHONY: image image-smoke base-image chart-tools chart-check chart-schemas dashboard

image:
	IMAGE=$(IMAGE) BASE_IMAGE=$(BASE_IMAGE) EXTRA_TAGS="paxoskv:$(PAXOSKV_APP_VERSION)" \
	  deploy/scripts/build-image.sh

image-smoke: $(STAMP) chart-tools
	PAXOSKV_TOOLS=$(PAXOSKV_TOOLS) $(PY) deploy/scripts/docker_smoke.py --image $(IMAGE)

base-image:
	deploy/base-image/build.sh

chart-tools:
	@PAXOSKV_TOOLS=$(PAXOSKV_TOOLS) HELM_VERSION=$(HELM_VERSION) \
	  KUBECONFORM_VERSION=$(KUBECONFORM_VERSION) \
	  PROMETHEUS_MODULE_VERSION=$(PROMETHEUS_MODULE_VERSION) deploy/scripts/install-tools.sh

# kubeconform gets only local schema locations: the Kubernetes kinds and the
# prometheus-operator CRDs vendored in deploy/schemas/ (see gen_schemas.py). A kind without a
# schema is an error (no -ignore-missing-schemas), so nothing is skipped silently.
chart-check: chart-tools
	@set -e; \
	for f in $(CHART_VALUES); do \
	  echo "== $$f"; \
	  $(HELM) lint --strict --quiet $(CHART_DIR) -f $$f --kube-version $(CHART_KUBE_VERSION); \
	  $(HELM) template chart-check $(CHART_DIR) -f $$f --namespace paxoskv \
	    --kube-version $(CHART_KUBE_VERSION) \
	  | $(KUBECONFORM) -strict -summary -kubernetes-version $(CHART_KUBE_VERSION) \
	      -schema-location 'deploy/schemas/kubernetes/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json' \
	      -schema-location 'deploy/schemas/crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json' \
	      -; \
	done
	@$(PYTHON) deploy/scripts/gen_dashboard.py --check

chart-schemas: $(STAMP)
	$(PY) deploy/schemas/gen_schemas.py

dashboard:
	$(PYTHON) deploy/scripts/gen_dashboard.py
