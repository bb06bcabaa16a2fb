"""Per-device dispatch: the implementation measured fastest runs (and is what gets predicted).

The registry orders implementations by a fixed priority, which is a guess about hardware; on a
real device the guess can be wrong (on one 2-core EPYC, `torch._int_mm` ran int8 GEMMs at about
half the speed of bf16 while fbgemm's dynamic linear was faster at every shape). A `Dispatch`
is learned from a device's measurements:

* ``exact``: a kernel measured with several implementations runs the fastest of them;
* ``families``: any other kernel of the same family (op, format, sparsity, group, and for
  linears decode (M <= 16) vs prefill) runs the family's winner, the implementation with the
  lowest geometric-mean slowdown against the per-kernel best over the family's kernels
  measured more than one way;
* otherwise the registry's order.

Native implementations beat emulated ones whatever their speed (an emulated kernel is never
reported as a speed-up). A low-rank linear dispatches each factor on its own. The same table
picks the measurement a predictor learns from (`predictors.dataset`) and the kernel
`apply_plan` builds, so what is predicted is what runs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwsearch.errors import HwsearchError
from hwsearch.kernels import registry
from hwsearch.kernels.specs import LinearSpec, OpSpec

DECODE_MAX_M = 16


def family(spec: OpSpec) -> str:
    """The dispatch family of a spec: kernels whose implementations rank alike."""
    p = spec.params()
    if isinstance(spec, LinearSpec):
        phase = "decode" if spec.M <= DECODE_MAX_M else "prefill"
        return f"linear|{spec.format}|{spec.sparsity}|{spec.group_size}|{phase}"
    keep = ("format", "kind", "causal", "sparsity")
    return "|".join([spec.op, *(f"{k}={p[k]}" for k in keep if k in p)])


def spec_key(spec: OpSpec) -> str:
    """The kernel's stored key (`KernelConfig.make_key`), so a dispatch table reads back from any database."""
    from hwsearch.db.models import KernelConfig

    return KernelConfig.make_key(spec.op, spec.params())


@dataclass(frozen=True)
class Measured:
    """One stored measurement: what the dispatch learns from."""

    spec: OpSpec
    implementation: str
    native: bool
    ms: float


@dataclass
class Dispatch:
    """Which implementation runs each kernel on one device (see the module docstring)."""

    backend: str = "cpu"
    exact: dict[str, str] = field(default_factory=dict)
    families: dict[str, str] = field(default_factory=dict)
    evidence: dict[str, dict[str, float]] = field(default_factory=dict)  # family -> impl -> geo-mean slowdown

    @classmethod
    def learn(cls, rows: Iterable[Measured], backend: str = "cpu") -> Dispatch:
        by_kernel: dict[OpSpec, dict[str, Measured]] = defaultdict(dict)
        for r in rows:
            if isinstance(r.spec, LinearSpec) and r.spec.rank is not None:
                continue  # a low-rank kernel dispatches its factors, learned from plain linears
            prev = by_kernel[r.spec].get(r.implementation)
            if prev is None or r.ms < prev.ms:
                by_kernel[r.spec][r.implementation] = r
        exact: dict[str, str] = {}
        slow: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for spec, impls in by_kernel.items():
            if len(impls) < 2:
                continue
            pool = [m for m in impls.values() if m.native] or list(impls.values())
            best = min(pool, key=lambda m: m.ms)
            exact[spec_key(spec)] = best.implementation
            for m in pool:
                slow[family(spec)][m.implementation].append(np.log(m.ms / best.ms))
        families: dict[str, str] = {}
        evidence: dict[str, dict[str, float]] = {}
        for fam, per_impl in slow.items():
            n = max(len(v) for v in per_impl.values())
            # an implementation must have been measured on the family's kernels to win it
            scores = {impl: float(np.exp(np.mean(v))) for impl, v in per_impl.items() if len(v) == n}
            evidence[fam] = scores
            families[fam] = min(scores, key=lambda k: (scores[k], k))
        return cls(backend, exact, families, evidence)

    def choose(self, spec: OpSpec) -> registry.Kernel:
        """The kernel `spec` runs on this device."""
        if isinstance(spec, LinearSpec) and spec.rank is not None:
            a, b = spec.factors()
            return registry.LowRank(self.choose(a), self.choose(b))
        candidates = registry.implementations(spec, self.backend)
        if not candidates:
            return registry.select(spec, self.backend)  # the registry's one-line error
        names = {k.name: k for k in candidates}
        pick = self.exact.get(spec_key(spec)) or self.families.get(family(spec))
        if pick in names:
            return names[pick]
        return candidates[0]

    def order(self, spec: OpSpec) -> list[str]:
        """Implementation names of `spec`, the dispatched one first (for picking measurements)."""
        try:
            first = self.choose(spec).name
            rest = [k.name for k in registry.implementations(spec, self.backend)]
        except HwsearchError:  # nothing this process can run (a CUDA device's data on a CPU host)
            return []
        return [first, *(n for n in rest if n != first)]

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "exact": dict(self.exact), "families": dict(self.families),
                "evidence": {k: dict(v) for k, v in self.evidence.items()}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None, backend: str = "cpu") -> Dispatch:
        if not doc:
            return cls(backend)
        return cls(str(doc.get("backend", backend)), dict(doc.get("exact", {})), dict(doc.get("families", {})),
                   {k: dict(v) for k, v in dict(doc.get("evidence", {})).items()})


def registry_order(backend: str = "cpu") -> Dispatch:
    """No measurements: the registry's fixed order."""
    return Dispatch(backend)
