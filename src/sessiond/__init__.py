"""sessiond: sessions for the document platform — the client library and the server.

The public face is short: the two clients, the token, the models and the error tree.
"""

from ._version import __version__
from .client import AsyncSessionClient, SessionClient
from .errors import (
    AuthenticationError,
    InvalidCredentials,
    PermissionDenied,
    SessiondError,
    SessionExpired,
    SessionNotFound,
    TokenInvalid,
    TokenSignatureInvalid,
)
from .manager import AsyncSessionManager, SessionManager
from .models import (
    AccessLevel,
    ConfigurationInfo,
    DeviceType,
    LicenseType,
    LoginType,
    ServiceType,
)
from .token import AuthToken, SessionToken

__all__ = [
    "AccessLevel",
    "AsyncSessionClient",
    "AsyncSessionManager",
    "AuthToken",
    "AuthenticationError",
    "ConfigurationInfo",
    "DeviceType",
    "InvalidCredentials",
    "LicenseType",
    "LoginType",
    "PermissionDenied",
    "ServiceType",
    "SessionClient",
    "SessionExpired",
    "SessionManager",
    "SessionNotFound",
    "SessionToken",
    "SessiondError",
    "TokenInvalid",
    "TokenSignatureInvalid",
    "__version__",
]
