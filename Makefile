# The two set-up commands (README): `make demo` and `make test`. Each makes .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean services php-deps phpunit

$(STAMP): pyproject.toml
	bash scripts/install-debian-packages.sh
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[rabbitmq,postgres,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/conveyor demo

lint: $(STAMP)
	$(BIN)/ruff check src tests protocol $(wildcard bench)
	$(BIN)/mypy

services:
	bash scripts/start-services.sh

# PHP (clients/php and its tests): Debian's php-cli, php-amqplib, phpunit, php-laravel-framework.
php-deps:
	bash scripts/install-debian-packages.sh --php

# The PHP package's unit tests (Debian's phpunit). The pytest suite runs the PHP worker and
# client against the real servers (tests/php, tests/conformance).
phpunit: php-deps
	cd clients/php && phpunit --colors=never

# pytest exits 5 when it collected no test; make treats that as the failure it is.
test: $(STAMP) lint services phpunit
	$(BIN)/pytest tests

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) conveyor.db conveyor.db-wal conveyor.db-shm
