"""Every bad input of `tests/badinputs.py` (plan files, device imports, search specs, CLI
arguments, database URLs and states, model references): one `error:` line, exit status 2, no
traceback, and no row written by a refused import. Run in-process for speed; the same cases as
real commands make the table of issue 14's note (`python tests/badinputs.py --out FILE`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from badinputs import World, build_world, cases, run_case, run_in_process

from hwsearch.profilers import device_file

BOMB_LIMIT = 4 << 20  # the size limit during the test; the gzip bomb inflates just past it


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("badinputs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWSEARCH_HOME", str(root / "home"))
        mp.delenv("HWSEARCH_DB", raising=False)
        mp.setattr(device_file, "MAX_BYTES", BOMB_LIMIT)
        yield build_world(root, bomb_bytes=BOMB_LIMIT + (1 << 20))


def test_there_are_at_least_forty_bad_inputs_in_every_category(tmp_path: Path) -> None:
    world = World(tmp_path, "sqlite:///a", "sqlite:///b", "sqlite:///c", "sqlite:///d",
                  files=_AnyPath(tmp_path))
    found = cases(world)
    assert len(found) >= 40
    assert {c.category for c in found} >= {"plan file", "device import", "search spec", "CLI argument", "database",
                                            "model reference"}


@pytest.mark.slow
def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(world: World) -> None:
    failed = []
    for case in cases(world):
        outcome = run_case(case, run_in_process)
        if not outcome.ok:
            failed.append(f"{case.category}: {case.what}: exit {outcome.code}, rows {outcome.rows_written}, "
                          f"stderr {outcome.stderr[-1500:]!r}")
    assert not failed, "\n".join(failed)


class _AnyPath(dict):
    """Files of a world nobody builds: every name maps to a path (for counting cases only)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, key: str) -> Path:
        return self.root / key
