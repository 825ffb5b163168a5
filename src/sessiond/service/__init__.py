"""The domain core: sign-in, sessions, users, licences, the configuration version and the
audit trail. Plain async Python: no HTTP in here.

``facade`` holds :class:`SessionService`, which wires the parts and decides nothing itself;
``signin`` (lockout in ``lockout``), ``sessions`` (the session state in ``state``), ``users``,
``licensing`` and ``configuration`` each hold one concern's rules; ``common`` who acts, the
clock, and the shapes of audit records.
"""

from .common import SYSTEM, Actor, Clock, utc_now
from .facade import SessionService

__all__ = ["SYSTEM", "Actor", "Clock", "SessionService", "utc_now"]
