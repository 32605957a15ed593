# loraplex — the two commands: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Tests and the embedded mode use the CPU wheel of torch; GPU installs: see README "GPU install".
TORCH_CPU := torch==2.13.0
EXTRAS := worker,router,operator,sim,dev
DEMO_DIR ?= demo-models

.PHONY: venv test quick lint run bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_CPU)
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	scripts/lint-imports.sh $(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q

quick: venv
	$(BIN)/pytest -q -m "not slow"

run: venv
	test -d $(DEMO_DIR) || $(BIN)/loraplex demo-models $(DEMO_DIR)
	$(BIN)/loraplex up --models $(DEMO_DIR)

bench: venv
	@set -e; for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
