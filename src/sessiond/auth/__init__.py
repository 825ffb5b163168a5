"""Authenticators, one per login type, behind :class:`Authenticator`."""

from .base import Authenticator, Identity, PasswordCredentials
from .platform import PlatformAuthenticator

__all__ = ["Authenticator", "Identity", "PasswordCredentials", "PlatformAuthenticator"]
