"""Password rules of the security options: length, strength, reuse, expiry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from .errors import PasswordRejected
from .settings import SecuritySettings

STRONG_MIN_LENGTH = 8
_CLASSES = (
    ("a lower-case letter", str.islower),
    ("an upper-case letter", str.isupper),
    ("a digit", str.isdigit),
)


def check_rules(password: str, security: SecuritySettings) -> None:
    """Length and strength; raises :class:`PasswordRejected` saying what is missing."""
    minimum = security.min_password_length
    if security.enforce_strong_passwords:
        minimum = max(minimum, STRONG_MIN_LENGTH)
    if len(password) < minimum:
        raise PasswordRejected(
            f"the password is too short: at least {minimum} characters",
            details={"rule": "min_length", "min_length": minimum},
        )
    if security.enforce_strong_passwords:
        missing = [name for name, test in _CLASSES if not any(test(c) for c in password)]
        if all(ch.isalnum() for ch in password):
            missing.append("a symbol")
        if missing:
            raise PasswordRejected(
                "the password is not strong enough: add " + ", ".join(missing),
                details={"rule": "strength", "missing": missing},
            )


async def check_reuse(
    password: str,
    history: Sequence[str],
    matches: Callable[[str, str], Awaitable[bool]],
    security: SecuritySettings,
) -> None:
    """Refuse a password that equals one of the last ``unique_password_count`` ones."""
    for old_hash in history[: security.unique_password_count]:
        if await matches(old_hash, password):
            raise PasswordRejected(
                f"the password was used recently: choose one that differs from the last "
                f"{security.unique_password_count}",
                details={"rule": "reuse", "unique_password_count": security.unique_password_count},
            )


def expires_at(changed: datetime | None, security: SecuritySettings) -> datetime | None:
    if changed is None or security.password_expiration_time is None:
        return None
    return changed + security.password_expiration_time


def warning_due(changed: datetime | None, security: SecuritySettings, now: datetime) -> bool:
    expiry = expires_at(changed, security)
    notice = security.password_expiration_notification_time
    return expiry is not None and notice is not None and now >= expiry - notice
