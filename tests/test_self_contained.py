"""The repository carries what it refers to: no file points at a folder beside the clone (the
project's shared folder), which a user's clone does not have."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"\.\./" + "shared" + r"|parents\[2\]|Path\.cwd\(\)\.parent")


def test_nothing_points_outside_the_repository() -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    found = []
    for name in files:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".toml", ".cfg", ".ini", ".txt", ".yaml", ".yml", "") or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "files pointing outside the repository:\n  " + "\n  ".join(found)


def test_the_readme_points_to_the_architecture() -> None:
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "architecture.md").is_file()
