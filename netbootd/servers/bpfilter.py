"""The kernel half of the proxyDHCP pre-filter: an eBPF socket filter that drops datagrams from
MACs that are not enrolled before they are queued on netbootd's sockets -- while told to.

Why in the kernel: under a junk flood on a busy machine netbootd gets a fraction of a CPU, and
every datagram it reads costs ~3 us even when `codec.dhcp.prefilter` drops it at once; the
socket's queue fills with junk and valid clients' requests are lost with it (bench "flood":
80-95% answered at 20,000 junk packets/s with load 6 on 2 cores; with unknown MACs dropped in
the kernel 100%, 0 kernel drops). The kernel runs the filter in the sender's softirq, per
socket, on the UDP payload (offset 0 = the UDP header): chaddr is at 8 + 28.

The program (hand-assembled below, ~30 instructions) looks chaddr up in a hash map of the
enrolled MACs (kept equal to `lookup.KnownMacs.packed` by `sync`): enrolled -> accept. Other
MACs are accepted too unless the control map says "dropping" (`set_dropping`, the adapter's
flood switch): then 1 in 64 is still accepted -- so user space keeps seeing what the flood is
and the "not enrolled" lines go on -- and the rest are dropped and counted (`dropped`). A
datagram too short to have a chaddr is accepted (user space counts it). So nothing changes
when there is no flood: every datagram still reaches `codec.dhcp.prefilter`.

Loading needs CAP_BPF or CAP_SYS_ADMIN (unprivileged BPF is off on most kernels); `create`
returns None with the reason otherwise, and the adapter filters in user space alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import socket
import struct

_SYSCALL_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "i686": 357, "ppc64le": 361,
                "riscv64": 280, "s390x": 351}
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 0, 1, 2, 3
BPF_PROG_LOAD = 5
BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_ARRAY = 1, 2
BPF_F_NO_PREALLOC = 1
BPF_PROG_TYPE_SOCKET_FILTER = 1
SO_ATTACH_BPF = 50
CHADDR_OFFSET = 8 + 28  # UDP header + BOOTP op..giaddr
SAMPLE_MASK = 63  # while dropping, 1 in SAMPLE_MASK + 1 unknown-MAC datagrams still pass
_ATTR_SIZE = 128

# helpers
_MAP_LOOKUP, _GET_PRANDOM_U32, _SKB_LOAD_BYTES = 1, 7, 26


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def _ld_map_fd(dst: int, fd: int) -> bytes:
    """r<dst> = the map with file descriptor fd (BPF_LD | BPF_IMM | BPF_DW, BPF_PSEUDO_MAP_FD)."""
    return _insn(0x18, dst, 1, 0, fd) + _insn(0, 0, 0, 0, 0)


def program(macs_fd: int, control_fd: int) -> bytes:
    """The filter's instructions (see the module docstring). The control map is an array of
    two u64: [0] dropping (written by user space), [1] dropped (counted here)."""
    Jump = tuple[int, int, str]  # a conditional jump: (opcode, register, label), against imm 0
    code: list[bytes | Jump | str] = [
        _insn(0xBF, 6, 1),  # r6 = r1 (skb)
        _insn(0x7A, 10, 0, -8, 0),  # *(u64 *)(fp - 8) = 0: the key, MAC + 2 zero bytes
        _insn(0xBF, 1, 6),  # r1 = skb
        _insn(0xB7, 2, 0, 0, CHADDR_OFFSET),  # r2 = offset
        _insn(0xBF, 3, 10),  # r3 = fp
        _insn(0x07, 3, 0, 0, -8),  # r3 -= 8
        _insn(0xB7, 4, 0, 0, 6),  # r4 = 6
        _insn(0x85, 0, 0, 0, _SKB_LOAD_BYTES),
        (0x55, 0, "accept"),  # if r0 != 0 (too short for a chaddr) goto accept
        _ld_map_fd(1, macs_fd),
        _insn(0xBF, 2, 10),
        _insn(0x07, 2, 0, 0, -8),
        _insn(0x85, 0, 0, 0, _MAP_LOOKUP),
        (0x55, 0, "accept"),  # enrolled: accept
        _insn(0x62, 10, 0, -12, 0),  # *(u32 *)(fp - 12) = 0: control[0], dropping?
        _ld_map_fd(1, control_fd),
        _insn(0xBF, 2, 10),
        _insn(0x07, 2, 0, 0, -12),
        _insn(0x85, 0, 0, 0, _MAP_LOOKUP),
        (0x15, 0, "accept"),  # if r0 == 0 goto accept (cannot happen: an array)
        _insn(0x79, 1, 0, 0, 0),  # r1 = control[0]
        (0x15, 1, "accept"),  # not dropping: accept
        _insn(0x85, 0, 0, 0, _GET_PRANDOM_U32),
        _insn(0x57, 0, 0, 0, SAMPLE_MASK),  # r0 &= mask
        (0x15, 0, "accept"),  # the sample: accept
        _insn(0x62, 10, 0, -12, 1),  # *(u32 *)(fp - 12) = 1: control[1], dropped
        _ld_map_fd(1, control_fd),
        _insn(0xBF, 2, 10),
        _insn(0x07, 2, 0, 0, -12),
        _insn(0x85, 0, 0, 0, _MAP_LOOKUP),
        (0x15, 0, "drop"),
        _insn(0xB7, 1, 0, 0, 1),
        _insn(0xDB, 0, 1, 0, 0),  # lock *(u64 *)(r0 + 0) += r1
        "drop",
        _insn(0xB7, 0, 0, 0, 0),  # r0 = 0: drop
        _insn(0x95),  # exit
        "accept",
        _insn(0xB4, 0, 0, 0, -1),  # w0 = 0xffffffff: keep the whole datagram
        _insn(0x95),  # exit
    ]
    labels, at = {}, 0
    for c in code:
        if isinstance(c, str):
            labels[c] = at
        else:
            at += len(c) // 8 if isinstance(c, bytes) else 1
    out, at = bytearray(), 0
    for c in code:
        if isinstance(c, bytes):
            out += c
            at += len(c) // 8
        elif isinstance(c, tuple):
            op, reg, label = c
            out += _insn(op, reg, 0, labels[label] - (at + 1), 0)
            at += 1
    return bytes(out)


class BpfError(OSError):
    pass


class KernelFilter:
    """The loaded program and its two maps (see the module docstring). One per adapter."""

    def __init__(self, libc: ctypes.CDLL, nr: int, max_macs: int) -> None:
        self._libc, self._nr = libc, nr
        self.max_macs = max_macs
        self._fds: list[int] = []
        self.macs_fd = self._map_create(BPF_MAP_TYPE_HASH, 8, 1, max_macs)
        self.control_fd = self._map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 2)
        self.prog_fd = self._prog_load(program(self.macs_fd, self.control_fd))
        self._synced: frozenset[bytes] = frozenset()
        self.complete = True  # the map holds every enrolled MAC
        self.dropping = False

    @classmethod
    def create(cls, max_macs: int = 65536) -> tuple[KernelFilter | None, str]:
        """(the filter, "") or (None, why it cannot be had here)."""
        nr = _SYSCALL_BPF.get(platform.machine())
        if nr is None or not hasattr(socket, "SOL_SOCKET"):
            return None, f"no bpf(2) system call number known for {platform.machine()}"
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            return cls(libc, nr, max_macs), ""
        except (OSError, AttributeError) as e:
            return None, str(e)

    def _bpf(self, cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
        r = int(self._libc.syscall(self._nr, cmd, attr, _ATTR_SIZE))
        if r < 0:
            err = ctypes.get_errno()
            raise BpfError(err, f"bpf({cmd}): {os.strerror(err)}")
        return r

    def _map_create(self, kind: int, key: int, value: int, entries: int) -> int:
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        # a hash map's entries are allocated as MACs are added, not all `entries` up front
        flags = BPF_F_NO_PREALLOC if kind == BPF_MAP_TYPE_HASH else 0
        struct.pack_into("=IIIII", attr, 0, kind, key, value, entries, flags)
        fd = self._bpf(BPF_MAP_CREATE, attr)
        self._fds.append(fd)
        return fd

    def _prog_load(self, insns: bytes) -> int:
        code = ctypes.create_string_buffer(insns, len(insns))
        lic = ctypes.create_string_buffer(b"MIT")
        log = ctypes.create_string_buffer(1 << 16)
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into("=IIQQIIQ", attr, 0, BPF_PROG_TYPE_SOCKET_FILTER, len(insns) // 8,
                         ctypes.addressof(code), ctypes.addressof(lic), 1, len(log),
                         ctypes.addressof(log))
        try:
            fd = self._bpf(BPF_PROG_LOAD, attr)
        except BpfError as e:
            text = log.value.decode(errors="replace").strip().splitlines()[-3:]
            raise BpfError(e.errno, f"{e.strerror} {' | '.join(text)}".strip()) from None
        self._fds.append(fd)
        return fd

    def _elem(self, cmd: int, fd: int, key: bytes, value: bytes = b"") -> bytes:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value, max(8, len(value)))
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into("=IIQQQ", attr, 0, fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0)
        self._bpf(cmd, attr)
        return v.raw

    def attach(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, self.prog_fd)

    def sync(self, macs: frozenset[bytes]) -> None:
        """Make the map hold exactly `macs` (6-byte MACs). More than max_macs do not fit: then
        the map is left as it was and `complete` is False (the adapter must not drop)."""
        if macs is self._synced:
            return
        if len(macs) > self.max_macs:
            self.complete = False
            return
        for mac in self._synced - macs:
            with contextlib.suppress(BpfError):  # not there
                self._elem(BPF_MAP_DELETE_ELEM, self.macs_fd, mac + b"\0\0")
        for mac in macs - self._synced:
            self._elem(BPF_MAP_UPDATE_ELEM, self.macs_fd, mac + b"\0\0", b"\1")
        self._synced, self.complete = macs, True

    def set_dropping(self, on: bool) -> None:
        self._elem(BPF_MAP_UPDATE_ELEM, self.control_fd, struct.pack("=I", 0),
                   struct.pack("=Q", 1 if on else 0))
        self.dropping = on

    def dropped(self) -> int:
        """Datagrams the filter has dropped since it was loaded."""
        raw = self._elem(BPF_MAP_LOOKUP_ELEM, self.control_fd, struct.pack("=I", 1), bytes(8))
        return int(struct.unpack_from("=Q", raw)[0])

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
