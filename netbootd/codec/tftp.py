"""TFTP packets (RFC 1350) and option negotiation (blksize RFC 2348, tsize RFC 2349,
windowsize RFC 7440). Pure: bytes in, values out; no sockets, files, clock or logging.

`parse_request` accepts what tftpy's decoder accepts and raises `TftpDropped` for the rest, so
the adapter drops a malformed request with a debug line and serves the next one.

`name_refusal` judges a requested name before the adapter makes any file system call on it:
 - at most MAX_NAME_LEN (255) bytes. Firmware asks for short names ("undionly.kpxe",
   "pxelinux.cfg/01-52-54-00-12-34-56", "/boot/grub/x86_64-efi/normal.mod": under 64 bytes);
   resolving a name costs an lstat() per component (realpath), and a 64 KB name of "a/"
   components cost ~0.3-0.5 s of CPU in the server thread, so 20 such requests a second
   stopped TFTP. 255 is one NAME_MAX and still leaves room for an absolute name spelling a
   deep root (/var/lib/netbootd/tftp/...);
 - at most MAX_NAME_DEPTH (16) components, counted on the name as sent ("a//b" and "./" count):
   the realpath loop is per component, so depth, not length, bounds its cost (16 lstat()s
   where a request normally costs one open());
 - not a directory spelling: a name ending in "/", "/." or "/.." (realpath would strip the
   trailing "/" or "." and serve the file before it: "name/" and "name/." were served).
"""

from __future__ import annotations

import struct

from netbootd.errors import TftpDropped

# RFC 1350 error codes.
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_UNKNOWN_TID = 5

# RFC 1350 opcodes (the low byte; the high one is 0).
OP_RRQ = 1
OP_WRQ = 2
OP_ACK = 4
OP_ERROR = 5

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
# RFC 2348's maximum. tftpy would grant 65536, which does not fit in a UDP datagram.
MAX_BLKSIZE = 65464
# RFC 7440 allows up to 65535 blocks in flight. A window is sent back to back, so it has to fit
# in the client's receive buffer (Linux's default, 208 KiB, holds 92 datagrams of 1468-byte
# blocks on loopback, 12 of 8 KiB blocks, 3 of 64 KiB): at most 64 blocks and 64 KiB of data.
MAX_WINDOWSIZE = 64
MAX_WINDOW_BYTES = 64 << 10

MAX_NAME_LEN = 255
MAX_NAME_DEPTH = 16


def name_refusal(name: str) -> str | None:
    """Why a requested file name is refused before any file system call (see the module
    docstring), or None if it may be looked up. Pure and O(len(name)) for any input."""
    if len(name) > MAX_NAME_LEN:
        return f"name too long ({len(name)} bytes, at most {MAX_NAME_LEN})"
    depth = name.lstrip("/").count("/") + 1
    if depth > MAX_NAME_DEPTH:
        return f"name too deep ({depth} components, at most {MAX_NAME_DEPTH})"
    if name.endswith(("/", "/.", "/..")) or name in (".", ".."):
        return "names a directory"
    return None


def error_packet(code: int, message: str) -> bytes:
    """An RFC 1350 ERROR packet: the code, then the message (ASCII, NUL-terminated)."""
    return struct.pack("!HH", 5, code) + message.encode("ascii", "replace")[:200] + b"\0"


def oack_packet(options: dict[str, int]) -> bytes:
    """An RFC 2347 OACK echoing the granted options."""
    return b"\x00\x06" + b"".join(f"{k}\0{v}\0".encode("ascii") for k, v in options.items())


def parse_request(buf: bytes) -> tuple[int, str, dict[str, str]] | None:
    """An RRQ or WRQ datagram (RFC 1350, options RFC 2347): (opcode, file name, options), or
    None for any other opcode. Raises TftpDropped when it is malformed: no NUL after the name or
    the mode, an odd number of option fields, an empty option name or value, non-ASCII text.
    (These are the requests tftpy's decoder rejects too.)"""
    if len(buf) < 2 or buf[0] != 0 or buf[1] not in (OP_RRQ, OP_WRQ):
        return None
    fields = buf[2:].split(b"\0")
    if len(fields) < 3 or fields[-1]:
        raise TftpDropped("not a NUL-terminated file name and mode")
    del fields[-1]
    if len(fields) % 2:
        raise TftpDropped("an odd number of option fields")
    if not all(fields[2:]):
        raise TftpDropped("an empty option name or value")
    try:
        name, _mode, *opts = (f.decode("ascii") for f in fields)
    except UnicodeDecodeError:
        raise TftpDropped("a name, mode or option that is not ASCII") from None
    return buf[1], name, dict(zip(opts[::2], opts[1::2], strict=False))


def negotiate(requested: dict[str, str], size: int) -> dict[str, int]:
    """The options granted for an RRQ: blksize (clamped to RFC 2348's maximum), tsize and
    windowsize (RFC 7440; at most MAX_WINDOWSIZE blocks and MAX_WINDOW_BYTES of data). Anything
    else (timeout, ...) and malformed values are ignored, as RFC 2347 allows."""
    granted: dict[str, int] = {}
    window = 0
    for key, value in requested.items():
        option = key.lower()
        if option in ("blksize", "windowsize"):
            try:
                n = int(value)
            except ValueError:
                continue
            if option == "blksize" and n >= MIN_BLKSIZE:
                granted["blksize"] = min(n, MAX_BLKSIZE)
            elif option == "windowsize" and n >= 1:
                window = n
                granted["windowsize"] = 0  # (its place in the OACK; the value below)
        elif option == "tsize":
            granted["tsize"] = size
    if window:
        blksize = granted.get("blksize", DEFAULT_BLKSIZE)
        granted["windowsize"] = max(1, min(window, MAX_WINDOWSIZE, MAX_WINDOW_BYTES // blksize))
    return granted
