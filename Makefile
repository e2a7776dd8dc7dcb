# Two entry points (see README): `make up` runs the stack, `make test` runs the whole suite
# (and `make newman` runs the Postman collection against the stack make up started).
# Each creates ./.venv and installs pinned dependencies first, so a fresh clone needs nothing else.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIN    := -c requirements/constraints.txt
# Tools whose own pins clash with ours (checkov wants aiohttp<3.14) live in their own venv.
TOOLS  ?= .venv-tools

.PHONY: up test newman lint format lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.stack-installed: $(BIN)/python pyproject.toml requirements/constraints.txt
	$(BIN)/pip install -q $(PIN) -e '.[local]'
	touch $@

$(VENV)/.dev-installed: $(BIN)/python pyproject.toml requirements/constraints.txt
	$(BIN)/pip install -q $(PIN) -e '.[dev]'
	touch $@ $(VENV)/.stack-installed

# Extra arguments for `retina up`, e.g. make up ARGS="--store-port 9001 --gateway-port 9002".
ARGS ?=

up: $(VENV)/.stack-installed
	$(BIN)/retina up $(ARGS)

$(TOOLS)/.installed: requirements/tools.txt requirements/tools-constraints.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --upgrade pip
	$(TOOLS)/bin/pip install -q -c requirements/tools-constraints.txt -r requirements/tools.txt
	touch $@

# newman (the Postman collection's runner), pinned with its lockfile. Without npm the newman test skips
# with the reason locally and fails in CI (.ci/run sets CI=1).
NODE_TOOLS := $(TOOLS)/node

$(NODE_TOOLS)/.installed: requirements/node/package.json requirements/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  mkdir -p $(NODE_TOOLS) && cp requirements/node/package.json requirements/node/package-lock.json $(NODE_TOOLS)/ && \
	  npm ci --prefix $(NODE_TOOLS) --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: newman is not installed, so its test will skip (and fail in CI)"; fi

# The Postman collection against the stack `make up` runs, on whatever ports it chose: the URLs and the
# service token come from the local.env retina up writes (RETINA_STATE_DIR, default ./var; RETINA_TOKEN
# wins over its token). MODEL / THINKING_MODEL name the models it asks (the collection's defaults: llava,
# qwen3); NEWMAN_ARGS passes more arguments to `newman run`. newman is installed as for make test.
MODEL ?=
THINKING_MODEL ?=
NEWMAN_ARGS ?=

newman: $(NODE_TOOLS)/.installed
	@newman="$(NODE_TOOLS)/node_modules/.bin/newman"; env_file="$${RETINA_STATE_DIR:-var}/local.env"; \
	if [ ! -x "$$newman" ]; then echo "make newman: newman is not installed (it needs npm)" >&2; exit 2; fi; \
	if [ ! -r "$$env_file" ]; then echo "make newman: no $$env_file: start the stack with make up first" >&2; exit 2; fi; \
	get() { sed -n "s/^$$1=//p" "$$env_file" | tail -n 1; }; \
	store="$$(get RETINA_IMAGE_STORE_URL)"; gateway="$$(get RETINA_GATEWAY_URL)"; \
	token="$${RETINA_TOKEN:-$$(get SERVICE_TOKENS | cut -d, -f1)}"; \
	if [ -z "$$store" ] || [ -z "$$gateway" ] || [ -z "$$token" ]; then \
	  echo "make newman: $$env_file lacks RETINA_IMAGE_STORE_URL, RETINA_GATEWAY_URL or SERVICE_TOKENS: restart make up" >&2; exit 2; fi; \
	echo "newman: image-store $$store, gateway $$gateway"; \
	"$$newman" run docs/retina.postman_collection.json --working-dir docs \
	  --env-var "imageStoreUrl=$$store" --env-var "gatewayUrl=$$gateway" --env-var "serviceToken=$$token" \
	  $(if $(MODEL),--env-var "model=$(MODEL)") $(if $(THINKING_MODEL),--env-var "thinkingModel=$(THINKING_MODEL)") \
	  $(NEWMAN_ARGS)

# Extra arguments for pytest, e.g. make test PYTEST_ARGS="tests/image_store -x".
PYTEST_ARGS ?=
# pytest-xdist worker processes (0: all tests in one process). Three on two cores: the tests wait on
# sockets, PostgreSQL and child processes often enough that a third keeps both cores busy.
TEST_WORKERS ?= 3

# Both run mypy before the tests: a strict type check of common/ and services/ ([tool.mypy] in pyproject.toml).
# pytest's base temp directory is private to the run (mktemp -d, removed afterwards): pytest prunes all
# but the newest three of its shared ones, so other pytest runs on the machine could delete the embedded
# PostgreSQL's data directory under a run that used them.
test: $(VENV)/.dev-installed $(TOOLS)/.installed $(NODE_TOOLS)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	tmp="$$(mktemp -d "$${TMPDIR:-/tmp}/retina-test.XXXXXX")" && trap 'rm -rf "$$tmp"' EXIT INT TERM && \
	  PATH="$(CURDIR)/$(TOOLS)/bin:$(CURDIR)/$(NODE_TOOLS)/node_modules/.bin:$$PATH" \
	  $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal --basetemp="$$tmp/pytest" $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.dev-installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-pin after changing dependencies in pyproject.toml.
lock: $(VENV)/.dev-installed
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip freeze --exclude-editable | grep -v '^retina' > requirements/constraints.txt

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache .mypy_cache
