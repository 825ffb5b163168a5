"""Reading the PostgreSQL URL once: every form of a host list gives the same hosts, in order;
sessiond asks for the primary; what it cannot use is refused with the password hidden.
(tests/test_failover.py connects with them to a real primary and standby.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from sessiond.errors import SettingsError
from sessiond.service.settings_audit import split_settings
from sessiond.settings import load_settings
from sessiond.settings_sections import hide_password
from sessiond.store.pgurl import parse

TWO = (("db1", 5432), ("db2", 5433))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://u:Secret-1@db1:5432,db2:5433/sessiond",
        "postgresql+asyncpg://u:Secret-1@/sessiond?host=db1:5432&host=db2:5433",
        "postgresql+asyncpg://u:Secret-1@/sessiond?host=db1,db2&port=5432,5433",
        "postgresql://u@/sessiond?host=db1&host=db2:5433&password=Secret-1&port=5432",
    ],
)
def test_every_form_names_the_same_hosts_in_order(url: str) -> None:
    address = parse(url)
    assert address.hosts == TWO
    assert (address.user, address.password, address.database) == ("u", "Secret-1", "sessiond")
    assert address.target_session_attrs == "primary"  # said nothing: the primary
    arguments = address.connect_arguments()
    assert (arguments["host"], arguments["port"]) == (["db1", "db2"], [5432, 5433])
    assert "Secret-1" not in address.shown + repr(address) + hide_password(url)


def test_socket_folders_and_ipv6() -> None:
    address = parse("postgresql+asyncpg://u@%2Frun%2Fpostgresql:5433,[::1]:6000,db3/s")
    assert address.hosts == (("/run/postgresql", 5433), ("::1", 6000), ("db3", 5432))
    assert parse("postgresql+asyncpg://u@/s?host=/run/postgresql").hosts == (
        ("/run/postgresql", 5432),
    )


@pytest.mark.parametrize(
    ("given", "used"),
    [("read-write", "read-write"), ("primary", "primary"), ("any", "primary"), ("", "primary")],
)
def test_target_session_attrs_always_mean_the_primary(given: str, used: str) -> None:
    url = "postgresql+asyncpg://u@db1,db2/s" + (f"?target_session_attrs={given}" if given else "")
    assert parse(url).target_session_attrs == used


def test_other_parameters_go_to_asyncpg_as_they_are() -> None:
    address = parse("postgresql+asyncpg://u@db1/s?sslmode=require&target_session_attrs=primary")
    assert address.connect_arguments()["dsn"] == "postgresql://?sslmode=require"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql+asyncpg://u:Secret-1@db1/s?target_session_attrs=standby", "a standby"),
        ("postgresql+asyncpg://u:Secret-1@db1/s?target_session_attrs=read-only", "a standby"),
        ("postgresql+asyncpg://u:Secret-1@db1/s?target_session_attrs=prefer-standby", "standby"),
        ("postgresql+asyncpg://u:Secret-1@db1/s?target_session_attrs=whichever", "not one of"),
        ("postgresql+asyncpg://u:Secret-1@db1,db2/s?port=1,2,3", "2 hosts and 3 ports"),
        ("postgresql+asyncpg://u:Secret-1@db1/s?host=db2", "both before the path and in host="),
        ("postgresql+asyncpg://u:Secret-1@db1:99999/s", "a port that is not"),
        ("postgresql+asyncpg://u:Secret-1@db1,,db2/s", "an empty host"),
        ("postgresql+asyncpg://u:Secret-1@[::1/s", "not a URL that can be read"),
        ("postgresql+asyncpg://u:Secret-1@db1/s?user=a&user=b", "user more than once"),
    ],
)
def test_what_cannot_be_used_is_refused_without_the_password(url: str, says: str) -> None:
    with pytest.raises(SettingsError) as refused:
        parse(url)
    assert says in refused.value.message
    assert "Secret-1" not in refused.value.message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://u:Secret-1@db1:5432,db2:5433/sessiond",
        "postgresql+asyncpg://u@/sessiond?host=db1:5432&host=db2:5433&password=Secret-1",
    ],
)
def test_the_settings_record_shows_a_host_list_without_its_password(
    url: str, tmp_path: Path
) -> None:
    flat, secrets, _ = split_settings(load_settings(None, database_url=url, data_dir=tmp_path))
    assert "db1" in flat["database_url"] and "db2" in flat["database_url"]
    assert "Secret-1" not in str(flat)
    assert secrets["database_url.password"] == "Secret-1"  # kept for the node's own file only
