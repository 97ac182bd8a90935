# The two set-up commands (README): `make demo` and `make test`. Each makes .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean services browser

$(STAMP): pyproject.toml
	bash scripts/install-debian-packages.sh
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[rabbitmq,postgres,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/conveyor demo

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/mypy

services:
	bash scripts/start-services.sh

# Debian's Chromium and chromedriver for the dashboard's browser test (tests/e2e/test_dashboard_browser.py).
browser:
	bash scripts/install-debian-packages.sh --browser

# pytest exits 5 when it collected no test; make treats that as the failure it is.
test: $(STAMP) lint services browser
	$(BIN)/pytest tests

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) artifacts conveyor.db conveyor.db-wal conveyor.db-shm
