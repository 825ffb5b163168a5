"""The domain core: open, validate and close sessions, administer users and licences, keep the
configuration version, and write the audit trail. Plain async Python: no HTTP in here.

``core`` holds :class:`SessionService`; ``licensing`` the seat rules; ``common`` who acts and
the shapes of audit records.
"""

from .common import SYSTEM, Actor, Clock, utc_now
from .core import SessionService

__all__ = ["SYSTEM", "Actor", "Clock", "SessionService", "utc_now"]
