"""BMC passwords at rest, kept like host identities (identity/vault.py):

    <state>/bmc/                 0700
      <mac aa-bb-cc-dd-ee-ff>/   0700
        password                 0600  the password `bmc set --password-file` read, as given

The file is written whole (temp file, fsync, rename; fsutil.write_file) before the store row
that names the BMC, so a row never points at a missing password; `bmc remove` deletes the row,
then the file. The password is read only by the code that logs in to the BMC, kept in a
`Secret` whose repr and str are "***", and never logged, printed, put in an event or
answered by the API (those say "set").
"""

from __future__ import annotations

import shutil
from pathlib import Path

from netbootd.errors import InvalidInput, StoreError
from netbootd.fsutil import private_dir, write_file
from netbootd.model import MacAddress

MAX_PASSWORD = 256
IPMI_MAX_PASSWORD = 20  # IPMI v2.0 RAKP: 20 bytes at most


class Secret:
    """A password that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def read_password_file(path: Path, max_len: int = MAX_PASSWORD) -> Secret:
    """The operator's password file: its content less one trailing newline. Errors name the
    file, never its content."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InvalidInput(f"--password-file {path}: {e.strerror or e}") from None
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise InvalidInput(f"--password-file {path} is empty")
    if b"\0" in raw or b"\n" in raw:
        raise InvalidInput(f"--password-file {path}: one line, no NUL bytes")
    if len(raw) > max_len:
        raise InvalidInput(f"--password-file {path}: at most {max_len} bytes for this BMC")
    try:
        return Secret(raw.decode())
    except UnicodeDecodeError:
        raise InvalidInput(f"--password-file {path} is not UTF-8 text") from None


class BmcVault:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "bmc"

    def path(self, mac: MacAddress) -> Path:
        return self.root / mac.hyphen / "password"

    def write(self, mac: MacAddress, password: Secret) -> None:
        private_dir(self.root)
        d = private_dir(self.root / mac.hyphen)
        write_file(d / "password", password.reveal().encode(), 0o600)

    def read(self, mac: MacAddress) -> Secret:
        p = self.path(mac)
        try:
            return Secret(p.read_bytes().decode())
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not text"
            raise StoreError(f"cannot read the BMC password of {mac} in {p}: {why} (`netbootd "
                             "bmc set` again)") from None

    def remove(self, mac: MacAddress) -> None:
        d = self.root / mac.hyphen
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():
            raise StoreError(f"cannot remove {d} (the BMC password of {mac})")
