# The two commands the README promises: `make demo` and `make test`.
VENV := .venv/bin

.PHONY: bootstrap demo test lint crds mar

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/python -m rollout_operator.cli.main demo

lint: bootstrap
	$(VENV)/ruff check .
	$(VENV)/python -m rollout_operator.crdgen --check

crds: bootstrap
	$(VENV)/python -m rollout_operator.crdgen --write

test: lint
	$(VENV)/python -m pytest

# TorchServe model archive from a policy artifact: make mar ARTIFACT=dir OUT=dir
mar: bootstrap
	@test -n "$(ARTIFACT)" -a -n "$(OUT)" || { echo "usage: make mar ARTIFACT=<artifact dir> OUT=<output dir>"; exit 2; }
	$(VENV)/python -m policy_server.torchserve.archive --artifact "$(ARTIFACT)" --out "$(OUT)"
