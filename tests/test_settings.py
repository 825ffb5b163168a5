"""Settings: defaults that just work, a file, the environment, and clear refusals."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from sessiond.errors import SettingsError
from sessiond.service.lockout import domain_lockout_warning
from sessiond.settings import load_settings

from .conftest import ServerProcess, free_port, server_env


def test_defaults_need_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SESSIOND_CONFIG", raising=False)
    settings = load_settings()
    assert settings.session_expiration_time_span == timedelta(days=7)
    assert settings.security.min_password_length == 4
    assert settings.security.failed_login_attempts_series_time == timedelta(minutes=5)
    assert settings.security.blocked_series_due_date_time == timedelta(minutes=15)
    assert settings.effective_database_url.startswith("sqlite+aiosqlite:///")


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "sessiond.toml"
    config.write_text(
        '[sessiond]\nport = 9000\nsession_expiration_time_span = "1.12:00:00"\n'
        '[sessiond.security]\nsession_inactivity_time = "2h"\nmin_password_length = 8\n'
    )
    monkeypatch.setenv("SESSIOND_PORT", "9100")
    settings = load_settings(config)
    assert settings.port == 9100
    assert settings.session_expiration_time_span == timedelta(days=1, hours=12)
    assert settings.security.session_inactivity_time == timedelta(hours=2)
    assert settings.security.min_password_length == 8


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("port = 'many'", "port"),
        ("surprise = 1", "surprise"),
        ("session_expiration_time_span = '-5m'", "session_expiration_time_span"),
        ("[sessiond.argon2]\nmemory_cost = 1", "memory_cost"),
        ("this is not toml", "not valid TOML"),
        ("[sessiond.security]\nsession_inactivity_time = '-5m'", "must not be negative"),
        ("[sessiond.security]\nsession_inactivity_time = 0", "must be positive"),
        ("touch_interval = -1", "must not be negative"),
        ("touch_interval = 'inf'", "too long a duration"),
        ("session_expiration_time_span = '9999999d'", "at most 36500 days"),
        ("[sessiond.security]\nblocked_series_due_date_time = 0", "must be positive"),
        ("trusted_proxies = ['10.0.0.1/8']", "not an address or network"),
        ("[sessiond.console]\npublic_url = 'https://x.example/console'", "no path, query"),
        ("[sessiond.console]\npublic_url = 'sessiond.example'", "http:// or https:// URL"),
        (
            "[sessiond.windows]\nrealm = 'CORP.EXAMPLE'\nverify_kdc = false\nnegotiate = false\n"
            "require_membership_of = 'CORP\\\\staff'",
            "require_membership_of needs a way to read group memberships: ntlm = winbind, or "
            r"\[windows.directory\]",
        ),
    ],
)
def test_bad_settings_are_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, problem: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text if text.startswith("[") or "not toml" in text else "[sessiond]\n" + text)
    monkeypatch.delenv("SESSIOND_PORT", raising=False)
    with pytest.raises(SettingsError, match=problem):
        load_settings(config)


def test_every_settings_example_in_the_docs_loads(tmp_path: Path) -> None:
    import re

    docs = Path(__file__).parent.parent / "docs"
    blocks = [
        block
        for page in sorted(docs.glob("*.md"))
        for block in re.findall(r"```toml\n(.*?)```", page.read_text(), re.S)
    ]
    assert blocks
    for i, block in enumerate(blocks):
        config = tmp_path / f"example-{i}.toml"
        config.write_text(block)
        load_settings(config)


WINDOWS = '[sessiond.windows]\nrealm = "CORP.EXAMPLE.COM"\nverify_kdc = false\nnegotiate = false\n'
LDAP = '[sessiond.ldap]\nurl = "ldaps://ldap.example.com"\n'


@pytest.mark.parametrize(
    ("text", "warned"),
    [
        # The defaults: 3 refusals of an unmapped account, below a threshold of 5.
        (WINDOWS, None),
        (LDAP, None),
        ("[sessiond.security]\nunmapped_account_failures = 9\n", None),  # no domain configured
        (
            WINDOWS + "[sessiond.security]\nunmapped_account_failures = 5\n",
            "security.unmapped_account_failures = 5 is not below "
            "windows.domain_lockout_threshold = 5: ",
        ),
        (
            WINDOWS + "domain_lockout_threshold = 10\n[sessiond.security]\n"
            "unmapped_account_failures = 5\n",
            None,
        ),
        (WINDOWS + "domain_lockout_threshold = 0\n", None),  # the domain locks no account
        (
            WINDOWS + "domain_lockout_threshold = 3\n",
            "security.unmapped_account_failures = 3 is not below "
            "windows.domain_lockout_threshold = 3: ",
        ),
        (
            LDAP + "[sessiond.security]\nunmapped_account_failures = 0\n",
            "security.unmapped_account_failures = 0 (no limit) is not below "
            "ldap.domain_lockout_threshold = 5: ",
        ),
        # Mapped users: only when the lockout applies to them.
        (WINDOWS + "[sessiond.security]\nmax_failed_login_attempts_in_series = 5\n", None),
        (
            WINDOWS + LDAP + "domain_lockout_threshold = 4\n[sessiond.security]\n"
            "block_windows_and_ldap_users = true\nmax_failed_login_attempts_in_series = 5\n"
            "max_failed_login_attempts_before_blocked = 3\n",
            "security.max_failed_login_attempts_in_series = 5 is not below "
            "ldap.domain_lockout_threshold = 4: ",
        ),
        (
            WINDOWS + "[sessiond.security]\nblock_windows_and_ldap_users = true\n"
            "unmapped_account_failures = 6\nmax_failed_login_attempts_before_blocked = 5\n",
            "security.unmapped_account_failures = 6, "
            "security.max_failed_login_attempts_before_blocked = 5 are not below "
            "windows.domain_lockout_threshold = 5: ",
        ),
    ],
)
def test_limits_not_below_the_domains_lockout_threshold_are_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, warned: str | None
) -> None:
    monkeypatch.delenv("SESSIOND_CONFIG", raising=False)
    config = tmp_path / "sessiond.toml"
    config.write_text(text)
    settings = load_settings(config)
    if "unmapped_account_failures" not in text:
        assert settings.security.unmapped_account_failures == 3
    warning = domain_lockout_warning(settings)
    if warned is None:
        assert warning is None
    else:
        assert warning is not None and warning.startswith(warned), warning
        assert "the domain's Account lockout threshold" in warning


def test_serve_warns_of_it_once_at_start(tmp_path: Path) -> None:
    config = tmp_path / "sessiond.toml"
    config.write_text(LDAP + "[sessiond.security]\nunmapped_account_failures = 5\n")
    data_dir = tmp_path / "sessiond-data"
    server = ServerProcess(
        data_dir,
        free_port(),
        server_env(data_dir, SESSIOND_CONFIG=str(config)),
        tmp_path / "server.log",
    )
    server.start()
    try:
        lines = [
            line
            for line in server.log_path.read_text().splitlines()
            if "ldap.domain_lockout_threshold" in line
        ]
    finally:
        server.stop()
    assert len(lines) == 1, lines
    assert (
        "WARNING" in lines[0]
        and "security.unmapped_account_failures = 5 is not below" in (lines[0])
    )
