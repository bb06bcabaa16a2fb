"""Held-out splits of a device's measured kernels, for scoring predictors on what they did not see."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hwsearch.errors import HwsearchError
from hwsearch.predictors.features import INDEX

if TYPE_CHECKING:
    from hwsearch.predictors.dataset import Dataset

TEST_FRACTION = 0.2


def random_split(n: int, test_fraction: float = TEST_FRACTION, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of a seeded random split."""
    if not 0 < test_fraction < 1:
        raise HwsearchError(f"test fraction {test_fraction} is out of range; accepted: between 0 and 1")
    idx = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    return np.sort(idx[n_test:]), np.sort(idx[:n_test])


def extrapolation_split(ds: Dataset, test_fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train, test): within each op family the largest kernels (by FLOPs, then bytes) are held out."""
    test: list[int] = []
    ops = ds.ops
    for op in sorted(set(ops.tolist())):
        rows = np.flatnonzero(ops == op)
        size = np.array([ds.specs[i].flops for i in rows])
        bytes_col = ds.X[rows, :][:, INDEX["log_bytes"]]
        order = rows[np.lexsort((bytes_col, size))]
        k = int(round(test_fraction * len(rows)))
        if k and len(rows) - k >= 2:
            test += order[-k:].tolist()
    test_arr = np.array(sorted(test), dtype=int)
    return np.setdiff1d(np.arange(len(ds)), test_arr), test_arr
