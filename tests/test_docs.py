"""The docs name tests as evidence (security.md's ASVS table): every test they name exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
NAMED = re.compile(r"`(test_\w+)::(test_\w+)`")


def _tests_in(module: str) -> set[str]:
    tree = ast.parse((ROOT / "tests" / f"{module}.py").read_text(encoding="utf-8"))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def test_every_test_the_docs_name_exists() -> None:
    named = [
        (page.name, module, test)
        for page in sorted((ROOT / "docs").glob("*.md"))
        for module, test in NAMED.findall(page.read_text(encoding="utf-8"))
    ]
    assert len(named) > 20  # the ASVS table names its evidence
    missing = [entry for entry in named if entry[2] not in _tests_in(entry[1])]
    assert not missing, missing
