# One-command entry points. Each target sets itself up: a .venv in the checkout, reused while
# requirements.txt and pyproject.toml are unchanged (the stamp file carries their hash).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HASH := $(shell cat requirements.txt requirements.lock pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(HASH)
WORKERS ?= 2

.PHONY: venv system demo lint test test-slow test-latest lock bench replicate clean-demo

# Installs are reproducible: requirements.txt's ranges under requirements.lock's exact versions.
$(STAMP): requirements.txt requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -c requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

# System packages the tests use: headless Chromium (report test), Debian's Fashion-MNIST files.
system:
	@bash scripts/setup-system.sh

# The main job on the embedded default: a small LR sweep on parity, probed, HTML report written.
demo: venv
	$(BIN)/lrtrain sweep examples/demo.toml --out demo/runs --workers $(WORKERS)
	$(BIN)/lrprobe compute demo/runs --workers $(WORKERS)
	$(BIN)/lrprobe report demo/runs -o demo/report.html --no-compute

# Lint: ruff with the rules in pyproject.toml ([tool.ruff]) over the whole tree (~0.2 s, so make
# test runs it first). `$(BIN)/ruff check --fix FILE` applies the safe fixes (import order).
lint: venv
	$(BIN)/ruff check .

# The fast suite on TEST_WORKERS processes (pytest-xdist; -n 0 runs it in this process).
TEST_WORKERS ?= 2
test: lint system
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The long checks, on the same workers: serially they took most of CI's 90 minutes (5328 s in all
# on 2026-12-06). Cost checks are ratios of times taken side by side; a few wall-clock bounds remain
# (start-up deadlines, a SIGINT'd sweep exiting within 60 s in test_interrupted_runs.py).
test-slow: venv system
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15 -m 'slow or integration'

# Drift check: the newest releases requirements.txt allows, in their own venv, through the fast
# suite. A failure here is what the next fresh install without the lock would meet.
LATEST ?= .venv-latest
test-latest: system
	@test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -r requirements.txt
	$(LATEST)/bin/pip install -q --no-deps -e .
	@$(LATEST)/bin/pip freeze --exclude-editable | diff <(grep -v '^#' requirements.lock | sort -f) <(sort -f -) \
		| grep '^[<>]' || echo "newest releases = requirements.lock"
	$(LATEST)/bin/python -m pytest -q -n $(TEST_WORKERS)

# Rewrite requirements.lock from the test venv (after a deliberate upgrade, tested).
lock: venv
	@{ head -4 requirements.lock; $(BIN)/pip freeze --exclude-editable | grep -v '^lrscope'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

bench: venv
	$(BIN)/python benchmarks/run_all.py

# The CPU replication sweeps (examples/replication/), resumed where they stopped, probed, and
# docs/replication.md regenerated. ONLY=parity-fcn runs one of them.
replicate: venv system
	$(BIN)/python scripts/replicate.py --workers $(WORKERS) $(if $(ONLY),--only $(ONLY))

clean-demo:
	rm -rf demo
