# The two set-up commands (README): `make demo` and `make test`. Each makes .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean services

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

# pytest exits 5 when it collected no test; make treats that as the failure it is.
test: $(STAMP) lint services
	$(BIN)/pytest tests

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) conveyor.db conveyor.db-wal conveyor.db-shm
