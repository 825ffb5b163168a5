"""Backends, one per login type, behind :class:`Authenticator` (passwords) and
:class:`ProofBackend` (credentials that carry their own proof)."""

from .base import (
    Authenticator,
    Backend,
    Claim,
    Identity,
    PasswordCredentials,
    ProofBackend,
    ProofStep,
)
from .platform import PlatformAuthenticator

__all__ = [
    "Authenticator",
    "Backend",
    "Claim",
    "Identity",
    "PasswordCredentials",
    "PlatformAuthenticator",
    "ProofBackend",
    "ProofStep",
]
