"""`netbootd ipxe build`: iPXE compiled from the operator's source with TRUST= netbootd's CA.

Why a build at all: Debian 12's iPXE has no HTTPS, and no distro iPXE can be told to trust a
private CA at run time (the `trust` setting and DHCP 175.90 are read once at start; measured in
../shared/reference/uefi-https). So netbootd compiles it, with

  - `TRUST=` the state directory's CA certificate (the only root the binary trusts; the server
    sends the full chain, iPXE needs the root sent);
  - `EMBED=` a script that chains to the host's script over HTTPS at a fixed address:
    `https://<address>:<https port>/boot/${netX/mac:hexhyp}.ipxe` -- not `${filename}`, which any
    DHCP server on the LAN could point at a plain-HTTP URL;
  - config/local/general.h: HTTPS (BIOS builds leave it out by default), certificate, ping,
    nslookup, reboot and poweroff commands.

Targets: bin-x86_64-efi/ipxe.efi, bin/undionly.kpxe and, when aarch64-linux-gnu-gcc exists,
bin-arm64-efi/ipxe.efi. The sources are extracted (a tarball) or copied (a tree; the operator's
tree is never written) once per source digest and target into the work directory, where
`make` keeps its objects: a rebuild for a new CA or address recompiles two files and links
(seconds, where a first build takes minutes). Each result lands in
<state>/ipxe/builds/<key>/ (key: recipe, source digest, CA fingerprint, embedded script,
targets) with a manifest.json; current.json names the build `serve` hands out (served.py),
which it does only while the CA still matches. `tls rotate --ca` calls rebuild(): the last
build again, for the new CA, from the same source, targets and work directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from netbootd.errors import IpxeBuildError, StoreError
from netbootd.fsutil import private_dir, write_file
from netbootd.model import https_base

RECIPE = 1  # bump when GENERAL_H or the make flags change: every older build becomes stale
GENERAL_H = """\
/* written by netbootd ipxe build */
#define DOWNLOAD_PROTO_HTTPS
#define CERT_CMD
#define NSLOOKUP_CMD
#define PING_CMD
#define REBOOT_CMD
#define POWEROFF_CMD
"""
CROSS_ARM64 = "aarch64-linux-gnu-"
MAKE_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Target:
    name: str  # what --target takes
    make_target: str  # relative to src/
    file: str  # its name in a build directory, and under netbootd's served prefix
    cross: str = ""  # CROSS_COMPILE prefix ("" = the host's gcc)


TARGETS = (
    Target("x86_64-efi", "bin-x86_64-efi/ipxe.efi", "ipxe.efi"),
    Target("bios", "bin/undionly.kpxe", "undionly.kpxe"),
    Target("arm64-efi", "bin-arm64-efi/ipxe.efi", "arm64/ipxe.efi", CROSS_ARM64),
)
BY_NAME = {t.name: t for t in TARGETS}


def ipxe_dir(state_dir: Path) -> Path:
    return state_dir / "ipxe"


def builds_dir(state_dir: Path) -> Path:
    return ipxe_dir(state_dir) / "builds"


def current_path(state_dir: Path) -> Path:
    return ipxe_dir(state_dir) / "current.json"


def ca_fingerprint(ca: x509.Certificate) -> str:
    return ca.fingerprint(hashes.SHA256()).hex()


def compilable(t: Target) -> bool:
    """Is there a compiler for `t` on this machine?"""
    return shutil.which(f"{t.cross}gcc") is not None


def default_targets() -> list[Target]:
    """Every target this machine can compile (arm64 needs gcc-aarch64-linux-gnu)."""
    return [t for t in TARGETS if compilable(t)]


def embedded_script(address: IPv4Address, port: int) -> str:
    """The script built into the binary: DHCP, then the host's script over HTTPS (retried: an
    unattended machine waits for its server rather than stopping at a prompt)."""
    url = f"{https_base(address, port)}/boot/${{netX/mac:hexhyp}}.ipxe"
    return (
        "#!ipxe\n"
        "echo netbootd iPXE: HTTPS only, netbootd's CA only\n"
        ":retry\n"
        "dhcp || goto failed\n"
        f"chain {url} || goto failed\n"
        ":failed\n"
        "echo NETBOOTD-IPXE: chain failed (${errno}); retrying in 10 s\n"
        "sleep 10\n"
        "goto retry\n"
    )


@dataclass(frozen=True)
class Source:
    """An iPXE source: a tarball or a tree holding src/Makefile."""

    path: Path
    digest: str  # sha256 of the tarball, or of the tree's src/ (paths and contents)
    label: str  # what an operator recognises: the git commit, else the tarball/tree name

    @classmethod
    def open(cls, path: Path) -> Source:
        path = path.resolve()
        if path.is_file():
            try:
                with path.open("rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError as e:
                raise IpxeBuildError(f"cannot read {path}: {e.strerror}") from None
            label = path.name.split(".tar")[0]
            return cls(path, digest, label)
        if not (path / "src" / "Makefile").is_file():
            raise IpxeBuildError(f"{path}: no iPXE source here (no src/Makefile); give the "
                                 "top of an iPXE checkout or a source tarball")
        return cls(path, _tree_digest(path / "src"), _git_commit(path) or path.name)


def _build_outputs(rel: Path) -> bool:
    return bool(rel.parts) and rel.parts[0].startswith("bin")


def _tree_files(src: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(src):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames
                             if not _build_outputs((d / n).relative_to(src)))
        for n in sorted(filenames):
            if d != src / "config" / "local" or n != "general.h":  # netbootd writes that one
                yield d / n


def _tree_digest(src: Path) -> str:
    h = hashlib.sha256()
    try:
        for p in _tree_files(src):
            h.update(str(p.relative_to(src)).encode() + b"\0")
            with p.open("rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    except OSError as e:
        raise IpxeBuildError(f"cannot read the iPXE source {src}: {e}") from None
    return h.hexdigest()


def _git_commit(top: Path) -> str | None:
    if not (top / ".git").exists() or shutil.which("git") is None:
        return None
    r = subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True,
                       text=True, check=False)
    return r.stdout.strip()[:12] if r.returncode == 0 else None


def build_key(source: Source, ca_fpr: str, embed: str, targets: Sequence[Target]) -> str:
    parts = {"recipe": RECIPE, "source": source.digest, "ca": ca_fpr, "embed": embed,
             "general_h": GENERAL_H, "targets": [t.name for t in targets]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _prepare_tree(source: Source, work: Path, target: str) -> Path:
    """The source's private copy under `work` for `target` (made once per digest and target:
    a tree that built another target -- the arm64 cross build, measured -- makes the next
    make in it regenerate every dependency and object, minutes instead of a relink); its src/
    with netbootd's config/local/general.h."""
    tree = work / f"src-{source.digest[:16]}-{target}"
    if not (tree / "src" / "Makefile").is_file():
        _unpack(source, work, tree)
    general = tree / "src" / "config" / "local" / "general.h"
    general.parent.mkdir(parents=True, exist_ok=True)
    if not general.is_file() or general.read_text() != GENERAL_H:
        general.write_text(GENERAL_H)
    return tree / "src"


def _unpack(source: Source, work: Path, tree: Path) -> None:
    tmp = work / f".{tree.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if source.path.is_file():
            _extract(source.path, tmp)
        else:
            shutil.copytree(source.path / "src", tmp / "src", symlinks=True,
                            ignore=lambda d, names: [n for n in names if n.startswith("bin")
                                                     and Path(d) == source.path / "src"])
        if not (tmp / "src" / "Makefile").is_file():
            raise IpxeBuildError(f"{source.path}: no src/Makefile in it: not an iPXE source")
        os.replace(tmp, tree)
    except OSError as e:
        raise IpxeBuildError(f"cannot unpack {source.path} into {work}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(tarball: Path, into: Path) -> None:
    """The tarball's one top directory's contents into `into` (like --strip-components=1),
    refusing members that would land outside it (links included: tarfile's data filter)."""
    try:
        with tarfile.open(tarball) as tf:
            members = tf.getmembers()
            tops = {m.name.split("/", 1)[0] for m in members}
            if len(tops) != 1:
                raise IpxeBuildError(f"{tarball}: expected one top directory, found {len(tops)}")
            top = tops.pop()
            keep = []
            for m in members:
                if m.name == top:
                    continue
                m.name = m.name.split("/", 1)[1]
                if m.islnk():
                    m.linkname = m.linkname.split("/", 1)[-1]
                keep.append(m)
            tf.extractall(into, members=keep, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise IpxeBuildError(f"cannot extract {tarball}: {e}") from None


def _make(src: Path, t: Target, trust: Path, embed: Path, jobs: int, log: Path) -> float:
    argv = ["make", "-C", str(src), f"-j{jobs}", t.make_target, f"TRUST={trust}",
            f"EMBED={embed}", "NO_WERROR=1"]
    if t.cross:
        argv.append(f"CROSS={t.cross}")
    t0 = time.monotonic()
    with log.open("ab") as out:
        out.write(f"\n==== {' '.join(argv)}\n".encode())
        out.flush()
        try:
            r = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False,
                               timeout=MAKE_TIMEOUT)
        except FileNotFoundError:
            raise IpxeBuildError("no `make`: install make, gcc, perl, liblzma-dev") from None
        except subprocess.TimeoutExpired:
            raise IpxeBuildError(f"make {t.make_target} ran over {MAKE_TIMEOUT:.0f}s; see "
                                 f"{log}") from None
    if r.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise IpxeBuildError(f"make {t.make_target} failed ({r.returncode}); last lines of "
                             f"{log}:\n" + "\n".join(tail))
    return time.monotonic() - t0


@dataclass(frozen=True)
class Result:
    key: str
    directory: Path
    manifest: dict[str, Any]
    cached: bool


def build(state_dir: Path, source: Source, ca: x509.Certificate, address: IPv4Address,
          https_port: int, targets: Sequence[Target], work: Path | None = None,
          jobs: int | None = None, progress: Callable[[str], None] | None = None) -> Result:
    """Build (or find in the cache) iPXE for `targets` and make it the current build."""
    say = progress or (lambda _msg: None)
    if not targets:
        raise IpxeBuildError("no target to build")
    for t in targets:
        if not compilable(t):
            raise IpxeBuildError(f"target {t.name} needs {t.cross}gcc (Debian: "
                                 f"{'gcc-aarch64-linux-gnu' if t.cross else 'gcc'})")
    fpr = ca_fingerprint(ca)
    embed = embedded_script(address, https_port)
    key = build_key(source, fpr, embed, targets)
    out = private_dir(builds_dir(state_dir)) / key
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and all((out / t.file).is_file() for t in targets):
        manifest = read_manifest(out)
        set_current(state_dir, key)
        return Result(key, out, manifest, cached=True)
    # absolute: make runs in src/ (-C), and TRUST=/EMBED= are read from there
    work = private_dir((work or ipxe_dir(state_dir) / "work").resolve())
    log = ipxe_dir(state_dir) / "build.log"
    files: dict[str, dict[str, Any]] = {}
    with _locked(work / ".lock"):
        say(f"source {source.label} ({source.digest[:12]}), work directory {work}")
        # The trust anchor's name carries its fingerprint (iPXE's change detection is by name,
        # bin*/.trusted.list): a new CA recompiles rootcert.o. The script keeps one name,
        # rewritten only when it changes (make sees the mtime): a new name in EMBED= makes
        # iPXE rebuild nearly everything (measured: 143 s where a new CA costs 10 s).
        trust = work / f"trust-{fpr[:16]}.pem"
        trust.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        for old in work.glob("trust-*.pem"):  # earlier CAs' (each build names its own)
            if old != trust:
                old.unlink(missing_ok=True)
        embed_file = work / "embed.ipxe"
        if not embed_file.is_file() or embed_file.read_text() != embed:
            embed_file.write_text(embed)
        tmp = out.with_name(f".{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for t in targets:
            src = _prepare_tree(source, work, t.name)
            say(f"make {t.make_target}{' (' + t.cross + 'gcc)' if t.cross else ''} ...")
            secs = _make(src, t, trust, embed_file, jobs or os.cpu_count() or 1, log)
            built = src / t.make_target
            dest = tmp / t.file
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(built, dest)
            data = dest.read_bytes()
            files[t.name] = {"file": t.file, "make_target": t.make_target, "size": len(data),
                             "sha256": hashlib.sha256(data).hexdigest(),
                             "seconds": round(secs, 1)}
            say(f"built {t.make_target}: {len(data)} bytes in {secs:.1f}s")
        manifest = {"key": key, "recipe": RECIPE, "source": str(source.path),
                    "source_label": source.label, "source_sha256": source.digest,
                    "ca_sha256": fpr, "ca_subject": ca.subject.rfc4514_string(),
                    "address": str(address), "https_port": https_port, "embed": embed,
                    "targets": files, "work": str(work), "built_at": time.time()}
        write_file(tmp / "manifest.json", json.dumps(manifest, indent=2).encode(), 0o644)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    set_current(state_dir, key)
    return Result(key, out, manifest, cached=False)


def rebuild(state_dir: Path, ca: x509.Certificate,
            progress: Callable[[str], None] | None = None) -> Result | None:
    """The current build made again for `ca` (after `tls rotate --ca`): the last build's source,
    targets, address, HTTPS port and work directory (its objects kept: seconds). None: there
    is no current build. IpxeBuildError: it cannot be made again here (the source is gone, a
    compiler is missing, make failed)."""
    key = current_key(state_dir)
    if key is None:
        return None
    m = read_manifest(builds_dir(state_dir) / key)
    source = m.get("source")
    if not isinstance(source, str) or not Path(source).exists():
        raise IpxeBuildError(f"the last build's source {source} is gone: `netbootd ipxe build "
                             "--source DIR|TARBALL`")
    targets = [BY_NAME[n] for n in dict(m.get("targets") or {}) if n in BY_NAME]
    work = m.get("work")
    try:
        address = IPv4Address(str(m.get("address")))
    except ValueError:
        raise StoreError(f"the last build's manifest has no address ({key})") from None
    return build(state_dir, Source.open(Path(source)), ca, address,
                 int(m.get("https_port", 443)), targets,
                 work=Path(work) if isinstance(work, str) else None, progress=progress)


def read_manifest(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read the iPXE build manifest in {directory}: {e}") from None
    if not isinstance(data, dict):
        raise StoreError(f"{directory}/manifest.json is not an object")
    return data


def set_current(state_dir: Path, key: str) -> None:
    write_file(current_path(state_dir), json.dumps({"key": key}).encode() + b"\n", 0o644)


def current_key(state_dir: Path) -> str | None:
    try:
        data = json.loads(current_path(state_dir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read {current_path(state_dir)}: {e}") from None
    key = data.get("key") if isinstance(data, dict) else None
    if not isinstance(key, str) or not key.isalnum():
        raise StoreError(f"{current_path(state_dir)}: no build key in it")
    return key


def clear_current(state_dir: Path) -> bool:
    try:
        current_path(state_dir).unlink()
    except FileNotFoundError:
        return False
    return True
