"""`netbootd build-image`: one host's boot files in an external static netboot store, for sites
that serve files from another web server.

    <store>/by-mac/<aa-bb-cc-dd-ee-ff>/   or   <store>/by-canon/<canonical name>/
        kernel        the role generation's kernel
        initrd        its initrds concatenated in order (Linux unpacks concatenated archives)
        netboot.ipxe  kernel + initrd by relative URL, the generation's command line

Chain it from iPXE with `chain http://<server>/by-mac/${mac:hexhyp}/netboot.ipxe`.
The directory is written whole: a temp directory beside it, then renamed into place, so a web
server never serves a kernel of one generation with the initrd of another.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from netbootd import model
from netbootd.errors import StoreError
from netbootd.model import Image
from netbootd.roles.artifacts import Artifacts

CHUNK = 1 << 20


def script(image: Image, extra_cmdline: str = "") -> str:
    parts = ["initrd=initrd", image.cmdline, model.cmdline(extra_cmdline)]
    cmdline = " ".join(p for p in parts if p)
    return (
        "#!ipxe\n"
        f"# netbootd build-image: role {image.role} generation {image.generation}\n"
        f"kernel kernel {cmdline}\n"
        "initrd initrd\n"
        "boot\n"
    )


def write(store_dir: Path, subdir: str, image: Image, artifacts: Artifacts,
          extra_cmdline: str = "") -> Path:
    """Write `image` to `<store_dir>/<subdir>/` atomically; returns that directory."""
    target = store_dir / subdir
    text = script(image, extra_cmdline)  # validates before anything is written
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    except OSError as e:
        raise StoreError(f"cannot write into {target.parent}: {e.strerror or e}") from None
    old = None
    try:
        shutil.copyfile(artifacts.path(image.kernel.sha256), tmp / "kernel")
        with open(tmp / "initrd", "wb") as out:
            for a in image.initrds:
                with open(artifacts.path(a.sha256), "rb") as f:
                    shutil.copyfileobj(f, out, CHUNK)
        (tmp / "netboot.ipxe").write_text(text)
        for name in ("kernel", "initrd", "netboot.ipxe"):
            os.chmod(tmp / name, 0o644)
        os.chmod(tmp, 0o755)
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.rename(target, old)
        os.rename(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.rename(old, target)
        raise StoreError(f"cannot write {target}: {e.strerror or e}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
