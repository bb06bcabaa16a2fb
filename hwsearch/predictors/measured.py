"""Stored measurements as a lookup table: exact kernels, and kernels between measured ones.

Whole-model latency answers a kernel from the device's own measurement wherever one exists
(`Answer` in :mod:`hwsearch.predictors.registry`); a predictor only fills the rest. Model search
spaces hold thousands of distinct kernels (every layer x choice at every token count a merge
schedule produces), too many to time one by one, but their latency is smooth along two axes:
the token count (rows of a GEMM, tokens of attention or a norm) and a low-rank linear's rank.
`hwsearch profile --for MODEL` therefore measures each kernel family on a grid of anchor token
counts and ranks (`hwsearch.profilers.sampling.model_plan`), and this table answers a kernel
between grid points by linear interpolation, but only between neighbours at most
`MAX_TOKEN_RATIO` (tokens) or `MAX_RANK_RATIO` (ranks) apart: never by extrapolation.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from hwsearch.kernels.interpolation import MAX_RANK_RATIO, MAX_TOKEN_RATIO, family_key, token_axis
from hwsearch.kernels.specs import LinearSpec, OpSpec


def _rank(spec: OpSpec) -> int | None:
    return spec.rank if isinstance(spec, LinearSpec) else None


def _between(points: list[float], x: float, max_ratio: float) -> tuple[float, float] | None:
    """The measured neighbours (lo, hi) of x in sorted `points`, if close enough to interpolate."""
    i = bisect_left(points, x)
    if i == 0 or i == len(points):
        return None
    lo, hi = points[i - 1], points[i]
    return (lo, hi) if hi / lo <= max_ratio else None


class MeasuredTable:
    """Measured latencies (ms) by spec; `lookup` answers exactly or by safe interpolation."""

    def __init__(self, measured: Mapping[OpSpec, float]) -> None:
        self.exact = dict(measured)
        self._grid: dict[tuple[Any, ...], dict[int | None, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        for spec, ms in self.exact.items():
            self._grid[family_key(spec)][_rank(spec)][int(getattr(spec, token_axis(spec)))] = ms

    def __len__(self) -> int:
        return len(self.exact)

    def __contains__(self, spec: object) -> bool:
        return isinstance(spec, OpSpec) and self.lookup(spec) is not None

    def lookup(self, spec: OpSpec) -> float | None:
        """The measured latency, interpolated between close measured neighbours, or None."""
        if spec in self.exact:
            return self.exact[spec]
        by_rank = self._grid.get(family_key(spec))
        if not by_rank:
            return None
        tokens = int(getattr(spec, token_axis(spec)))
        rank = _rank(spec)
        if rank is None or rank in by_rank:
            return self._at_tokens(by_rank.get(rank, {}), tokens)
        ranks = sorted(r for r in by_rank if r is not None)
        around = _between(ranks, rank, MAX_RANK_RATIO)
        if around is None:
            return None
        lo, hi = (self._at_tokens(by_rank[int(r)], tokens) for r in around)
        if lo is None or hi is None:
            return None
        w = (rank - around[0]) / (around[1] - around[0])
        return lo + w * (hi - lo)

    @staticmethod
    def _at_tokens(points: Mapping[int, float], tokens: int) -> float | None:
        if tokens in points:
            return points[tokens]
        around = _between(sorted(points), tokens, MAX_TOKEN_RATIO)
        if around is None:
            return None
        lo, hi = int(around[0]), int(around[1])
        w = (tokens - lo) / (hi - lo)
        return points[lo] + w * (points[hi] - points[lo])
