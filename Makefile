# The two commands the README promises: `make demo` and `make test`.
VENV := .venv/bin

.PHONY: bootstrap demo test lint crds

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
