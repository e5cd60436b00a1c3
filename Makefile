# Two commands do everything on a fresh Debian machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := libvirt-dev pkg-config wrk openssh-server openssh-client
# The lab site and the real-hypervisor tests: libvirtd + QEMU (TCG) and guests built from Debian packages.
# libvirt-daemon-system creates QEMU's user and qemu.conf, without which libvirtd's QEMU driver will not start.
APT_PACKAGES += qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system libvirt-clients
APT_PACKAGES += linux-image-amd64 busybox-static qemu-guest-agent cpio
# The metrics tests: a real Prometheus scraping a demo agent, and promtool checking the shipped rules.
APT_PACKAGES += prometheus
# The browser test of `dittotui --serve` (headless, driven over its DevTools protocol).
APT_PACKAGES += chromium
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench screenshots system-packages clean

demo: $(STAMP)
	$(BIN)/dittotui

test: $(STAMP)
	$(BIN)/python -m pytest

# Style, types and the import rules between the two sides (pyproject.toml holds every setting).
LINTED := hostctl dittotui tests bench scripts
lint: $(STAMP)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy
	$(BIN)/lint-imports

# Each benchmark is a module run from the repository root, so `bench` and `tests.support` import without path edits.
bench: $(STAMP)
	$(BIN)/python -m bench.demo_latency
	$(BIN)/python -m bench.scale_latency
	$(BIN)/python -m bench.link_latency
	$(BIN)/python -m bench.console_fleet
	$(BIN)/python -m bench.serve_latency   # the console in headless Chromium through dittotui --serve
	$(BIN)/python -m bench.security_overhead
	$(BIN)/python -m bench.probe_overhead
	$(BIN)/python -m bench.metrics_scrape
	$(BIN)/python -m bench.worker_latency  # the lab site: libvirtd + QEMU guests (root, or a running libvirtd)
	$(BIN)/python -m bench.faults          # 500 faults over real OpenSSH against a running console (~6 min)
	$(BIN)/python -m bench.fuzz_rpc        # 100,000 generated messages against a live agent (~2 min)
	$(BIN)/python -m bench.soak --minutes 30  # a headless agent for 30 minutes (--baseline CHECKOUT to compare)

# SVGs of the console on the embedded demo site (headless; ~25 s; stops the demo site it starts), and a PNG of it in
# headless Chromium through `dittotui --serve` (~20 s).
screenshots: $(STAMP)
	$(BIN)/python scripts/screenshots.py
	$(BIN)/python -m scripts.browser_screenshot

# apt-get runs only when a package is missing, so a second run costs nothing.
system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml | system-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
