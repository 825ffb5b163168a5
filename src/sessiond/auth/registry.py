"""Which authenticator checks which login type: a registry, in the manner of Django's
AUTHENTICATION_BACKENDS. Each entry names a class by its import path; the class builds itself
from the settings (``from_settings``), or declines (None) when its section is not configured.
Adding a login type is adding a module and a line here, not editing the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import Any

from ..models import LoginType
from ..settings import Settings
from .base import Authenticator, ProofBackend

#: Login type -> (the settings section that switches it on, or None: always; the class).
BACKENDS: Mapping[LoginType, tuple[str | None, str]] = {
    LoginType.PLATFORM: (None, "sessiond.auth.platform:PlatformAuthenticator"),
    LoginType.WINDOWS: ("windows", "sessiond.auth.windows:WindowsAuthenticator"),
    LoginType.LDAP: ("ldap", "sessiond.auth.ldap:LdapAuthenticator"),
}
#: Proof backends by name (the sign-ins that carry their own proof): (section, class).
PROOFS: Mapping[str, tuple[str, str]] = {
    "negotiate": ("windows", "sessiond.auth.integrated:IntegratedWindows"),
    "openid": ("openid", "sessiond.auth.openid:OpenIdBackend"),
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


def load_authenticators(
    settings: Settings, backends: Mapping[LoginType, tuple[str | None, str]] = BACKENDS
) -> dict[LoginType, Authenticator]:
    """The configured authenticators by login type (the platform's own is always there). A
    login type whose section is not set is not even imported (its libraries stay unloaded)."""
    found: dict[LoginType, Authenticator] = {}
    for login_type, (section, path) in backends.items():
        if section is not None and getattr(settings, section, None) is None:
            continue
        authenticator = _load(path).from_settings(settings)
        if authenticator is not None:
            found[login_type] = authenticator
    if LoginType.PLATFORM not in found:
        raise ValueError("the Platform authenticator must always be configured")
    return found


def load_proofs(
    settings: Settings, proofs: Mapping[str, tuple[str, str]] = PROOFS
) -> dict[str, ProofBackend]:
    """The configured proof backends by name (HTTP Negotiate, OpenID Connect): each builds
    itself from its section (``from_settings``), or declines with None."""
    found: dict[str, ProofBackend] = {}
    for name, (section, path) in proofs.items():
        if getattr(settings, section, None) is None:
            continue
        backend = _load(path).from_settings(settings)
        if backend is not None:
            found[name] = backend
    return found
