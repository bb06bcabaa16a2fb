"""FP16 GEMM latency on a GPU from its spec sheet: tiles, waves and a roofline, plus a learned residual.

Why this shape (NeuSight, Lee et al., ASPLOS 2025; Habitat, Yu et al., USENIX ATC 2021): a GEMM
runs as output tiles spread over the SMs in waves, and each tile is bounded by the GPU's
compute and memory roofline. What differs between GPUs is mostly their spec sheet (SM count,
peak tensor FLOP/s, bandwidth, L2), so a model written in those terms carries to a GPU it was
not trained on:

* ``gemm_terms``: the ideal compute time (FLOPs / peak) stretched by the wave-quantisation loss
  (the tail wave's idle SMs, geometric mean over the tile shapes libraries commonly pick, since
  which one runs is not known for a new GPU), and the memory time (bytes / bandwidth).
* ``RooflineFit``: ``t = overhead + smooth_max(compute / e_c, memory / e_m)``; three numbers per
  GPU (launch overhead, compute and memory efficiency), fitted robustly on log-latency.
* ``GemmTransferPredictor``: fits the roofline on each source GPU, learns the residual
  ``log(measured / roofline)`` from GPU-relative shape features (waves and tail utilisation per
  tile shape, compute/memory balance, weights against L2) with XGBoost, and adapts to a target GPU
  by refitting its three roofline numbers on the few shots, shrunk toward the sources' mean.
  With no shots the sources' mean is used: the spec-sheet-only floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hwsearch.errors import HwsearchError
from hwsearch.profilers.gpu_specs import GpuSpec

# Output-tile shapes (rows x cols) common in cuBLAS/CUTLASS fp16 kernels on Ampere and Hopper.
TILES: tuple[tuple[int, int], ...] = ((64, 128), (128, 128), (128, 256), (256, 128))
SMOOTH = 4.0  # exponent of the smooth max between compute and memory time
PRIOR_PARAMS = (5.0, 0.7, 0.8)  # overhead (us), compute efficiency, memory efficiency: a start
WAVE_FEATURES = tuple(f"{kind}_{m}x{n}" for m, n in TILES for kind in ("log_tail_loss", "log_waves"))
GEMM_TILE_FEATURES = ("log2_M", "log2_K", "log2_N", "log_compute_over_memory", "log_compute_s",
                      "log_memory_s", "log_weights_over_l2", *WAVE_FEATURES)


def _shape(M, K, N) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    M, K, N = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (M, K, N))
    if not (M.shape == K.shape == N.shape) or M.ndim != 1:
        raise HwsearchError(f"M, K, N must be 1-D arrays of one length; got shapes {M.shape}, {K.shape}, {N.shape}")
    if M.size and min(M.min(), K.min(), N.min()) < 1:
        raise HwsearchError("GEMM sizes must be >= 1; accepted: positive M, K, N")
    return M, K, N


def _waves(M: np.ndarray, N: np.ndarray, tile: tuple[int, int], sms: int) -> np.ndarray:
    """Output tiles per SM (a fractional number of waves)."""
    return np.ceil(M / tile[0]) * np.ceil(N / tile[1]) / sms


def gemm_terms(M, K, N, spec: GpuSpec) -> tuple[np.ndarray, np.ndarray]:
    """(compute seconds with wave-quantisation loss, memory seconds) of fp16 GEMMs on ``spec``."""
    M, K, N = _shape(M, K, N)
    loss = np.zeros_like(M)
    for tile in TILES:
        w = _waves(M, N, tile, spec.sm_count)
        loss += np.log(np.ceil(w) / w)
    compute = 2.0 * M * K * N / spec.peak_flops * np.exp(loss / len(TILES))
    memory = 2.0 * (M * K + K * N + M * N) / spec.bandwidth
    return compute, memory


def gemm_tile_features(M, K, N, spec: GpuSpec) -> np.ndarray:
    """GPU-relative features (columns: ``GEMM_TILE_FEATURES``) of fp16 GEMMs on ``spec``."""
    M, K, N = _shape(M, K, N)
    compute, memory = gemm_terms(M, K, N, spec)
    cols = [np.log2(M), np.log2(K), np.log2(N), np.log(compute / memory), np.log(compute), np.log(memory),
            np.log(2.0 * K * N / spec.l2_bytes)]
    for tile in TILES:
        w = _waves(M, N, tile, spec.sm_count)
        cols += [np.log(np.ceil(w) / w), np.log(w)]
    return np.stack(cols, axis=1)


@dataclass(frozen=True)
class RooflineFit:
    """A GPU's launch overhead and efficiencies: ``t = overhead + smooth_max(c / e_c, m / e_m)``."""

    overhead_us: float
    compute_eff: float
    memory_eff: float

    @property
    def log_params(self) -> np.ndarray:
        return np.log([self.overhead_us, self.compute_eff, self.memory_eff])

    @classmethod
    def from_log(cls, p: np.ndarray) -> RooflineFit:
        o, c, m = np.exp(np.asarray(p, dtype=np.float64)).tolist()
        return cls(o, c, m)

    def seconds(self, compute: np.ndarray, memory: np.ndarray) -> np.ndarray:
        return _roofline(self.log_params, compute, memory)


def _roofline(p: np.ndarray, compute: np.ndarray, memory: np.ndarray) -> np.ndarray:
    o, ec, em = np.exp(p)
    return o * 1e-6 + ((compute / ec) ** SMOOTH + (memory / em) ** SMOOTH) ** (1.0 / SMOOTH)


def fit_roofline(compute: np.ndarray, memory: np.ndarray, log_s: np.ndarray, prior: RooflineFit | None = None,
                 strength: float = 1.0) -> RooflineFit:
    """Robust least squares on log-seconds; with ``prior``, shrunk toward it (``strength`` per log unit)."""
    from scipy.optimize import least_squares

    p0 = prior.log_params if prior is not None else np.log(PRIOR_PARAMS)

    def resid(p: np.ndarray) -> np.ndarray:
        r = np.log(_roofline(p, compute, memory)) - log_s
        return r if prior is None else np.concatenate([r, strength * (p - p0)])

    # soft L1 at 5 %: a shot that hit an odd kernel choice does not drag the whole GPU
    return RooflineFit.from_log(least_squares(resid, p0, loss="soft_l1", f_scale=0.05).x)


@dataclass(frozen=True)
class GemmTask:
    """One GPU's measured fp16 GEMMs."""

    name: str
    spec: GpuSpec
    M: np.ndarray
    K: np.ndarray
    N: np.ndarray
    y_ms: np.ndarray


def _check_latency(y: np.ndarray, n: int, what: str) -> np.ndarray:
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if y.shape != (n,) or not np.all(np.isfinite(y)) or (y.size and y.min() <= 0):
        raise HwsearchError(f"{what}: latencies must be {n} positive finite milliseconds; got shape {y.shape}")
    return y


class GemmTransferPredictor:
    """Spec-sheet roofline x learned residual, fitted on source GPUs, adapted to a new one.

    ``fit(tasks)`` learns from source GPUs; ``adapt(spec, M, K, N, y_ms)`` returns a
    :class:`AdaptedGemmPredictor` for a target GPU (zero shots: the sources' mean roofline).
    """

    def __init__(self, n_estimators: int = 300, max_depth: int = 6, learning_rate: float = 0.05,
                 prior_strength: float = 1.0, seed: int = 0, n_jobs: int = 1) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.prior_strength = prior_strength
        self.seed = seed
        self.n_jobs = n_jobs
        self.fits_: dict[str, RooflineFit] = {}
        self.prior_: RooflineFit | None = None
        self.residual_ = None

    def fit(self, tasks: Sequence[GemmTask]) -> GemmTransferPredictor:
        import xgboost as xgb

        if not tasks:
            raise HwsearchError("GemmTransferPredictor.fit needs at least one source GPU; got none")
        X, r = [], []
        self.fits_ = {}
        for t in tasks:  # every measured row counts: a source with more shapes weighs more
            M, K, N = _shape(t.M, t.K, t.N)
            y = np.log(_check_latency(t.y_ms, M.size, t.name) * 1e-3)
            if M.size < 3:
                raise HwsearchError(f"source GPU {t.name!r} has {M.size} GEMMs; accepted: at least 3")
            compute, memory = gemm_terms(M, K, N, t.spec)
            fit = fit_roofline(compute, memory, y)
            self.fits_[t.name] = fit
            X.append(gemm_tile_features(M, K, N, t.spec))
            r.append(y - np.log(fit.seconds(compute, memory)))
        self.prior_ = RooflineFit.from_log(np.mean([f.log_params for f in self.fits_.values()], axis=0))
        self.residual_ = xgb.XGBRegressor(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                          learning_rate=self.learning_rate, subsample=0.8,
                                          random_state=self.seed, n_jobs=self.n_jobs)
        self.residual_.fit(np.concatenate(X), np.concatenate(r), )
        return self

    def residual(self, M, K, N, spec: GpuSpec) -> np.ndarray:
        """Learned log(measured / roofline) of these GEMMs on ``spec``."""
        if self.residual_ is None:
            raise HwsearchError("GemmTransferPredictor is not fitted yet; call fit(tasks) first")
        return self.residual_.predict(gemm_tile_features(M, K, N, spec)).astype(np.float64)

    def adapt(self, spec: GpuSpec, M=(), K=(), N=(), y_ms=()) -> AdaptedGemmPredictor:
        """A predictor for ``spec``'s GPU, its roofline refitted on the given shots (may be none)."""
        if self.prior_ is None:
            raise HwsearchError("GemmTransferPredictor is not fitted yet; call fit(tasks) first")
        M, K, N = _shape(M, K, N)
        y = _check_latency(y_ms, M.size, spec.name)
        fit = self.prior_
        if M.size:
            compute, memory = gemm_terms(M, K, N, spec)
            target = np.log(y * 1e-3) - self.residual(M, K, N, spec)
            fit = fit_roofline(compute, memory, target, prior=self.prior_, strength=self.prior_strength)
        return AdaptedGemmPredictor(self, spec, fit)


class AdaptedGemmPredictor:
    """The transfer predictor for one GPU; predicts milliseconds."""

    def __init__(self, base: GemmTransferPredictor, spec: GpuSpec, fit: RooflineFit) -> None:
        self.base = base
        self.spec = spec
        self.fit = fit

    def predict(self, M, K, N) -> np.ndarray:
        compute, memory = gemm_terms(M, K, N, self.spec)
        return self.fit.seconds(compute, memory) * np.exp(self.base.residual(M, K, N, self.spec)) * 1e3
