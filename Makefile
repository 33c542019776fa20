# netbootd - the two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STATE_DIR ?= $(CURDIR)/.netbootd
# Debian packages the end-to-end tests (and `make run`'s TFTP root) need; udev: the discovery
# image (images/discovery/build.py) copies its systemd-udevd, udevadm, scsi_id, ata_id and rules;
# swtpm: the TPM of test_e2e_discovery's UEFI VM; swtpm-tools: swtpm_setup + swtpm_localca make
# that TPM's EK certificate, which the test checks the reported EK against; tpm2-tools: the
# discovery image's `tpm2` (it reads the EK), copied from the build machine like udev's tools.
# openipmi: ipmi_sim, the IPMI BMC of the power tests (setpriv, util-linux, ties its QEMU's life
# to it); ipmitool: reads back the boot device netbootd set through it (a client netbootd did
# not write).
DEB_PKGS := ipxe ipxe-qemu qemu-system-x86 ovmf busybox-static dnsmasq-base cpio iproute2 \
            tcpdump tftp-hpa curl kmod age openssh-client openssl wireguard-tools nix-bin \
            fdisk e2fsprogs tgt nfs-ganesha nfs-ganesha-vfs qemu-utils xfsprogs \
            systemd-boot-efi sbsigntool efitools binutils gcc make perl liblzma-dev xz-utils \
            gcc-aarch64-linux-gnu qemu-system-arm qemu-efi-aarch64 \
            openssh-server patchelf python3-tomli-w systemd chromium chromium-driver libcap2-bin \
            util-linux python3-venv udev swtpm swtpm-tools tpm2-tools openipmi ipmitool
PYTEST_ARGS ?=

.PHONY: all venv deps run test lint unit integration e2e clean
all: test

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Installs missing Debian packages when we are root on Debian; otherwise says what is missing.
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q '^install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "note: missing Debian packages (end-to-end tests will be skipped): $$missing"; fi

run: venv
	@if [ "$$(id -u)" = 0 ]; then \
	    exec env NETBOOTD_STATE_DIR=$(STATE_DIR) $(VENV)/bin/netbootd serve $(RUN_ARGS); \
	else \
	    echo "not root: serving HTTP on :8080 and TFTP on :6969 only; proxyDHCP needs CAP_NET_BIND_SERVICE and CAP_NET_RAW"; \
	    exec env NETBOOTD_STATE_DIR=$(STATE_DIR) $(VENV)/bin/netbootd serve --no-dhcp --http-port 8080 --tftp-port 6969 $(RUN_ARGS); \
	fi

test: venv deps lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

# ruff (E,W,F,I,B,UP,SIM; pyproject.toml) on the whole tree, mypy --strict on netbootd/.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict netbootd

unit: venv
	$(PY) -m pytest -q tests/unit

# End-to-end: real QEMU PXE clients boot from netbootd in network namespaces (root; tests/e2e/).
e2e: venv deps
	$(PY) -m pytest -q -ra -m e2e tests/e2e $(PYTEST_ARGS)

# Watch a VM network-boot from netbootd in ~10 s; Ctrl-C cleans up. DEMO_ARGS="--fw uefi|uefi-pxe"
.PHONY: demo
demo: venv deps
	@if [ "$$(id -u)" != 0 ]; then echo "make demo needs root (network namespaces, taps, ports 67/69)"; exit 2; fi
	$(PY) -m testbed demo $(DEMO_ARGS)

# Benchmarks beside the servers users would otherwise run (nginx, dnsmasq, tftpd-hpa), root only;
# see bench/run.py. `bench` writes bench/results/latest.md (~5 min); `bench-quick` (< 2 min, CI)
# checks the harness still works and fails if a benchmark breaks. BENCH_ARGS="--only dhcp --profile"
.PHONY: bench bench-quick
bench: venv deps
	@test -x $(VENV)/bin/py-spy || $(PY) -m pip install -q py-spy || echo "note: no py-spy: no profiles"
	$(PY) -m bench $(BENCH_ARGS)
	$(PY) -m bench.compose_bench --json bench/results/compose.json --md bench/results/compose.md
	$(PY) -m bench.uki_bench
	$(PY) -m bench.bulk_enroll
	$(PY) -m bench.chain_boot

bench-quick: venv deps
	$(PY) -m bench --quick $(BENCH_ARGS)
	$(PY) -m bench.compose_bench --paths 100 --mb 32
	$(PY) -m bench.uki_bench --quick
	$(PY) -m bench.bulk_enroll --quick

# The hostile-LAN run (issue #13, bench/fuzz.py), root only: `netbootd serve` in a namespace
# fuzzed per protocol, valid clients under a DHCP junk flood, DB growth per 10,000
# unauthenticated requests, TFTP amplification, the codec properties (Hypothesis "fuzz"
# profile) and the kill -9 suite with more kills; writes bench/results/fuzz.md + fuzz.json
# (~10 min). FUZZ_ARGS="--quick" (~2 min) or "--only dhcp,tftp --seconds 60".
.PHONY: fuzz
fuzz: venv deps
	@if [ "$$(id -u)" != 0 ]; then echo "make fuzz needs root (network namespaces)"; exit 2; fi
	$(PY) -m bench.fuzz $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
