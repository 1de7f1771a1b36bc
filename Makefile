# Two entry points for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test test-fast lint typecheck format clean browser

setup: $(VENV)/.installed

# Exact versions from constraints.txt; the package itself states only ranges (setup.py).
$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	# --no-compile: byte-compiling every file of PySpark and MLflow up front took longer than
	# compiling, on first import, the few that are used.
	$(BIN)/pip install --quiet --no-compile -c constraints.txt -e '.[local,dev]'
	touch $@

run: setup
	$(BIN)/seg-spark run --config conf/local.yaml

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# The report test opens the HTML report in Debian's headless Chromium and its driver: installed
# here when missing (as root, or with sudo).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

test: lint typecheck browser
	$(BIN)/pytest

# Everything but the tests marked slow (end-to-end runs, subprocesses, whole-stage runs).
test-fast: lint typecheck
	$(BIN)/pytest -m "not slow"

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) seg-spark-local spark-warehouse *.egg-info
