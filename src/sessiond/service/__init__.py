"""The domain core: sign-in, sessions, users, licences, the configuration version and the
audit trail. Plain async Python: no HTTP in here.

``facade`` holds :class:`SessionService`, which wires the parts and keeps only what spans
them (start and close, other nodes' notices, closing a user's sessions by login). The parts are
its public attributes, and callers call them directly: ``signin`` (lockout in ``lockout``),
``sessions`` (the session state in ``state``), ``users``, ``licensing``, ``configuration`` and
``audit`` each hold one concern's rules, and each checks its own actors (``require_admin`` in
``common``), so a call that needs an administrator refuses anyone else whoever makes it;
``common`` who acts, the clock, and the shapes of audit records.
"""

from .admission import Opened
from .common import SYSTEM, Actor, Clock, utc_now
from .facade import SessionService

__all__ = ["SYSTEM", "Actor", "Clock", "Opened", "SessionService", "utc_now"]
