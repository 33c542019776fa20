"""Every error type netbootd raises on purpose, in two families that are handled differently.

**Operator faults** (`NetbootdError` and its subclasses): something the operator can fix -- a bad
MAC on the command line, an unknown role, a broken config file, a full disk, a tgtd that is not
running. The message is meant to be read by a human and says what to do; the CLI prints it and
exits with status 2, a server logs it as an error (HTTP 500, no reply) and keeps serving. A
server never turns one into "unknown machine".

**Peer faults** (`Dropped` and its subclasses): a datagram or request from the network that
netbootd does not answer -- truncated, not a PXE request, a forged option. Anything on the LAN
can send these, so they are dropped (and counted) at debug level, never logged as errors and
never raised past the adapter that parsed them.

Anything else that escapes is a bug, logged with a traceback at the adapter edge.
"""


class NetbootdError(Exception):
    """An error the operator can act on. str(err) is the whole message."""


class InvalidInput(NetbootdError):
    """A value from outside (CLI argument, HTTP path, config) failed validation."""


class NotFound(NetbootdError):
    """A named thing (host, role, artifact, generation) does not exist."""


class StoreError(NetbootdError):
    """The state database or a file store is broken, unreadable or full (never 'not found')."""


class ConfigError(NetbootdError):
    """The configuration file or an override is invalid."""


class RenderError(NetbootdError):
    """An iPXE template is missing or broken, or a value would be unsafe in a script."""


class StemCellError(NetbootdError):
    """A role's boot mode cannot be served to this host yet (no LUN, store never synced)."""


class BuildError(NetbootdError):
    """Nix failed to evaluate or build a role (the message carries Nix's own)."""


class IpxeBuildError(NetbootdError):
    """`netbootd ipxe build` failed: no usable source, a missing tool, or make's own error."""


class CloneError(NetbootdError):
    """A disk clone (reflink, qcow2 overlay, copy) could not be made."""


class IscsiError(NetbootdError):
    """An iSCSI operation (gold import, LUN, target) was refused or failed."""


class TgtError(NetbootdError):
    """tgtadm failed; the message carries tgtadm's."""


class TgtParseError(NetbootdError):
    """`tgtadm --op show` printed something netbootd cannot read."""


class NfsTreeError(NetbootdError):
    """The NFS export tree could not be synced or laid out."""


class ExportError(NetbootdError):
    """An NFS export cannot be rendered (bad path, id or client spec)."""


class BmcError(NetbootdError):
    """A BMC did not answer within the timeout, refused the credentials or the command, or
    answered something netbootd cannot read. The message names the BMC, never a password."""


class CpioError(NetbootdError, ValueError):
    """A cpio archive is malformed."""


class Dropped(Exception):  # noqa: N818 (a verdict on a packet, not an error of ours)
    """A peer's datagram or request is not answered. `reason` says why (for debug logs and
    drop counters); it is never an operator error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DhcpDropped(Dropped):
    """The datagram is not a PXE request netbootd answers."""


class TftpDropped(Dropped):
    """The datagram is not a TFTP request netbootd answers."""
