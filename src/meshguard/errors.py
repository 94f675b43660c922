"""Typed errors. Local misuse raises a MeshguardError subclass, which the CLI prints as one line."""


class MeshguardError(Exception):
    """Base class for errors that the CLI reports as a single line and a non-zero exit."""

    exit_code: int = 1


class CryptoError(MeshguardError):
    """A cryptographic operation failed (bad key, bad point, failed authentication)."""


class KeyFormatError(MeshguardError):
    """A key or key file has the wrong format."""


class ConfigError(MeshguardError):
    """The configuration directory or one of its files is unusable."""


class WireFormatError(ValueError):
    """A packet could not be parsed. Raised by codecs, caught by protocol cores and counted."""
