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
from pathlib import Path

from ..settings import Settings, WindowsSettings


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


def krb5_config_path(windows: WindowsSettings) -> Path:
    """The krb5.conf MIT krb5 reads for this server: ``windows.krb5_config``, else the first
    file of ``KRB5_CONFIG``, else ``/etc/krb5.conf``."""
    if windows.krb5_config:
        return Path(windows.krb5_config)
    named = os.environ.get("KRB5_CONFIG", "").split(":")[0]
    return Path(named or "/etc/krb5.conf")


def unreadable(path: Path) -> str | None:
    """Why this process cannot read the file at ``path`` ("does not exist", "cannot be read by
    this process (...)", "is not a file"), or None. MIT krb5 skips a krb5.conf it cannot open
    without an error of its own, so this is asked of the file itself."""
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except FileNotFoundError:
        return "does not exist"
    except IsADirectoryError:
        return "is not a file"
    except OSError as exc:
        return f"cannot be read by this process ({exc.strerror})"
    return None
