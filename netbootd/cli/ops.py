"""Running netbootd as a service: `install --systemd`, `backup`, `restore`.

`install --systemd` writes the shipped unit (contrib/systemd/netbootd.service, ExecStart= set to
the netbootd it runs from), the sysusers.d entry (and runs systemd-sysusers on it) and an example
config; it never runs systemctl (it says what to run), so it works in an image build or a
chroot (`--root DIR`). `backup` is a consistent snapshot of the state directory (the database
through SQLite's online backup API first, then the files its rows name -- keys are written
before their rows, so every row's files are there), a tar.gz written atomically with mode
0600; `restore` refuses to overwrite a state directory that has a database unless --force
(then the old one is kept beside it).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from netbootd import __version__
from netbootd.cli.common import load_config, open_store
from netbootd.errors import InvalidInput, NetbootdError, StoreError
from netbootd.fsutil import fsync_dir, write_file
from netbootd.store import DB_NAME, Store
from netbootd.store.migrations import MIGRATIONS

# what a backup carries besides the database: the secrets and what they sign
SECRET_DIRS = ("identity", "tls", "secureboot", "bmc")  # bmc: BMC passwords (power/)
MANIFEST = "netbootd-backup.json"


def systemd_files() -> Path:
    packaged = Path(__file__).resolve().parent.parent / "_systemd"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "contrib" / "systemd"


def render_unit(binary: Path) -> str:
    text = (systemd_files() / "netbootd.service").read_text()
    line = "ExecStart=/usr/local/bin/netbootd serve"
    if line not in text:
        raise NetbootdError("the shipped unit has no ExecStart= line to fill in")
    return text.replace(line, f"ExecStart={binary} serve")


def _netbootd_binary(given: str | None) -> Path:
    if given:
        path = Path(given)
    else:
        found = shutil.which("netbootd") or str(Path(sys.executable).with_name("netbootd"))
        path = Path(found)
    path = path.absolute()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise InvalidInput(f"{path} is not an executable netbootd (give --bin PATH)")
    return path


def cmd_install(args: argparse.Namespace) -> int:
    if not args.systemd:
        raise InvalidInput("say what to install: --systemd")
    root = Path(args.root)
    binary = _netbootd_binary(args.bin)
    unit = render_unit(binary)
    files = {
        root / "etc/systemd/system/netbootd.service": (unit, 0o644, True),
        root / "usr/lib/sysusers.d/netbootd.conf":
            ((systemd_files() / "netbootd.sysusers").read_text(), 0o644, True),
        root / "etc/netbootd/netbootd.toml":
            ((systemd_files() / "netbootd.toml").read_text(), 0o644, False),
    }
    for path, (text, mode, replace) in files.items():
        if path.exists() and not replace:
            print(f"kept {path} (exists)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, text.encode(), mode)
        print(f"wrote {path}")
    if not args.no_user:
        sysusers = shutil.which("systemd-sysusers")
        if sysusers is None:
            print("note: no systemd-sysusers here: create the user `netbootd` yourself "
                  "(useradd --system --home-dir /var/lib/netbootd --shell /usr/sbin/nologin "
                  "netbootd)", file=sys.stderr)
        else:
            (root / "etc").mkdir(parents=True, exist_ok=True)
            r = subprocess.run([sysusers, f"--root={root}",
                                str(root / "usr/lib/sysusers.d/netbootd.conf")],
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise NetbootdError(f"systemd-sysusers failed: {r.stderr.strip()}")
            print("user netbootd: present (systemd-sysusers)")
    if args.link:
        link = root / "usr/local/bin/netbootd"
        if link.exists() or link.is_symlink():
            print(f"kept {link} (exists)")
        else:
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(binary)
            print(f"linked {link} -> {binary} (in sudo's secure_path)")
    print("next: systemctl daemon-reload && systemctl enable --now netbootd; "
          "journalctl -u netbootd -f")
    return 0


# -- backup / restore ------------------------------------------------------------------------


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o600) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def cmd_backup(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    state = cfg.state_dir
    store = open_store(cfg, readonly=True)  # the state must exist; the snapshot reads only
    out = Path(args.file).absolute()
    work = Path(tempfile.mkdtemp(prefix=".netbootd-backup-", dir=out.parent))
    try:
        os.chmod(work, 0o700)
        snap = work / DB_NAME
        store.backup_to(snap)  # SQLite's online backup API: one consistent snapshot
        arts = Store(work, readonly=True)
        referenced = sorted(arts.referenced_artifacts())
        arts.close()
        manifest: dict[str, Any] = {
            "netbootd": __version__, "schema": len(MIGRATIONS), "created": time.time(),
            "state_dir": str(state), "artifacts_included": bool(args.artifacts),
            "artifacts": referenced, "files": {},
        }
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
                tar.add(snap, DB_NAME)
                manifest["files"][DB_NAME] = _sha256(snap)
                dirs = list(SECRET_DIRS) + (["artifacts"] if args.artifacts else [])
                for d in dirs:
                    src = state / d
                    if not src.is_dir():
                        continue
                    for p in sorted(src.rglob("*")):
                        rel = p.relative_to(state).as_posix()
                        if p.name.startswith(".") and p.is_file():
                            continue  # temp files and lock files
                        if p.is_symlink() or not (p.is_file() or p.is_dir()):
                            continue
                        tar.add(p, rel, recursive=False)
                        if p.is_file():
                            manifest["files"][rel] = _sha256(p)
                _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, out)
            fsync_dir(out.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(manifest["files"])
    print(f"backup {out}: database (schema {manifest['schema']}) + {n - 1} file(s)"
          + ("" if args.artifacts else f"; {len(referenced)} artifact(s) listed, not included "
             "(--artifacts includes them)"))
    return 0


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    allowed = {DB_NAME, MANIFEST}
    out = []
    for m in tar.getmembers():
        parts = Path(m.name).parts
        if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
            raise InvalidInput(f"not a netbootd backup: member {m.name!r}")
        if m.name not in allowed and parts[0] not in (*SECRET_DIRS, "artifacts"):
            raise InvalidInput(f"not a netbootd backup: unexpected member {m.name!r}")
        out.append(m)
    return out


def cmd_restore(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    state = cfg.state_dir.absolute()
    src = Path(args.file)
    if (state / DB_NAME).exists() and not args.force:
        raise InvalidInput(f"{state} holds a state database: restoring would replace it. Stop "
                           "netbootd serve, then restore with --force (the old state is kept "
                           "beside it), or give another --state-dir")
    try:
        tar = tarfile.open(src, "r:gz")  # noqa: SIM115 (closed by the `with tar` below)
    except (OSError, tarfile.TarError) as e:
        raise InvalidInput(f"cannot read backup {src}: {e}") from None
    with tar:
        members = _safe_members(tar)
        try:
            manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
        except (KeyError, AttributeError, ValueError):
            raise InvalidInput(f"{src} is not a netbootd backup (no {MANIFEST})") from None
        if int(manifest.get("schema", 0)) > len(MIGRATIONS):
            raise InvalidInput(f"{src} has state schema {manifest['schema']}, newer than this "
                               f"netbootd ({len(MIGRATIONS)}): upgrade netbootd first")
        state.parent.mkdir(parents=True, exist_ok=True)
        new = Path(tempfile.mkdtemp(prefix=f".{state.name}.restore-", dir=state.parent))
        try:
            os.chmod(new, 0o700)
            tar.extractall(new, members=[m for m in members if m.name != MANIFEST],
                           filter="data")
            for rel, digest in manifest["files"].items():
                p = new / rel
                if not p.is_file() or _sha256(p) != digest:
                    raise InvalidInput(f"{src}: {rel} is missing or damaged")
            for p in [new, *new.rglob("*")]:  # files keep the modes they had (0600
                if p.is_dir():                # secrets); directories 0700 whatever umask did
                    os.chmod(p, 0o700)
            Store(new).close()  # migrates an older schema, checks the file is a database
        except (NetbootdError, OSError, tarfile.TarError, StoreError) as e:
            shutil.rmtree(new, ignore_errors=True)
            if isinstance(e, NetbootdError):
                raise
            raise InvalidInput(f"cannot restore {src}: {e}") from None
        kept = None
        if state.exists():
            kept = state.with_name(f"{state.name}.before-restore-{int(time.time())}")
            os.rename(state, kept)
        os.rename(new, state)
        fsync_dir(state.parent)
    missing = [a for a in manifest.get("artifacts", [])
               if not (state / "artifacts" / a[:2] / a).is_file()]
    print(f"restored {src} into {state} (schema {manifest['schema']}, "
          f"{len(manifest['files'])} file(s))" + (f"; previous state kept in {kept}" if kept
                                                  else ""))
    if missing:
        print(f"note: {len(missing)} artifact(s) the generations name are not in the backup: "
              "copy <state>/artifacts/ from the old server or re-run `role add`/`role build`",
              file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    i = sub.add_parser("install", help="install netbootd as a service (systemd unit, user, "
                       "config example); never runs systemctl")
    i.add_argument("--systemd", action="store_true", help="the systemd unit + sysusers.d user")
    i.add_argument("--root", default="/", help="install into this root (an image, a chroot; "
                   "default /)")
    i.add_argument("--bin", help="the netbootd executable ExecStart= runs (default: this one)")
    i.add_argument("--no-user", action="store_true",
                   help="do not run systemd-sysusers (make the user yourself)")
    i.add_argument("--link", action="store_true", help="also link /usr/local/bin/netbootd to "
                   "it (in sudo's secure_path)")
    i.set_defaults(func=cmd_install)
    b = sub.add_parser("backup", help="a consistent snapshot of the state directory (database, "
                       "identities, TLS, Secure Boot keys, BMC passwords) as one tar.gz, mode 0600")
    b.add_argument("file", help="the backup file to write (atomically)")
    b.add_argument("--artifacts", action="store_true",
                   help="include the artifact files (kernels, initrds); default: list them")
    b.set_defaults(func=cmd_backup)
    r = sub.add_parser("restore", help="restore a backup into the state directory")
    r.add_argument("file", help="a file `netbootd backup` wrote")
    r.add_argument("--force", action="store_true", help="replace a state directory that has "
                   "a database (stop netbootd serve first; the old one is kept beside it)")
    r.set_defaults(func=cmd_restore)
