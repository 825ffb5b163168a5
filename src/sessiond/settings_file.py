"""The settings file: reading its ``[sessiond]`` table, and checking each of its values on
its own, so that a wrong one is reported even where another source overrides it."""

from __future__ import annotations

import tomllib
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import SettingsError

CONFIG_ENV = "SESSIOND_CONFIG"


def read_file(path: str) -> dict[str, Any]:
    """The ``[sessiond]`` table of a settings file (or the whole file, without one)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(
            f"cannot read settings file {path} (--config or {CONFIG_ENV}): {exc.strerror}; "
            "name a readable TOML file"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(
            f"settings file {path} (--config or {CONFIG_ENV}) is not valid TOML: {exc}; "
            "correct it there"
        ) from None
    except UnicodeDecodeError:
        raise SettingsError(
            f"settings file {path} (--config or {CONFIG_ENV}) is not UTF-8 text"
        ) from None
    section = data.get("sessiond", data)
    if not isinstance(section, dict):
        raise SettingsError(f"settings file {path}: [sessiond] must be a table, not a single value")
    return section


def file_problems(model: type[BaseModel], path: str, exclude: list[str]) -> list[str]:
    """Each wrong value of the file, checked on its own (not what the file's keys make
    together with other sources): ``name (in path): what is wrong``, leaving out the
    names that ``exclude``'s problems already name."""
    section = read_file(path)
    try:
        model.model_validate(section)
    except ValidationError as exc:
        found = []
        for err in exc.errors():
            if not err["loc"] or err["loc"][0] not in section:
                continue
            name = ".".join(str(p) for p in err["loc"])
            if any(problem.startswith(name + " ") for problem in exclude):
                continue
            if err["type"] == "extra_forbidden":
                continue  # the merged settings name unknown keys already
            if len(err["loc"]) == 1 and isinstance(section[err["loc"][0]], dict):
                continue  # a table's keys together: the environment may complete them
            message = str(err["msg"]).removeprefix("Value error, ")
            found.append(f"{name} (in {path}): {message}")
        return found
    return []
