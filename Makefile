# securemail: the two commands are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# Debian packages the tests use (real peers, never mocks).
TEST_APT := postfix swaks libnet-ssleay-perl testssl.sh opendkim opendkim-tools chromium libnss3-tools systemd
# Debian packages the benchmarks use (the peers they are compared with).
BENCH_APT := postfix postfix-pcre time opendkim

.PHONY: run demo test test-fast lint format bench venv system-deps bench-deps clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

securemail.toml: | $(STAMP)
	$(BIN)/securemail config init securemail.toml

system-deps:
	@scripts/apt-install $(TEST_APT)

bench-deps:
	@scripts/apt-install $(BENCH_APT)

## run: set everything up (venv, config, self-signed cert, SQLite spool) and run the gateway
run: $(STAMP) securemail.toml
	$(BIN)/securemail tls selfsigned --config securemail.toml
	$(BIN)/securemail portal keygen --keep --config securemail.toml
	@echo "== add a submission user with: $(BIN)/securemail user add NAME =="
	$(BIN)/securemail serve --config securemail.toml

## demo: the classifier and policy engine on sample addresses and a sample message
demo: $(STAMP) securemail.toml
	@echo "== securemail classify (health and social care sender) =="
	$(BIN)/securemail classify --config securemail.toml jo.bloggs@nhs.net "Ward 7 <ward7@trust.secure.nhs.uk>" \
		clerk@example.nhs.uk case@dwp.gov.uk someone@gmail.com a@insecure.nhs.uk \
		"x@nhs.nеt" 'a@nhs.net@evil.com' '"x@nhs.net"@evil.com' team@nhsgg.scot.nhs.uk
	@echo "== the same for a government sender =="
	$(BIN)/securemail classify --config securemail.toml --audience government jo.bloggs@nhs.net case@dwp.gov.uk
	@echo "== securemail policy explain examples/referral.eml =="
	$(BIN)/securemail policy explain --config securemail.toml examples/referral.eml
	@echo "== securemail classify --json - < examples/addresses.txt =="
	$(BIN)/securemail classify --config securemail.toml --json - < examples/addresses.txt

## test: install what the tests need and run lint + the whole suite
test: $(STAMP) system-deps
	$(BIN)/ruff check securemail tests bench
	$(BIN)/ruff format --check securemail tests bench
	$(BIN)/pytest -n auto -m 'not slow'
	$(BIN)/pytest -m slow

## test-fast: the day-to-day lane: lint + everything but the `slow` tests (Postfix, crash trials)
test-fast: $(STAMP) system-deps
	$(BIN)/ruff check securemail tests bench
	$(BIN)/ruff format --check securemail tests bench
	$(BIN)/pytest -n auto -m 'not slow'

lint: $(STAMP)
	$(BIN)/ruff check securemail tests bench
	$(BIN)/ruff format --check securemail tests bench

format: $(STAMP)
	$(BIN)/ruff check --fix securemail tests bench
	$(BIN)/ruff format securemail tests bench

## bench: the benchmarks, each against a peer measured in the same run
bench: $(STAMP) bench-deps
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python bench/classify_bench.py
	$(BIN)/python bench/relay_bench.py
	$(BIN)/python bench/relay_bench.py --dkim
	$(BIN)/python bench/auth_bench.py
	$(BIN)/python bench/check_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
