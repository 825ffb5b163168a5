"""NTLM credentials for pyspnego's pure-Python NTLM acceptor.

pyspnego (``spnego.server(protocol="ntlm" | "negotiate")``) accepts NTLM only if the
environment variable ``NTLM_USER_FILE`` names a file of ``DOMAIN:USERNAME:PASSWORD`` lines
(the Heimdal / gss-ntlmssp format). It is read when the server context is created *and*
again while the initiator's AUTHENTICATE message is checked, so the variable must stay set
for the whole exchange.

Matching is by (domain, user), case-insensitive, and the domain must match exactly: a client
that says ``SESSIOND\\bob`` matches the line ``SESSIOND:bob:...`` but a client that says
just ``bob`` does not (it would need ``:bob:...``). A UPN-style client name
``carol@SESSIOND.TEST`` matches the line ``:carol@SESSIOND.TEST:...``. The accepted
``client_principal`` is ``DOMAIN\\user`` (or the bare/UPN user name when the domain is empty),
spelled as the *client* sent it.

Caveat: pyspnego's *initiator* also falls back to the first line of ``NTLM_USER_FILE`` when it
is given no credentials, so set the variable only around server-side code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from tests.infra._process import Stoppable

DEFAULT_NTLM_DOMAIN = "SESSIOND"


class NtlmUsers(Stoppable):
    """A temporary ``NTLM_USER_FILE`` with helpers to add users and export the env var."""

    def __init__(self, directory: str | None = None) -> None:
        self._own_dir = directory is None
        self.tmpdir = directory or tempfile.mkdtemp(suffix="-ntlmtest")
        self.path = os.path.join(self.tmpdir, "ntlm_user_file")
        with open(self.path, "w", encoding="utf-8"):
            pass
        os.chmod(self.path, 0o600)

    def add_user(
        self, username: str, password: str, domain: str | None = DEFAULT_NTLM_DOMAIN
    ) -> str:
        """Add a user; return the name a client should use (``DOMAIN\\user`` or ``user``).

        Pass ``domain=None`` for a UPN-style user such as ``carol@SESSIOND.TEST``.
        """
        if ":" in username or ":" in password or (domain and ":" in domain):
            raise ValueError("':' cannot be used in NTLM_USER_FILE fields")
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{domain or ''}:{username}:{password}\n")
        return f"{domain}\\{username}" if domain else username

    def env(self) -> dict[str, str]:
        """``{"NTLM_USER_FILE": path}``, for a server subprocess's environment."""
        return {"NTLM_USER_FILE": self.path}

    @contextmanager
    def activate(self) -> Iterator[dict[str, str]]:
        """Set ``NTLM_USER_FILE`` in :data:`os.environ` for in-process acceptors; restore it."""
        saved = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = self.path
        try:
            yield self.env()
        finally:
            if saved is None:
                os.environ.pop("NTLM_USER_FILE", None)
            else:
                os.environ["NTLM_USER_FILE"] = saved

    def stop(self) -> None:
        """Delete the file (and the folder, if this object created it)."""
        if self._own_dir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        else:
            with suppress(FileNotFoundError):
                os.remove(self.path)
