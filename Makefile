# `make run` and `make test` work on a fresh machine with Python 3.11, make and a C compiler.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-faults soak bench screens lint format lock clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

## Start the whole system: servers (embedded unless *_URL are set), web, worker, beat, Flower.
run: $(STAMP)
	$(BIN)/python -m project.launcher

## Test processes for `make test` (pytest-xdist); each has its own databases, vhost and workers.
## Three on two cores: the tests mostly wait on workers and servers (chosen by timing `make test`
## with two and with three; the closing note of issue 14 has the figures).
TEST_PROCESSES ?= 3

## The whole test suite, on real servers (embedded ones for unset *_URL variables).
test: $(STAMP)
	$(BIN)/python -m project.devservers exec -- $(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

## The fault-injection suite: each scenario on both brokers, then the results table
## (tests/faults/results/latest.md).
test-faults: $(STAMP)
	FAULT_SUITE=1 $(BIN)/python -m pytest tests/faults $(PYTEST_ARGS)

## A million increments over a three-node RabbitMQ cluster with a random fault every ~30 s, then
## the checker; writes docs/soak.{md,png,json}. About an hour; not part of CI. E.g.
## SOAK_ARGS="--increments 50000 --out .local/soak" for a short one.
soak: $(STAMP)
	$(BIN)/python -m tests.faults.soak $(SOAK_ARGS)

## Each path beside its baseline in one run; writes bench/results/latest.{json,png,md}.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## Every page at 1280 and 375 px wide, in headless Chromium: docs/screens/*.png (the README).
screens: $(STAMP)
	$(BIN)/python -m project.devservers exec -- $(BIN)/python -m pytest tests/browser/screens.py \
	  -p no:cacheprovider -q -s

## Lock the dependencies with hashes (pip-tools): requirements/runtime.txt (the image) and
## requirements.txt (what .venv gets: runtime, development and tests, benchmarks).
lock: $(STAMP)
	cd requirements && ../$(BIN)/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links -o runtime.txt runtime.in
	cd requirements && ../$(BIN)/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links -o ../requirements.txt all.in

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf .local .pytest_cache .ruff_cache

## The image from the Dockerfile (docker/base/build-image.sh), with this machine's pip settings
## as BuildKit secrets. BASE_IMAGE defaults to a base made here from Debian's packages
## (docker/base/make-base-image.sh, made when missing); where a registry is reachable:
## `make image BASE_IMAGE=python:3.11-slim MAKE_BASE=0`.
.PHONY: image test-containers
image:
	docker/base/engine.sh
	docker/base/build-image.sh

## The image's services as docker-compose.yml runs them, against this machine's servers
## (tests/containers; needs a Docker engine).
test-containers: $(STAMP) image
	CONTAINER_TESTS=1 $(BIN)/python -m pytest tests/containers -p no:cacheprovider $(PYTEST_ARGS)
