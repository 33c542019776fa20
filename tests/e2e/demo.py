#!/usr/bin/env python3
"""`make demo`: netbootd and a QEMU VM in network namespaces; watch the machine network-boot.

    sudo .venv/bin/python tests/e2e/demo.py [--fw bios|uefi|uefi-pxe] [--mac 52:54:00:12:34:56]

Streams the VM's serial console (and netbootd's log) to the terminal; Ctrl-C stops everything and
removes the namespaces. Needs root and the Debian packages `make deps` installs.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e_harness

if __name__ == "__main__":
    sys.exit(e2e_harness.main(["demo", *sys.argv[1:]]))
