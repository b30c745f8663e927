# e2e Kubernetes cluster. Included by the top-level Makefile; see e2e/README.md.
#   make cluster-up              start a cluster (PAXOSKV_CLUSTER=auto|host|kind), wait until usable
#   make cluster-down            stop everything cluster-up started and remove its state
#   make cluster-status          processes, nodes, pods, PVCs
#   make cluster-load IMAGE=...  import an image from the e2e/docker.sh daemon into the cluster
#   make cluster-smoke           StatefulSet + headless Service + PVC smoke test
#   make cluster-build           only build/cache the binaries and images
# Cache (survives fresh clones): $(PAXOSKV_E2E_CACHE); cluster state: $(PAXOSKV_E2E_STATE).
PAXOSKV_E2E_CACHE ?= /var/cache/paxoskv-e2e
PAXOSKV_E2E_STATE ?= /var/lib/paxoskv-e2e
KUBECONFIG_E2E    ?= $(PAXOSKV_E2E_STATE)/kubeconfig
E2E_CLUSTER_DIR   := e2e/cluster
export PAXOSKV_E2E_CACHE PAXOSKV_E2E_STATE KUBECONFIG_E2E

.PHONY: cluster-up cluster-down cluster-status cluster-load cluster-smoke cluster-build

cluster-build:
	$(E2E_CLUSTER_DIR)/install-deps.sh
	$(E2E_CLUSTER_DIR)/build.sh all

cluster-up:
	$(E2E_CLUSTER_DIR)/up.sh

cluster-down:
	$(E2E_CLUSTER_DIR)/down.sh

cluster-status:
	$(E2E_CLUSTER_DIR)/status.sh

cluster-load:
	@test -n "$(IMAGE)" || { echo "usage: make cluster-load IMAGE=name:tag" >&2; exit 2; }
	$(E2E_CLUSTER_DIR)/load.sh $(IMAGE)

cluster-smoke:
	$(E2E_CLUSTER_DIR)/smoke.sh
