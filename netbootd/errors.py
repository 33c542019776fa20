"""The few error types netbootd raises on purpose.

Everything the operator can cause (bad MAC, unknown role, broken config, hostile path) is a
NetbootdError with a message meant to be read by a human; the CLI maps it to exit status 2 and
the servers log it. Anything else is a bug and is logged with a traceback at the adapter edge.
"""


class NetbootdError(Exception):
    """Base class: an error the operator can act on. str(err) is the whole message."""


class InvalidInput(NetbootdError):
    """A value from outside (CLI argument, HTTP path, config) failed validation."""


class NotFound(NetbootdError):
    """A named thing (host, role, artifact, generation) does not exist."""


class StoreError(NetbootdError):
    """The state database or the artifact store is broken or unreadable (never 'not found')."""


class ConfigError(NetbootdError):
    """The configuration file or an override is invalid."""
