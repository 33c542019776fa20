"""Receiving UDP datagrams in batches, with the interface and local address of each
(IP_PKTINFO): recvmmsg(2) through ctypes, one system call for up to `vlen` datagrams.

Python's socket module has no recvmmsg; `socket.recvmsg` costs a system call, a bytes object,
an address tuple and a list of ancillary tuples per datagram. Measured on the benchmark machine
(bench/micro.py, "receive"): ~4.3 us per datagram with recvmsg, ~4.5 with recvmsg_into, ~2.6
with this. Under a flood most datagrams are dropped by `codec.dhcp.prefilter` after a look at
their bytes, so only the bytes are copied out for every datagram; the sender's address and the
IP_PKTINFO ancillary data are decoded (`meta`) only for those the adapter goes on to handle.

The message headers, iovecs, name and control buffers are allocated once; after each call the
headers the kernel filled in are restored from a pristine copy with one memmove. Where libc
has no recvmmsg, `Receiver` falls back to a loop of `recvmsg` with the same interface.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from ipaddress import IPv4Address

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python does not always define it
MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)
_PKTINFO = struct.Struct("I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_CMSGHDR = struct.Struct("@NiI")  # cmsg_len (size_t), cmsg_level, cmsg_type
_SOCKADDR_IN = struct.Struct("!HH4s")  # family (host order, but only the port is read), port, addr
_UINT = struct.Struct("@I")
_SIZE_T = struct.Struct("@N")
_CONTROL = 64  # room for IP_PKTINFO (32) and one more small message
_NAME = 16  # sizeof(struct sockaddr_in)

Meta = tuple[tuple[str, int], int, "IPv4Address | None"]  # peer, ifindex (0: unknown), local


# A rack powering on at once sends a burst of DISCOVERs; the default ~208 KiB receive buffer
# holds ~165 of them, and a PXE ROM whose DISCOVER is dropped retries only after ~4 s.
RECV_BUFFER = 4 << 20


def grow_receive_buffer(sock: socket.socket) -> None:
    """Ask for RECV_BUFFER bytes: beyond net.core.rmem_max as root (SO_RCVBUFFORCE), else as
    much as the limit allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, RECV_BUFFER)  # SO_RCVBUFFORCE (needs CAP_NET_ADMIN)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def _recvmmsg() -> object | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    return fn


_RECVMMSG = _recvmmsg()


def _meta(name: bytes | memoryview, control: bytes | memoryview, controllen: int) -> Meta:
    _family, port, addr = _SOCKADDR_IN.unpack_from(name)
    ifindex, local = 0, None
    off = 0
    while off + _CMSGHDR.size <= controllen:
        clen, level, ctype = _CMSGHDR.unpack_from(control, off)
        if clen < _CMSGHDR.size:
            break
        if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and clen >= _CMSGHDR.size + 12:
            ifindex, spec_dst, _addr = _PKTINFO.unpack_from(control, off + _CMSGHDR.size)
            local = IPv4Address(spec_dst)
        off += (clen + 7) & ~7
    return (socket.inet_ntoa(addr), port), ifindex, local


class Receiver:
    """`receive(sock)` -> the datagrams now queued (up to `vlen`, possibly none) as bytes;
    `meta(i)` -> (peer, ifindex, local address) of the i-th of them."""

    def __init__(self, vlen: int = 64, size: int = 4096) -> None:
        self.vlen, self.size = vlen, size
        self.batched = _RECVMMSG is not None and os.environ.get("NETBOOTD_NO_RECVMMSG") != "1"
        self._fallback: list[tuple[bytes, Meta]] = []
        if not self.batched:
            return
        self._data = ctypes.create_string_buffer(vlen * size)
        self._names = ctypes.create_string_buffer(vlen * _NAME)
        self._control = ctypes.create_string_buffer(vlen * _CONTROL)
        self._iovs = (_Iovec * vlen)()
        self._msgs = (_Mmsghdr * vlen)()
        for i in range(vlen):
            self._iovs[i].base = ctypes.addressof(self._data) + i * size
            self._iovs[i].len = size
            h = self._msgs[i].hdr
            h.name = ctypes.addressof(self._names) + i * _NAME
            h.namelen = _NAME
            h.iov = ctypes.addressof(self._iovs[i])
            h.iovlen = 1
            h.control = ctypes.addressof(self._control) + i * _CONTROL
            h.controllen = _CONTROL
        self._pristine = bytes(memoryview(self._msgs).cast("B"))
        self._msgs_at = ctypes.addressof(self._msgs)
        self._stride = ctypes.sizeof(_Mmsghdr)
        self._hdr = memoryview(
            (ctypes.c_char * (vlen * self._stride)).from_address(self._msgs_at)
        ).cast("B")
        self._buf = memoryview(self._data).cast("B")
        self._name_buf = memoryview(self._names).cast("B")
        self._control_buf = memoryview(self._control).cast("B")
        self._len_at = _Mmsghdr.len.offset
        self._controllen_at = _Msghdr.controllen.offset
        self._n = 0

    def receive(self, sock: socket.socket) -> list[bytes]:
        """Raises OSError other than "nothing queued" (EAGAIN) and EINTR."""
        if not self.batched:
            return self._receive_one_by_one(sock)
        if self._n:  # restore what the kernel wrote into the headers last time
            ctypes.memmove(self._msgs_at, self._pristine, self._n * self._stride)
            self._n = 0
        n = _RECVMMSG(sock.fileno(), self._msgs_at, self.vlen, MSG_DONTWAIT, None)  # type: ignore[operator]
        if n <= 0:
            err = ctypes.get_errno()
            if n == 0 or err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return []
            raise OSError(err, os.strerror(err))
        self._n = n
        hdr, buf, size, stride, at = self._hdr, self._buf, self.size, self._stride, self._len_at
        unpack = _UINT.unpack_from
        out = []
        for i in range(n):
            start = i * size
            out.append(bytes(buf[start : start + min(unpack(hdr, i * stride + at)[0], size)]))
        return out

    def meta(self, i: int) -> Meta:
        if not self.batched:
            return self._fallback[i][1]
        controllen = _SIZE_T.unpack_from(self._hdr, i * self._stride + self._controllen_at)[0]
        return _meta(self._name_buf[i * _NAME : (i + 1) * _NAME],
                     self._control_buf[i * _CONTROL : (i + 1) * _CONTROL], controllen)

    def _receive_one_by_one(self, sock: socket.socket) -> list[bytes]:
        self._fallback = []
        for _ in range(self.vlen):
            try:
                data, ancdata, _flags, peer = sock.recvmsg(self.size, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                break
            ifindex, local = 0, None
            for level, ctype, cdata in ancdata:
                if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= 12:
                    ifindex, spec_dst, _addr = _PKTINFO.unpack_from(cdata)
                    local = IPv4Address(spec_dst)
            self._fallback.append((data, (peer, ifindex, local)))
        return [d for d, _ in self._fallback]
