"""Kernel spec -> feature vector: one featuriser for every op family, with an op one-hot.

Why one featuriser and not one per family:

* the meta-learned predictor adapts to a device from ~10 measurements spread over all families;
  it needs one fixed-width input so those few shots inform one shared head;
* one XGBoost model per device stays one artefact with one held-out score; trees split on the
  op one-hot first when families really behave differently, so nothing is lost;
* the terms that explain most of the latency (FLOPs, bytes moved, roofline time) mean the same
  thing for every op, so families with few rows (norms, ToMe merges) borrow strength from the
  many GEMM rows.

Every magnitude enters as ``log2(1 + x)``: trees do not care about monotone transforms, and the
meta-predictor's MLP needs inputs without a heavy tail. The column ``log_roofline_ms`` is the
natural log of the device's roofline time for the kernel (max of compute and memory time, from
the peak GFLOP/s and bandwidth measured on its reference kernels); the XGBoost predictor learns
the residual ``log(latency) - log_roofline_ms`` so that larger shapes than the trained ones
extrapolate along the roofline instead of being clamped to the largest leaf.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwsearch.errors import HwsearchError
from hwsearch.kernels.specs import (
    ELEMENTWISE_KINDS,
    NORM_KINDS,
    AttentionSpec,
    ElementwiseSpec,
    LinearSpec,
    NormSpec,
    OpSpec,
    TomeMergeSpec,
)
from hwsearch.kernels.traffic import bytes_moved
from hwsearch.spaces.formats import ACT_DTYPE, DTYPE_BYTES, FLOAT_DTYPES, FORMATS, WEIGHT_BITS, density

FEATURE_VERSION = 1
OPS: tuple[str, ...] = ("linear", "attention", "tome_merge", "norm", "elementwise")
KINDS: tuple[str, ...] = NORM_KINDS + ELEMENTWISE_KINDS
# A GEMM counts towards the device's peak when it is this large (the reference set's prefill GEMMs).
PEAK_MIN_ROWS = 64
# A GEMM counts towards the bandwidth when it has this few rows (decode: weight-streaming bound).
BANDWIDTH_MAX_ROWS = 8
# Bandwidth is read from kernels moving at least this much (out of cache); smaller ones only if none does.
BANDWIDTH_MIN_BYTES = 16 << 20


@dataclass(frozen=True)
class Roofline:
    """A device's measured peak compute (GFLOP/s, per format where measured) and bandwidth (GB/s)."""

    peak_gflops: dict[str, float]
    bandwidth_gbs: float
    sources: dict[str, Any] = field(default_factory=dict, compare=False)

    def peak(self, fmt: str) -> float:
        """Peak of `fmt`; a format without its own reference GEMM uses the best float peak."""
        if fmt in self.peak_gflops:
            return self.peak_gflops[fmt]
        floats = [self.peak_gflops[f] for f in FLOAT_DTYPES if f in self.peak_gflops]
        return max(floats) if floats else max(self.peak_gflops.values())

    def as_dict(self) -> dict[str, Any]:
        return {"peak_gflops": dict(self.peak_gflops), "bandwidth_gbs": self.bandwidth_gbs, "sources": self.sources}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Roofline:
        return cls({k: float(v) for k, v in doc["peak_gflops"].items()}, float(doc["bandwidth_gbs"]),
                   dict(doc.get("sources", {})))


def roofline_from_measurements(pairs: Iterable[tuple[OpSpec, float]]) -> Roofline:
    """Peak GFLOP/s from large GEMMs (per format) and bandwidth from decode GEMMs and element-wise
    ops that do not fit in cache, given (spec, latency ms) pairs (normally the device's
    reference-set measurements)."""
    peaks: dict[str, float] = {}
    peak_src: dict[str, str] = {}
    bandwidth: list[tuple[float, float, str]] = []  # (bytes, GB/s, kernel)
    for spec, ms in pairs:
        if not ms > 0:
            continue
        seconds = ms * 1e-3
        if isinstance(spec, LinearSpec) and spec.rank is None and spec.sparsity == "dense":
            if spec.M >= PEAK_MIN_ROWS:
                g = spec.flops / seconds / 1e9
                if g > peaks.get(spec.format, 0.0):
                    peaks[spec.format], peak_src[spec.format] = g, spec.describe()
            if spec.M <= BANDWIDTH_MAX_ROWS:
                moved = bytes_moved(spec)["total"]
                bandwidth.append((moved, moved / seconds / 1e9, spec.describe()))
        elif isinstance(spec, NormSpec | ElementwiseSpec):
            moved = bytes_moved(spec)["total"]
            bandwidth.append((moved, moved / seconds / 1e9, spec.describe()))
    large = [b for b in bandwidth if b[0] >= BANDWIDTH_MIN_BYTES] or bandwidth
    bw, bw_src = max(((b[1], b[2]) for b in large), default=(0.0, ""))
    if not peaks or bw <= 0:
        raise HwsearchError(
            "cannot derive the device's roofline: it needs measured large GEMMs (M >= 64) and decode GEMMs or "
            "element-wise ops; accepted: a device whose reference set is measured (every profile budget measures it first)"
        )
    return Roofline(peaks, bw, {"peak": peak_src, "bandwidth": bw_src})


def _lg(x: float) -> float:
    return math.log2(1.0 + max(float(x), 0.0))


def _fmt(spec: OpSpec) -> str:
    return spec.format if isinstance(spec, LinearSpec) else spec.dtype  # type: ignore[attr-defined]


def _shape(spec: OpSpec) -> dict[str, float]:
    """Family-specific shape terms mapped onto shared slots (rows, width, out) plus the rest."""
    out: dict[str, float] = {}
    if isinstance(spec, LinearSpec):
        nm = spec.nm
        g = spec.group_size or 0
        out.update(rows=spec.M, width=spec.K, out=spec.N, weight_bits=WEIGHT_BITS[spec.format],
                   group_size=g, groups_per_row=spec.K / g if g else 0.0,
                   density=density(spec.sparsity), nm_n=nm[0] if nm else 0, nm_m=nm[1] if nm else 0,
                   sparse=float(nm is not None), rank=spec.rank or 0,
                   rank_fraction=(spec.rank or 0) / min(spec.K, spec.N), lowrank=float(spec.rank is not None),
                   n_gemms=len(spec.factors()), aligned16_k=float(spec.K % 16 == 0), aligned16_n=float(spec.N % 16 == 0),
                   aligned_group=float(g > 0 and spec.K % g == 0))
    elif isinstance(spec, AttentionSpec):
        kvh = spec.kv_heads or spec.heads
        out.update(rows=spec.tokens, width=spec.heads * spec.head_dim, out=spec.kv_len, heads=spec.heads,
                   head_dim=spec.head_dim, kv_len=spec.kv_len, gqa=spec.heads / kvh, causal=float(spec.causal),
                   scores=spec.heads * spec.tokens * spec.kv_len)
        if spec.kv_format is not None:  # a cache in another format: its bits and group in the weight slots
            out.update(weight_bits=WEIGHT_BITS[spec.kv_format], group_size=spec.kv_group or 0)
    elif isinstance(spec, TomeMergeSpec):
        out.update(rows=spec.tokens, width=spec.dim, out=spec.tokens - spec.r, merged=spec.r,
                   merged_fraction=spec.r / spec.tokens, scores=(spec.tokens / 2) ** 2)
    elif isinstance(spec, NormSpec | ElementwiseSpec):
        out.update(rows=spec.tokens, width=spec.dim, out=spec.dim)
    return out


LOGGED = ("rows", "width", "out", "group_size", "groups_per_row", "rank", "heads", "head_dim", "kv_len", "merged",
          "scores")
PLAIN = ("weight_bits", "density", "nm_n", "nm_m", "sparse", "rank_fraction", "lowrank", "n_gemms", "aligned16_k",
         "aligned16_n", "aligned_group", "gqa", "causal", "merged_fraction")
FEATURE_NAMES: tuple[str, ...] = (
    *(f"op={o}" for o in OPS),
    *(f"kind={k}" for k in KINDS),
    *(f"format={f}" for f in FORMATS),
    *(f"log_{n}" for n in LOGGED),
    *PLAIN,
    "act_bytes",
    "log_flops", "log_effective_flops", "log_weight_bytes", "log_scale_bytes", "log_index_bytes",
    "log_activation_bytes", "log_bytes", "log_intensity",
    "log_peak_gflops", "log_bandwidth_gbs", "log_compute_ms", "log_memory_ms", "log_roofline_ms", "compute_bound",
)
INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
OFFSET_FEATURE = INDEX["log_roofline_ms"]
N_FEATURES = len(FEATURE_NAMES)


def roofline_ms(spec: OpSpec, roofline: Roofline) -> tuple[float, float]:
    """(compute ms, memory ms) of a kernel on the device's roofline."""
    fmt = _fmt(spec)
    compute = spec.flops / (roofline.peak(fmt) * 1e9) * 1e3
    memory = bytes_moved(spec)["total"] / (roofline.bandwidth_gbs * 1e9) * 1e3
    return compute, memory


def featurize_one(spec: OpSpec, roofline: Roofline) -> np.ndarray:
    """The feature vector of one spec on a device (see FEATURE_NAMES)."""
    if spec.op not in OPS:
        raise HwsearchError(f"no features for op {spec.op!r}; accepted: {', '.join(OPS)}")
    v = np.zeros(N_FEATURES)
    v[INDEX[f"op={spec.op}"]] = 1.0
    kind = getattr(spec, "kind", None)
    if kind is not None:
        v[INDEX[f"kind={kind}"]] = 1.0
    fmt = _fmt(spec)
    v[INDEX[f"format={fmt}"]] = 1.0
    kv_format = getattr(spec, "kv_format", None)
    if kv_format is not None:  # the cache's format beside the compute dtype
        v[INDEX[f"format={kv_format}"]] = 1.0
    shape = _shape(spec)
    for name in LOGGED:
        v[INDEX[f"log_{name}"]] = _lg(shape.get(name, 0.0))
    for name in PLAIN:
        v[INDEX[name]] = float(shape.get(name, 0.0))
    act_dtype = ACT_DTYPE[fmt] if isinstance(spec, LinearSpec) else fmt
    v[INDEX["act_bytes"]] = DTYPE_BYTES[act_dtype]
    moved = bytes_moved(spec)
    flops = spec.flops
    v[INDEX["log_flops"]] = _lg(flops)
    v[INDEX["log_effective_flops"]] = _lg(flops * shape.get("density", 1.0))
    v[INDEX["log_weight_bytes"]] = _lg(moved["weights"])
    v[INDEX["log_scale_bytes"]] = _lg(moved["scales"])
    v[INDEX["log_index_bytes"]] = _lg(moved["indices"])
    v[INDEX["log_activation_bytes"]] = _lg(moved["activations"])
    v[INDEX["log_bytes"]] = _lg(moved["total"])
    v[INDEX["log_intensity"]] = _lg(flops / max(moved["total"], 1.0))
    compute, memory = roofline_ms(spec, roofline)
    v[INDEX["log_peak_gflops"]] = _lg(roofline.peak(fmt))
    v[INDEX["log_bandwidth_gbs"]] = _lg(roofline.bandwidth_gbs)
    v[INDEX["log_compute_ms"]] = _lg(compute * 1e3)
    v[INDEX["log_memory_ms"]] = _lg(memory * 1e3)
    v[INDEX["log_roofline_ms"]] = math.log(max(compute, memory, 1e-6))
    v[INDEX["compute_bound"]] = float(compute >= memory)
    return v


def featurize(specs: Sequence[OpSpec], roofline: Roofline) -> np.ndarray:
    """(len(specs), N_FEATURES) float64 matrix."""
    if not specs:
        return np.zeros((0, N_FEATURES))
    return np.stack([featurize_one(s, roofline) for s in specs])
