# loraplex — the two commands: `make run` and `make test`.
#
# The install is locked: requirements.lock holds every package of every extra at one version with
# its hashes, and `make venv` installs exactly that (uv pip sync: nothing more, nothing less).
# `make lock` resolves pyproject.toml again and runs the tests. Why uv and this format, and how a
# GPU machine installs: docs/install.md.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements.lock
# Pins the resolution needs beyond pyproject.toml's ranges (torch: the CPU build for tests).
LOCK_PINS := requirements-pins.txt
# The uv that makes and installs the lock; the lock pins the same version (dev extra).
UV_VERSION := 0.13.9
UV := $(BIN)/uv
# Where the CPU wheel of torch comes from. uv does not read pip's configuration, so it is handed
# pip's find-links folder when pip has one (these machines keep the wheel there), else PyTorch's
# CPU index (a plain machine). Override with e.g. TORCH_SOURCE='--find-links /my/wheels'.
PIP_FIND_LINKS_CONFIG := $(shell cd / && $(PYTHON) -m pip config get global.find-links 2>/dev/null)
TORCH_SOURCE ?= $(if $(PIP_FIND_LINKS_CONFIG),$(foreach d,$(PIP_FIND_LINKS_CONFIG),--find-links $(d)),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
DEMO_DIR ?= demo-models

.PHONY: venv lock check-lock test quick lint run bench soak clean

venv: $(VENV)/.project

# A new venv whenever the lock changes, so packages dropped from it do not linger.
$(VENV)/.locked: $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps uv==$(UV_VERSION)
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes $(TORCH_SOURCE) $(LOCK)
	touch $@

# The project itself, editable, with no dependencies (all come from the lock) and no build
# isolation (setuptools is in the lock, so the build fetches nothing unlocked).
$(VENV)/.project: $(VENV)/.locked pyproject.toml
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	$(BIN)/python scripts/check_lock.py $(LOCK)
	touch $@

# pyproject.toml, the pins and the lock agree, and the venv holds exactly the lock's versions.
check-lock: venv
	$(BIN)/python scripts/check_lock.py $(LOCK)

# Resolve pyproject.toml (every extra) + the pins for this platform again; then the full tests.
lock: $(VENV)/.locked
	$(UV) pip compile --quiet --all-extras --generate-hashes --python-version 3.11 \
	  $(TORCH_SOURCE) --constraint $(LOCK_PINS) --output-file $(LOCK) pyproject.toml
	$(MAKE) test

lint: check-lock
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	scripts/lint-imports.sh $(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q --durations=15  # the slowest tests, to keep CI under its 20 minutes

quick: venv
	$(BIN)/pytest -q -m "not slow"

run: venv
	test -d $(DEMO_DIR) || $(BIN)/loraplex demo-models $(DEMO_DIR)
	$(BIN)/loraplex up --models $(DEMO_DIR)

# Faults at ~80 % of capacity over `loraplex up` (docs/testing.md#soak); one JSON line.
soak: venv
	cd /tmp && $(CURDIR)/$(BIN)/python $(CURDIR)/scripts/soak.py --duration $${SOAK_DURATION_S:-600}

bench: venv
	@set -e; for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
