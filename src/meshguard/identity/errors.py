"""Typed errors of the identity layer. Each message reads `<problem>; <fix>`."""

from __future__ import annotations

from meshguard.errors import ConfigError, KeyFormatError, MeshguardError


class IdentityMissingError(ConfigError):
    """No identity (or no WireGuard key, or no org key) in the config dir."""


class KeyFileError(KeyFormatError):
    """A key file exists but does not hold a valid key."""


class UnsafeNameError(MeshguardError):
    """A name that is not a DNS label (and so could escape a directory or break DNS)."""


class CertificateError(MeshguardError):
    """A NodeCertificate is malformed, forged, expired, or does not match."""


class TrustError(MeshguardError):
    """A trust-store change was refused (name clash, revoked key, unknown name)."""


class AlreadyExistsError(MeshguardError):
    """A file would be overwritten without --force."""
