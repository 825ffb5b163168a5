"""Authenticators, one per login type, behind :class:`Authenticator`."""

from .base import Authenticator, PasswordCredentials, Verified
from .platform import PlatformAuthenticator

__all__ = ["Authenticator", "PasswordCredentials", "PlatformAuthenticator", "Verified"]
