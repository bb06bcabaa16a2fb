"""The Optuna internals hwsearch reaches (`hwsearch.search.optuna_compat`) are all still there.

Fails with the list of what an installed Optuna changed, instead of a search that goes wrong."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from hwsearch.search import optuna_compat

PACKAGE = Path(__file__).resolve().parents[1] / "hwsearch"
PRIVATE = re.compile(r"^optuna(\.\w+)*\._")


def test_installed_optuna_has_every_internal_we_use() -> None:
    problems = optuna_compat.check()
    assert not problems, ("the installed Optuna changed internals hwsearch.search.optuna_compat relies on:\n  "
                          + "\n  ".join(problems))


def test_pyproject_pins_the_major_release() -> None:
    text = (PACKAGE.parent / "pyproject.toml").read_text()
    major = optuna_compat.OPTUNA_MAJOR
    assert re.search(rf'"optuna>={major}\.\d+,<{major + 1}"', text), "pyproject.toml must pin optuna to one major release"


def test_only_the_adapter_reaches_optuna_internals() -> None:
    """Private Optuna modules and attributes (`optuna._x`, `optuna.a._b`, `._storage`, `._trial_id`,
    `._get_generation_key`) appear only in optuna_compat."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "optuna_compat.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            bad = [n for n in names if n.startswith("optuna") and PRIVATE.match(n)]
            if isinstance(node, ast.Attribute) and node.attr in ("_storage", "_trial_id", "_get_generation_key",
                                                                 "_study_id"):
                bad.append(node.attr)
            offenders += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {b}" for b in bad]
    assert not offenders, "Optuna internals outside hwsearch/search/optuna_compat.py:\n  " + "\n  ".join(offenders)
