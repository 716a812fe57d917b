# The two commands the README promises: `make demo` and `make test`.
VENV := .venv/bin

.PHONY: bootstrap demo test lint crds mar kube-binaries cluster-up cluster-down

bootstrap:
	@scripts/bootstrap.sh

# kube-apiserver, kube-controller-manager, kube-scheduler, etcd and kwok built from Go modules into
# ~/.cache/policy-rollouts/kube/ (cold: see README; warm: instant).
kube-binaries:
	@scripts/kube-binaries.sh >/dev/null

# A real control plane on loopback, no Docker: writes .cluster/kubeconfig.
cluster-up: bootstrap kube-binaries
	$(VENV)/python -m rollout_operator.cli.main cluster up --dir .cluster

cluster-down:
	$(VENV)/python -m rollout_operator.cli.main cluster down --dir .cluster

demo: bootstrap
	$(VENV)/python -m rollout_operator.cli.main demo

# mypy checks the packages listed under [tool.mypy] in pyproject.toml (strict).
lint: bootstrap
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/python -m rollout_operator.crdgen --check

crds: bootstrap
	$(VENV)/python -m rollout_operator.crdgen --write

test: lint kube-binaries
	$(VENV)/python -m pytest

# TorchServe model archive from a policy artifact: make mar ARTIFACT=dir OUT=dir
mar: bootstrap
	@test -n "$(ARTIFACT)" -a -n "$(OUT)" || { echo "usage: make mar ARTIFACT=<artifact dir> OUT=<output dir>"; exit 2; }
	$(VENV)/python -m policy_server.torchserve.archive --artifact "$(ARTIFACT)" --out "$(OUT)"

# ---------------------------------------------------------------------------------------------
# Local cluster (needs Docker, kind, kubectl and helm; see README "Run on a local cluster (kind)").
# `make demo-cluster` = kind-up + images + deploy + an example rollout. `make kind-down` removes it.
CLUSTER ?= policy-rollouts
TAG ?= dev
IMAGE_PREFIX ?= policy-rollouts
OPERATOR_IMAGE ?= $(IMAGE_PREFIX)/operator:$(TAG)
SERVER_IMAGE ?= $(IMAGE_PREFIX)/policy-server:$(TAG)
DEMO_IMAGE ?= $(IMAGE_PREFIX)/policy-server:$(TAG)-demo
NAMESPACE ?= policy-rollouts-system
MONITORING_NAMESPACE ?= monitoring
GATEWAY_API_VERSION ?= v1.6.1
KUBE_CONTEXT := kind-$(CLUSTER)

# $(call need,<command>,<how to get it>): stop with a clear message when a tool is missing.
need = @command -v $(1) >/dev/null 2>&1 || { echo "error: '$(1)' is not installed or not on PATH; $(2)" >&2; exit 127; }
DOCKER_HINT := install Docker (https://docs.docker.com/get-docker/) and start it
KIND_HINT := install kind (https://kind.sigs.k8s.io/docs/user/quick-start/\#installation)
KUBECTL_HINT := install kubectl (https://kubernetes.io/docs/tasks/tools/)
HELM_HINT := install helm 3 (https://helm.sh/docs/intro/install/)

.PHONY: kind-up kind-down images deploy demo-cluster

kind-up:
	$(call need,docker,$(DOCKER_HINT))
	$(call need,kind,$(KIND_HINT))
	$(call need,kubectl,$(KUBECTL_HINT))
	@docker info >/dev/null 2>&1 || { echo "error: the Docker daemon is not reachable; start Docker (or check DOCKER_HOST)" >&2; exit 1; }
	@if kind get clusters 2>/dev/null | grep -qx '$(CLUSTER)'; then echo "kind cluster $(CLUSTER) already exists"; \
	else kind create cluster --name $(CLUSTER) --config kind-config.yaml --wait 180s; fi
	kubectl --context $(KUBE_CONTEXT) get nodes

kind-down:
	$(call need,kind,$(KIND_HINT))
	kind delete cluster --name $(CLUSTER)

images:
	$(call need,docker,$(DOCKER_HINT))
	docker build -f operator/Dockerfile -t $(OPERATOR_IMAGE) .
	docker build -f policy_server/Dockerfile -t $(SERVER_IMAGE) .
	docker build -f policy_server/Dockerfile --target demo -t $(DEMO_IMAGE) .
	@if command -v kind >/dev/null 2>&1 && kind get clusters 2>/dev/null | grep -qx '$(CLUSTER)'; then \
		kind load docker-image --name $(CLUSTER) $(OPERATOR_IMAGE) $(SERVER_IMAGE) $(DEMO_IMAGE); \
	else echo "no kind cluster $(CLUSTER): images built but not loaded (run make kind-up, then make images)"; fi

deploy:
	$(call need,kubectl,$(KUBECTL_HINT))
	$(call need,helm,$(HELM_HINT))
	@kubectl --context $(KUBE_CONTEXT) get nodes >/dev/null 2>&1 || { echo "error: no cluster at context $(KUBE_CONTEXT); run make kind-up first" >&2; exit 1; }
	kubectl --context $(KUBE_CONTEXT) apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/$(GATEWAY_API_VERSION)/standard-install.yaml
	helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
	helm --kube-context $(KUBE_CONTEXT) upgrade --install prometheus prometheus-community/kube-prometheus-stack \
		--namespace $(MONITORING_NAMESPACE) --create-namespace --wait --timeout 10m \
		-f examples/kind/kube-prometheus-stack-values.yaml
	helm --kube-context $(KUBE_CONTEXT) upgrade --install policy-rollouts charts/policy-rollouts \
		--namespace $(NAMESPACE) --create-namespace --wait --timeout 5m \
		--set image.repository=$(IMAGE_PREFIX)/operator --set image.tag=$(TAG) \
		--set operator.prometheusUrl=http://prometheus-operated.$(MONITORING_NAMESPACE):9090 \
		--set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true
	kubectl --context $(KUBE_CONTEXT) -n $(NAMESPACE) rollout status deployment/policy-rollouts --timeout 180s

demo-cluster: kind-up images deploy
	kubectl --context $(KUBE_CONTEXT) apply -f examples/kind/policy-pods-podmonitor.yaml
	kubectl --context $(KUBE_CONTEXT) apply -f examples/kind-demo.yaml
	@echo "watch it: kubectl --context $(KUBE_CONTEXT) get policyrollouts -w   (Grafana: http://127.0.0.1:30300, admin/prom-operator)"
