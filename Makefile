# The two commands a developer needs: `make demo` and `make test`.
# Everything they depend on (the venv, Mosquitto) is set up here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DATA ?= demo-data

.PHONY: all venv deps mosquitto nats systemd-analyze test test-slow check demo bench install uninstall clean

all: check test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Mosquitto is a real process in the tests and the demo, never mocked.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing mosquitto with apt-get..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	else \
		echo "Mosquitto is missing. Install it with: sudo apt-get install mosquitto" >&2; exit 1; \
	fi

# A three-node NATS cluster (JetStream, MQTT 3.1.1) is the tests' second broker:
# the fleet's (Debian's nats-server; its packaged service is not used).
nats:
	@if command -v nats-server >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing nats-server with apt-get..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; \
	else \
		echo "nats-server is missing. Install it with: sudo apt-get install nats-server" >&2; exit 1; \
	fi

# systemd-analyze checks the unit files in the tests (Debian's systemd package).
systemd-analyze:
	@if command -v systemd-analyze >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing systemd (for systemd-analyze) with apt-get..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; \
	else \
		echo "systemd-analyze is missing. Install it with: sudo apt-get install systemd" >&2; exit 1; \
	fi

deps: venv mosquitto nats systemd-analyze

# Two workers, each taking whole test files (module fixtures such as the
# NATS cluster start once): about half the serial time on two cores.
TEST_WORKERS ?= 2

test: deps
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: deps
	$(BIN)/pytest -q -m slow --timeout=900

check: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

demo: deps
	$(BIN)/python -m sandbox.demo --data $(DEMO_DATA) $(if $(DEMO_HEADLESS),--headless)

# Each prints a table and one JSON line; BENCH_ARGS=--quick runs each in under
# a minute. The 5,000-sale soak and the fleet's ramp (1,000 sessions, doubling
# until a broker gives way) take long: `make bench BENCHES=fleet`.
BENCHES ?= emv_read push_to_screen sale_e2e pos_client footprint fleet soak
bench: deps
	@for b in $(BENCHES); do echo "== $$b"; $(BIN)/python benchmarks/$$b.py $(BENCH_ARGS) || exit 1; done

# On a terminal (as root): venv under /opt, user, units, udev rules, example config.
install:
	bash systemd/install.sh $(if $(DESTDIR),--destdir $(DESTDIR) --no-venv)

# Removes units, rules and the venv; keeps config and journal unless PURGE=1.
uninstall:
	bash systemd/uninstall.sh $(if $(DESTDIR),--destdir $(DESTDIR)) $(if $(PURGE),--purge)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache $(DEMO_DATA)
