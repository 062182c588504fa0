# Developer and operator entry points. `make run` and `make test` are the two
# commands README.md promises; everything installs into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test-deps proto lint test test-fast bench run demo up down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Beside Python, the tests and the benchmark run their own PostgreSQL server from Debian's
# binaries, unless WEBHOOKS_TEST_DATABASE_URL names a server to use instead, and Apache
# Kafka's jars (tests/kafka_broker/pom.xml) with Java 17 and Maven. Missing packages are
# installed here (as root); the jars are fetched into ~/.cache/webhook-service once.
test-deps: $(STAMP)
	@packages=""; \
	if [ -z "$$WEBHOOKS_TEST_DATABASE_URL" ] && ! ls /usr/lib/postgresql/*/bin/postgres \
			>/dev/null 2>&1 && ! { command -v initdb && command -v postgres; } >/dev/null; then \
		packages="postgresql"; \
	fi; \
	command -v java >/dev/null || packages="$$packages openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || packages="$$packages maven"; \
	if [ -n "$$packages" ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "make: the tests need:$$packages (apt-get install, as root);" \
				"WEBHOOKS_TEST_DATABASE_URL can stand in for postgresql" >&2; \
			exit 1; \
		fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$packages; \
	fi
	$(PY) -m tests.apache_kafka fetch

# Regenerates the committed stubs from protos/ (tests/unit/test_contracts.py runs
# this into a scratch PROTO_OUT and fails on any difference).
PROTO_OUT ?= generated
proto: $(STAMP)
	mkdir -p $(PROTO_OUT)
	$(PY) -m grpc_tools.protoc -I protos \
		--plugin=protoc-gen-mypy=$(dir $(PY))protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(dir $(PY))protoc-gen-mypy_grpc \
		--python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
		--mypy_out=quiet:$(PROTO_OUT) --mypy_grpc_out=quiet:$(PROTO_OUT) \
		protos/webhooks/v1/*.proto

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/buf lint

# The suite runs on TEST_WORKERS pytest-xdist workers, each with its own PostgreSQL and
# brokers; most tests wait on sockets, so more workers than cores pay off. The Apache Kafka
# failure tests share one worker and its cluster of three (xdist_group).
TEST_WORKERS ?= 5
test: $(STAMP) test-deps
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-fast: $(STAMP) test-deps
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow"

# The benchmark (README "Benchmark"): under 10 minutes, prints a table and writes
# bench-results.json. BENCH_ARGS=--smoke for a quick run.
bench: $(STAMP) test-deps
	$(PY) -m tests.bench $(BENCH_ARGS)

# The embedded default: SQLite, a generated development API key, no Docker.
run: $(STAMP)
	$(PY) -m service dev

# With `make run` going in another terminal: a local receiver, a subscription, three
# published events, and the deliveries with their verified signatures.
demo: $(STAMP)
	$(VENV)/bin/webhookctl demo

# The compose stack (needs a Docker engine): writes .dev/ first, whose keys file and
# catalog the containers mount and whose encryption key they get from the environment.
up: $(STAMP)
	$(PY) -m service init-dev
	WEBHOOKS_SECRET_ENCRYPTION_KEYS=$$(cat .dev/encryption-key) docker compose up --build -d

down:
	WEBHOOKS_SECRET_ENCRYPTION_KEYS=unused docker compose down -v

clean:
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache
