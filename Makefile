# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   set up .venv and run the whole pipeline on the built-in concept world
#   make test   set up .venv and run the test suite (slow end-to-end tests included)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
ACTIVATE := . $(VENV)/bin/activate
# pytest-xdist: a worker per core (one torch thread each, tests/conftest.py), each test file on one worker (its
# session fixtures run once), the files of the longest tests handed out first. WORKERS= runs in one process.
WORKERS ?= -n auto --dist loadfile

.PHONY: demo test test-fast lint chromium ui clean-runs

# pyproject.toml declares ranges; constraints.txt holds the exact versions this project is tested with.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[test,ray,postgres]'
	touch $@

# The demo keeps its caches in ./.cache (unless CLIPPROBE_CACHE_DIR says otherwise), so clean-runs removes them.
demo: $(VENV)/.installed
	$(ACTIVATE) && MLFLOW_DISABLE_TELEMETRY=true CLIPPROBE_CACHE_DIR="$${CLIPPROBE_CACHE_DIR:-$(CURDIR)/.cache}" \
	  mlflow run . -e main --env-manager local

test: $(VENV)/.installed chromium
	$(ACTIVATE) && MLFLOW_DISABLE_TELEMETRY=true python -m pytest -q $(WORKERS)

test-fast: $(VENV)/.installed
	$(ACTIVATE) && python -m pytest -q -m "not slow" $(WORKERS)

lint: $(VENV)/.installed
	$(ACTIVATE) && ruff check src tests entrypoints benchmarks

# The report's HTML is checked in headless Chromium; install Debian's where we may (root), else those tests skip.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: the HTML rendering test will be skipped"

# Lands on the runs table with every pipeline step and sweep (experiment 0 = Default; use your experiment's id
# otherwise): MLflow 3.17 opens experiments in GenAI mode unless the link asks for workflowType=machine_learning.
UI_URL := http://127.0.0.1:5000/\#/experiments/0/runs?workflowType=machine_learning&searchFilter=tags.%60clipprobe.level%60%20IS%20NULL
ui: $(VENV)/.installed
	@echo "open $(UI_URL)"
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] || [ "$$(uname)" = Darwin ]; then \
	  (sleep 4; $(VENV)/bin/python -m webbrowser -t "$(UI_URL)" >/dev/null 2>&1) & fi
	$(ACTIVATE) && mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1

clean-runs:
	rm -rf mlflow.db mlflow.db-* optuna.db optuna.journal worlds outputs .cache
	find mlruns -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
