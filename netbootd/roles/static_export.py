"""`netbootd build-image`: one host's boot files in an external static netboot store, for sites
that serve files from another web server.

    <store>/by-mac/<aa-bb-cc-dd-ee-ff>/   or   <store>/by-canon/<canonical name>/
        kernel        the role generation's kernel
        initrd        its initrds concatenated in order (Linux unpacks concatenated archives)
        netboot.ipxe  kernel + initrd by relative URL, rendered from `static.ipxe.j2`

The script's command line is the policy's (`policy.boot_plan` with `model.StaticUrls`): the
role's re-provision flag is never on it -- a static store cannot clear a one-shot flag, so a flag
word in the image's own command line is removed as it is for served scripts. Chain it from iPXE
with `chain http://<server>/by-mac/${mac:hexhyp}/netboot.ipxe`. The directory is written whole:
a temp directory beside it, then renamed into place, so a web server never serves a kernel of one
generation with the initrd of another.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from netbootd import model, policy
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.errors import StoreError
from netbootd.model import Artifact, Flag, Host, Image, StaticUrls
from netbootd.roles.artifacts import Artifacts

CHUNK = 1 << 20


def script(renderer: ScriptRenderer, host: Host, image: Image, flag_word: str,
           extra_cmdline: str = "") -> str:
    """The static store's netboot.ipxe for `host` booting `image` (plus `extra_cmdline`)."""
    extra = model.cmdline(extra_cmdline)
    # One `initrd` file holds the generation's initrds, concatenated (see write()).
    joined = (Artifact("", sum(a.size for a in image.initrds)),) if image.initrds else ()
    img = dataclasses.replace(image, initrds=joined,
                              cmdline=" ".join(p for p in (image.cmdline, extra) if p))
    plan = policy.boot_plan(host, img, StaticUrls(), provision=Flag(flag_word, on=False))
    return renderer.static_script(plan)


def write(store_dir: Path, subdir: str, image: Image, artifacts: Artifacts, text: str) -> Path:
    """Write `image` and its script `text` to `<store_dir>/<subdir>/` atomically; returns that
    directory."""
    target = store_dir / subdir
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
