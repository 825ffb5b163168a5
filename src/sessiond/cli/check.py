"""sessiond check windows: the Windows sign-in chain, step by step, from this machine."""

from __future__ import annotations

import typer
from rich.markup import escape

from ..errors import SettingsError
from .common import (
    EXIT_SETTINGS,
    EXIT_UNREACHABLE,
    ConfigOption,
    DataDirOption,
    JsonOption,
    _print_json,
    _settings,
    out,
)

check_app = typer.Typer(no_args_is_help=True, help="Check settings against what they name.")

#: Causes that say something does not answer (exit 3); every other failure is a setting or a
#: file to correct (exit 2).
UNREACHABLE = frozenset(
    {
        "kdc_unreachable",
        "directory_unreachable",
        "winbindd_unreachable",
        "domain_unreachable",
        "winbind_no_answer",
        "ntlm_auth_timeout",
    }
)


@check_app.command("windows")
def windows(
    config: ConfigOption = None, data_dir: DataDirOption = None, json: JsonOption = False
) -> None:
    """Check the [windows] settings from this machine: krb5.conf, the keytab and its key for
    service_principal, a self-test with the KDC (kinit -k, then kvno), the directory, and
    winbind. One line per step; exit status 0 when every step passes."""
    from ..auth.checks import run_checks

    settings = _settings(config)
    if settings.windows is None:
        raise SettingsError(
            "no [windows] section in these settings: nothing to check (point this command "
            "at the server's settings with --config FILE or SESSIOND_CONFIG)"
        )
    steps = run_checks(settings)
    if json:
        _print_json(
            [{"step": s.name, "ok": s.ok, "cause": s.cause, "detail": s.detail} for s in steps]
        )
    else:
        for step in steps:
            verdict = "[green]ok[/green]" if step.ok else "[red]failed[/red]"
            cause = f" [{step.cause}]" if step.cause else ""
            out.print(
                f"{escape(step.name)}: {verdict}{escape(cause)}: {escape(step.detail)}",
                highlight=False,
            )
    failed = [step for step in steps if not step.ok]
    if not failed:
        return
    if all(step.cause in UNREACHABLE for step in failed):
        raise typer.Exit(EXIT_UNREACHABLE)
    raise typer.Exit(EXIT_SETTINGS)
