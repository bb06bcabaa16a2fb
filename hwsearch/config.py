"""Where things live: the database URL and the data directory."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_dir

EXTERNAL_DATA_ENV = "HWSEARCH_EXTERNAL_DATA"


def data_dir() -> Path:
    """The user's hwsearch data directory (override with HWSEARCH_HOME)."""
    path = Path(os.environ.get("HWSEARCH_HOME") or user_data_dir("hwsearch", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def external_data_dir() -> Path:
    """Where external benchmark data is read from by default (`bench help`, `bench gemm-transfer`):
    HWSEARCH_EXTERNAL_DATA, else `external` in the data directory. It is not shipped (see README)."""
    return Path(os.environ.get(EXTERNAL_DATA_ENV) or data_dir() / "external")


def default_db_url() -> str:
    """`HWSEARCH_DB` if set, else an SQLite file in the data directory."""
    return os.environ.get("HWSEARCH_DB") or f"sqlite:///{data_dir() / 'hwsearch.db'}"


VERBOSE_ENV = "HWSEARCH_VERBOSE"


def verbose() -> bool:
    """Whether third-party log lines (Ray's start-up, ...) reach the user: `hwsearch --verbose`, or
    HWSEARCH_VERBOSE=1 for the Python API and the processes a command starts."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")
