"""The only process environment sessiond sets for Windows sign-in, once, at server start.

Two libraries have no per-call way to be told a file:

* MIT krb5 reads ``KRB5_CONFIG`` when a library context is made, and python-gssapi offers no
  way to make one from another profile. So ``windows.krb5_config`` becomes ``KRB5_CONFIG``
  here, before the server makes any Kerberos call.
* pyspnego's NTLM acceptor (``ntlm = "file"``) reads ``NTLM_USER_FILE`` while it checks an
  answer. So ``windows.ntlm_user_file`` becomes ``NTLM_USER_FILE`` here, and only when the
  file is the NTLM check in use.

The keytab is *not* passed through the environment (no ``KRB5_KTNAME``): it is given to
GSSAPI as a credential store at every sign-in (:mod:`.kerberos`). ``sessiond serve`` calls
:func:`apply_process_environment` once, before it builds the application; no constructor
changes the environment.
"""

from __future__ import annotations

import os

from ..settings import Settings


def process_environment(settings: Settings) -> dict[str, str]:
    """The variables :func:`apply_process_environment` sets (none without ``[windows]``)."""
    windows = settings.windows
    if windows is None:
        return {}
    env: dict[str, str] = {}
    if windows.krb5_config:
        env["KRB5_CONFIG"] = str(windows.krb5_config)
    if windows.negotiate and windows.ntlm_mode == "file" and windows.ntlm_user_file:
        env["NTLM_USER_FILE"] = str(windows.ntlm_user_file)
    return env


def apply_process_environment(settings: Settings) -> dict[str, str]:
    """Set :func:`process_environment` in this process (a server's, at its start), and make
    sure no ``NTLM_USER_FILE`` inherited from the caller's shell enables the file acceptor
    when the settings do not. Returns what was set."""
    env = process_environment(settings)
    if "NTLM_USER_FILE" not in env:
        os.environ.pop("NTLM_USER_FILE", None)
    os.environ.update(env)
    return env
