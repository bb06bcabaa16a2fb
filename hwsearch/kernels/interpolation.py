"""Which kernels interpolate into each other, and how far apart their neighbours may be.

Kernels of one family (`family_key`: everything but the token count and the rank) have a smooth
latency along those two axes. The profiler measures each family a model's search scores on a
grid of anchors this close (`profilers.sampling.model_plan`), and the measured table answers a
kernel between anchors at most `MAX_TOKEN_RATIO` (tokens) or `MAX_RANK_RATIO` (ranks) apart
(`predictors.measured`): both read the rule here.
"""

from __future__ import annotations

from typing import Any

from hwsearch.kernels.specs import LinearSpec, OpSpec

MAX_TOKEN_RATIO = 2.0
MAX_RANK_RATIO = 3.0


def token_axis(spec: OpSpec) -> str:
    """The field that counts tokens (rows) in a spec."""
    return "M" if isinstance(spec, LinearSpec) else "tokens"


def family_key(spec: OpSpec) -> tuple[Any, ...]:
    """Everything but the token count and the rank: kernels that interpolate into each other."""
    drop = {token_axis(spec), "rank"}
    return (spec.op, tuple(sorted((k, v) for k, v in spec.params().items() if k not in drop)))
