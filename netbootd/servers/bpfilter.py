"""The kernel half of the proxyDHCP pre-filter: an eBPF socket filter that lets through at
most UNKNOWN_PER_SECOND datagrams a second from MACs that are not enrolled, before they are
queued on netbootd's sockets. Enrolled MACs always pass.

Why in the kernel: under a junk flood on a busy machine netbootd gets a fraction of a CPU, and
every datagram it reads costs ~2-3 us even when `codec.dhcp.prefilter` drops it at once; the
socket's queue fills with junk and valid clients' requests are lost with it (bench "flood":
80-95% answered at 20,000 junk packets/s with load 5-6 on 2 cores; with the junk's MACs
dropped in the kernel 100%, 0 kernel drops). The kernel runs the filter in the sender's
softirq, per socket, on the UDP payload (offset 0 = the UDP header): chaddr is at 8 + 28.

The program (hand-assembled below, ~60 instructions) looks chaddr up in a hash map of the
enrolled MACs (kept equal to `lookup.KnownMacs.packed` by `sync`): enrolled -> accept. Any
other MAC draws on a budget of UNKNOWN_PER_SECOND / 10 per 100 ms window (the control map:
window start, admitted in it, dropped, budget): within it -> accept, beyond -> drop and count
(`dropped`). A datagram too short to have a chaddr is accepted (user space counts it). A LAN's
own DHCP chatter stays far below the budget, so nothing changes without a flood: every datagram
still reaches `codec.dhcp.prefilter`, new machines get their "not enrolled" line; in a flood the
cut is immediate, and what passes still shows user space the flood. (The window is shared by
all CPUs and reset without a lock: two CPUs may both reset it; the budget is approximate.)

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
_ATTR_SIZE = 128

# helpers
_MAP_LOOKUP, _KTIME_GET_NS, _SKB_LOAD_BYTES = 1, 5, 26
UNKNOWN_PER_SECOND = 2000
WINDOW_NS = 100_000_000
# the control map, an array of u64
CTL_WINDOW, CTL_ADMITTED, CTL_DROPPED, CTL_BUDGET = 0, 1, 2, 3
UNLIMITED = 1 << 62


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def _ld_map_fd(dst: int, fd: int) -> bytes:
    """r<dst> = the map with file descriptor fd (BPF_LD | BPF_IMM | BPF_DW, BPF_PSEUDO_MAP_FD)."""
    return _insn(0x18, dst, 1, 0, fd) + _insn(0, 0, 0, 0, 0)


def _control(fd: int, index: int, missing: str) -> list[bytes | tuple[int, int, int, str]]:
    """r0 = &control[index]; to `missing` if the lookup fails (it cannot: an array)."""
    return [
        _insn(0x62, 10, 0, -12, index),  # *(u32 *)(fp - 12) = index
        _ld_map_fd(1, fd),
        _insn(0xBF, 2, 10),  # r2 = fp
        _insn(0x07, 2, 0, 0, -12),  # r2 -= 12
        _insn(0x85, 0, 0, 0, _MAP_LOOKUP),
        (0x15, 0, 0, missing),  # if r0 == 0 goto missing
    ]


def program(macs_fd: int, control_fd: int) -> bytes:
    """The filter's instructions (see the module docstring)."""
    # a jump is (opcode, dst register, immediate, label); its offset is filled in below
    code: list[bytes | tuple[int, int, int, str] | str] = [
        _insn(0xBF, 6, 1),  # r6 = r1 (skb)
        _insn(0x7A, 10, 0, -8, 0),  # *(u64 *)(fp - 8) = 0: the key, MAC + 2 zero bytes
        _insn(0xBF, 1, 6),  # r1 = skb
        _insn(0xB7, 2, 0, 0, CHADDR_OFFSET),  # r2 = offset
        _insn(0xBF, 3, 10),  # r3 = fp
        _insn(0x07, 3, 0, 0, -8),  # r3 -= 8
        _insn(0xB7, 4, 0, 0, 6),  # r4 = 6
        _insn(0x85, 0, 0, 0, _SKB_LOAD_BYTES),
        (0x55, 0, 0, "accept"),  # if r0 != 0 (too short for a chaddr) goto accept
        _ld_map_fd(1, macs_fd),
        _insn(0xBF, 2, 10),
        _insn(0x07, 2, 0, 0, -8),
        _insn(0x85, 0, 0, 0, _MAP_LOOKUP),
        (0x55, 0, 0, "accept"),  # enrolled: accept
        *_control(control_fd, CTL_WINDOW, "accept"),
        _insn(0xBF, 7, 0),  # r7 = &window start
        *_control(control_fd, CTL_ADMITTED, "accept"),
        _insn(0xBF, 8, 0),  # r8 = &admitted
        *_control(control_fd, CTL_BUDGET, "accept"),
        _insn(0x79, 9, 0, 0, 0),  # r9 = budget
        _insn(0x85, 0, 0, 0, _KTIME_GET_NS),  # r0 = now
        _insn(0x79, 1, 7, 0, 0),  # r1 = window start
        _insn(0xBF, 2, 0),  # r2 = now
        _insn(0x1F, 2, 1),  # r2 -= r1
        (0xA5, 2, WINDOW_NS, "in_window"),  # if r2 < WINDOW_NS goto in_window
        _insn(0x7B, 7, 0, 0, 0),  # window start = now
        _insn(0xB7, 1, 0, 0, 0),
        _insn(0x7B, 8, 1, 0, 0),  # admitted = 0
        "in_window",
        _insn(0x79, 1, 8, 0, 0),  # r1 = admitted
        _insn(0x3D, 1, 9, 3, 0),  # if r1 >= r9 (the budget) skip the next 3 (to "over")
        _insn(0xB7, 1, 0, 0, 1),
        _insn(0xDB, 8, 1, 0, 0),  # lock *(u64 *)(r8 + 0) += 1
        (0x05, 0, 0, "accept"),  # goto accept
        # over: count it, drop it
        *_control(control_fd, CTL_DROPPED, "drop"),
        _insn(0xB7, 1, 0, 0, 1),
        _insn(0xDB, 0, 1, 0, 0),  # lock *(u64 *)(r0 + 0) += 1
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
            op, reg, imm, label = c
            out += _insn(op, reg, 0, labels[label] - (at + 1), imm)
            at += 1
    return bytes(out)


class BpfError(OSError):
    pass


class KernelFilter:
    """The loaded program and its two maps (see the module docstring). One per adapter."""

    def __init__(self, libc: ctypes.CDLL, nr: int, max_macs: int, per_second: int) -> None:
        self._libc, self._nr = libc, nr
        self.max_macs = max_macs
        self.per_second = per_second
        self._fds: list[int] = []
        self.macs_fd = self._map_create(BPF_MAP_TYPE_HASH, 8, 1, max_macs)
        self.control_fd = self._map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 4)
        self.prog_fd = self._prog_load(program(self.macs_fd, self.control_fd))
        self._synced: frozenset[bytes] = frozenset()
        self.complete = True  # the map holds every enrolled MAC
        self._set(CTL_BUDGET, max(1, per_second * WINDOW_NS // 1_000_000_000))

    @classmethod
    def create(cls, max_macs: int = 65536,
               per_second: int = UNKNOWN_PER_SECOND) -> tuple[KernelFilter | None, str]:
        """(the filter, "") or (None, why it cannot be had here)."""
        nr = _SYSCALL_BPF.get(platform.machine())
        if nr is None or not hasattr(socket, "SOL_SOCKET"):
            return None, f"no bpf(2) system call number known for {platform.machine()}"
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            return cls(libc, nr, max_macs, per_second), ""
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
        the map is left as it was, `complete` is False and the budget unlimited (an enrolled
        MAC left out of the map must not be dropped)."""
        if macs is self._synced:
            return
        if len(macs) > self.max_macs:
            if self.complete:
                self._set(CTL_BUDGET, UNLIMITED)
            self.complete = False
            return
        for mac in self._synced - macs:
            with contextlib.suppress(BpfError):  # not there
                self._elem(BPF_MAP_DELETE_ELEM, self.macs_fd, mac + b"\0\0")
        for mac in macs - self._synced:
            self._elem(BPF_MAP_UPDATE_ELEM, self.macs_fd, mac + b"\0\0", b"\1")
        if not self.complete:
            self._set(CTL_BUDGET, max(1, self.per_second * WINDOW_NS // 1_000_000_000))
        self._synced, self.complete = macs, True

    def _set(self, index: int, value: int) -> None:
        self._elem(BPF_MAP_UPDATE_ELEM, self.control_fd, struct.pack("=I", index),
                   struct.pack("=Q", value))

    def dropped(self) -> int:
        """Datagrams the filter has dropped since it was loaded."""
        raw = self._elem(BPF_MAP_LOOKUP_ELEM, self.control_fd, struct.pack("=I", CTL_DROPPED),
                         bytes(8))
        return int(struct.unpack_from("=Q", raw)[0])

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
