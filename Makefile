# The two set-up commands (README): `make demo` and `make test`. Each makes .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean services browser test-deps phpunit chaos model flow-long

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

# Debian's Chromium and chromedriver for the dashboard's browser test (tests/e2e/test_dashboard_browser.py).
browser:
	bash scripts/install-debian-packages.sh --browser

# What the tests need from Debian beyond Python: PHP (clients/php: php-cli, php-amqplib, phpunit,
# php-laravel-framework), spin, faketime, iproute2 (see the script).
test-deps:
	bash scripts/install-debian-packages.sh --php --test

# The PHP package's unit tests (Debian's phpunit). The pytest suite runs the PHP worker and
# client against the real servers (tests/php, tests/conformance).
phpunit: test-deps
	cd clients/php && phpunit --colors=never

# pytest exits 5 when it collected no test; make treats that as the failure it is.
test: $(STAMP) lint services browser phpunit
	$(BIN)/pytest tests

# The chaos suite at the sizes of issue 11 (CI runs its short form inside `make test`); each
# scenario prints its tally, and all of them are appended to chaos-results.jsonl
# (`python -m tests.chaos.table` turns that file into docs/reliability.md's table).
chaos: $(STAMP) test-deps services model
	CONVEYOR_CHAOS=full CONVEYOR_CHAOS_RESULTS=$(CURDIR)/chaos-results.jsonl $(BIN)/pytest tests/chaos -p no:cacheprovider -rxX

# The protocol model (model/conveyor.pml) checked by Spin, larger bounds than CI's.
model: $(STAMP) test-deps
	$(BIN)/python -m tests.model.spin --full

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Flow control's 30 s rate-limit runs (CI runs the 10 s form inside `make test`): 50/s on three
# workers, on both deployments; each prints its figures (docs/flow-control.md).
flow-long: $(STAMP) services
	CONVEYOR_TEST_LONG=1 $(BIN)/pytest -s -p no:cacheprovider tests/e2e/test_flow_embedded.py \
		tests/integration/test_flow_distributed.py -k "30_s"

clean:
	rm -rf $(VENV) artifacts conveyor.db conveyor.db-wal conveyor.db-shm chaos-results.jsonl
