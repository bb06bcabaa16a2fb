"""The public API (`hwsearch.__all__`): each entry point's docstring example runs as written, and
`import hwsearch` stays cheap (the entry points load on first use)."""

from __future__ import annotations

import doctest
import subprocess
import sys
import types

import pytest

import hwsearch

ENTRY_POINTS = ("Client", "SearchSpec", "Plan", "apply_plan", "export", "get_model", "from_torch")


def test_entry_points_are_public() -> None:
    assert set(ENTRY_POINTS) <= set(hwsearch.__all__)
    for name in hwsearch.__all__:
        assert getattr(hwsearch, name) is not None
    from hwsearch.export import ExportWarning  # noqa: F401 - the package, imported first, is callable too

    assert callable(hwsearch.export)


def entry_point(name: str) -> object:
    """`hw.NAME`; `hw.export` may be the (callable) package, whose function carries the example."""
    obj = getattr(hwsearch, name)
    return getattr(obj, name) if isinstance(obj, types.ModuleType) else obj


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_docstring_example_runs(name: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWSEARCH_HOME", str(tmp_path))
    obj = entry_point(name)
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={})
    examples = sum(len(t.examples) for t in tests)
    assert examples, f"hwsearch.{name} has no example in its docstring"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"hwsearch.{name}: {result.failed} of {examples} docstring examples failed (above)"


def test_import_is_cheap() -> None:
    code = "import sys, hwsearch; print(sorted(m for m in ('torch', 'optuna', 'ray', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
