"""netbootd: proxyDHCP + TFTP + HTTP network-boot server with per-host iPXE scripts."""

__version__ = "0.1.0"
