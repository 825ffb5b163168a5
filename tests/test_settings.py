"""Settings: defaults that just work, a file, the environment, and clear refusals."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from sessiond.errors import SettingsError
from sessiond.settings import load_settings


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
