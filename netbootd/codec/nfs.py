"""NFS export configuration as text, rendered from values: nfs-ganesha's `ganesha.conf` and the
kernel NFS server's `/etc/exports.d/netbootd.exports`. Pure: no I/O.

netbootd exports two kinds of directory (see stemcell/nfs_tree.py):

- the shared **store** (every role's closure, one directory per store path), read-only;
- one **host directory** per stem-cell host, read-write, root not squashed (the host owns it).

In both renderings an export's client-visible path is its server path (ganesha's `Pseudo` is
set to `Path`), so the kernel command line netbootd hands out is the same whichever server runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from netbootd.errors import ExportError

_PATH = re.compile(r"/[A-Za-z0-9._/+@%~-]*")
# exports(5) client specs and ganesha Clients entries: "*", hosts, IPs, CIDR subnets, @netgroups
_CLIENT = re.compile(r"\*|@?[A-Za-z0-9][A-Za-z0-9.:*?_-]*(/\d{1,3})?")
_ADDR = re.compile(r"[0-9a-fA-F.:]+")




@dataclass(frozen=True)
class Export:
    export_id: int  # ganesha Export_Id (1..65535); stable for a directory's lifetime
    path: str  # absolute path on the server, also the path clients mount
    writable: bool
    clients: tuple[str, ...] = ("*",)
    comment: str = ""


def _check(e: Export) -> None:
    if not _PATH.fullmatch(e.path) or "//" in e.path or "/../" in f"{e.path}/":
        raise ExportError(f"export path {e.path!r}: absolute, without spaces, quotes or '..'")
    if not 1 <= e.export_id <= 65535:
        raise ExportError(f"export {e.path}: Export_Id {e.export_id} is not in 1..65535")
    if not e.clients or not all(_CLIENT.fullmatch(c) for c in e.clients):
        raise ExportError(f"export {e.path}: bad client spec in {list(e.clients)!r}")
    if "\n" in e.comment:
        raise ExportError("an export comment is one line")


def _checked(exports: Sequence[Export]) -> list[Export]:
    ids: dict[int, str] = {}
    for e in exports:
        _check(e)
        if e.export_id in ids:
            raise ExportError(f"Export_Id {e.export_id} used twice ({ids[e.export_id]}, {e.path})")
        ids[e.export_id] = e.path
    return sorted(exports, key=lambda e: e.export_id)


def render_ganesha(
    exports: Sequence[Export],
    bind_addr: str | None = None,
    port: int | None = None,
    header: Sequence[str] = (),
) -> str:
    """A complete ganesha.conf: NFSv4 only over TCP (no rpcbind, NLM or rquota needed), a
    graceless start (stem-cell clients hold no locks worth a 90 s grace period), one EXPORT
    block per directory with the VFS FSAL."""
    if bind_addr is not None and not _ADDR.fullmatch(bind_addr):
        raise ExportError(f"not an address to bind: {bind_addr!r}")
    core = ["Protocols = 4;", "Enable_NLM = false;", "Enable_RQUOTA = false;",
            "Enable_UDP = false;"]
    if bind_addr:
        core.append(f"Bind_addr = {bind_addr};")
    if port is not None:
        core.append(f"NFS_Port = {int(port)};")
    out = [f"# {line}" for line in header]
    out += ["NFS_CORE_PARAM {", *(f"    {c}" for c in core), "}",
            "NFSV4 {", "    Graceless = true;", "}"]
    for e in _checked(exports):
        access = "RW" if e.writable else "RO"
        out.append("")
        if e.comment:
            out.append(f"# {e.comment}")
        out += [
            "EXPORT {",
            f"    Export_Id = {e.export_id};",
            f'    Path = "{e.path}";',
            f'    Pseudo = "{e.path}";',
            "    Protocols = 4;",
            "    Transports = TCP;",
            "    Access_Type = None;",
            "    Squash = No_Root_Squash;",
            "    SecType = sys;",
            "    FSAL { Name = VFS; }",
            "    CLIENT {",
            f"        Clients = {', '.join(e.clients)};",
            f"        Access_Type = {access};",
            "    }",
            "}",
        ]
    return "\n".join(out) + "\n"


def render_kernel_exports(exports: Sequence[Export], header: Sequence[str] = ()) -> str:
    """exports(5) lines for `/etc/exports.d/netbootd.exports` (then `exportfs -ra`)."""
    out = [f"# {line}" for line in header]
    for e in _checked(exports):
        opts = "rw" if e.writable else "ro"
        opts += ",sync,no_subtree_check,no_root_squash,insecure"
        if e.comment:
            out.append(f"# {e.comment}")
        out.append(f"{e.path} " + " ".join(f"{c}({opts})" for c in e.clients))
    return "\n".join(out) + "\n"
