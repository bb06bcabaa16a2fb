"""Loaders and feature encoders for the external latency data (HELP and Vidur).

The data is not shipped; it is read in place from `config.external_data_dir()` (or a path
given with `--data`). Encoders turn an architecture description into a numeric feature vector so the
generic predictors (``hwsearch.predictors``) can run on it:

* NAS-Bench-201 cell string -> one-hot op per edge (6 x 5) plus the same one-hot restricted to
  edges that carry data from the input to the output (an op whose result never reaches the
  output, or whose input is never fed, is dead compute in a pruned cell).
* FBNet op-index list (22 layers, ops 0..8) -> HELP's factorised one-hot per layer
  (kernel 3/5, expansion e1/e1-g2/e3/e6; op 8 = skip is all zeros), 132 values.
  ``fbnet_costs`` adds 5 analytic cost estimates from FBNet's macro-architecture (log MACs,
  pointwise and depthwise MACs, weights, activation memory); :func:`load_help` keeps them apart
  (``HelpData.costs``) so a predictor can use them as ready-made basis functions.
* OFA JSON (ks, e, d, r) -> HELP's one-hot of kernel size and expansion per active layer
  (inactive layers beyond a stage's depth are zero) and of the resolution, plus (r/224)^2.
* Vidur GEMM (M, K, N) -> log sizes, FLOPs, bytes, arithmetic intensity and tile counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hwsearch.errors import HwsearchError, unknown

SPACES: dict[str, tuple[str, str]] = {
    "nasbench201": ("nasbench201_latency.csv", "nb201_arch_str"),
    "fbnet": ("fbnet_latency.csv", "op_idx_list"),
    "ofa": ("ofa_latency.csv", "ofa_arch"),
}

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# edge i of the cell string goes from node NB201_EDGES[i][0] to node NB201_EDGES[i][1]
NB201_EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))


# -- encoders ----------------------------------------------------------------------------------
def encode_nb201(arch: str) -> np.ndarray:
    """NAS-Bench-201 cell string -> 60 values: op one-hot per edge, then the same for live edges."""
    parts = [p for p in arch.strip().strip("|").split("|") if p and p != "+"]
    if len(parts) != 6:
        raise HwsearchError(f"NAS-Bench-201 cell {arch!r} has {len(parts)} edges; accepted: 6 (|op~i|+|...|)")
    ops = []
    for edge, part in zip(NB201_EDGES, parts, strict=True):
        op, _, src = part.partition("~")
        if op not in NB201_OPS:
            raise unknown("NAS-Bench-201 op", op, NB201_OPS)
        if not src.isdigit() or int(src) != edge[0]:
            raise HwsearchError(f"NAS-Bench-201 cell {arch!r}: edge {part!r} should read from node {edge[0]}")
        ops.append(NB201_OPS.index(op))
    # nodes fed from the input, and nodes that reach the output, through non-'none' edges
    fed = {0}
    for (a, b), op in zip(NB201_EDGES, ops, strict=True):
        if op != 0 and a in fed:
            fed.add(b)
    reach = {3}
    for (a, b), op in reversed(list(zip(NB201_EDGES, ops, strict=True))):
        if op != 0 and b in reach:
            reach.add(a)
    out = np.zeros(60)
    for i, ((a, b), op) in enumerate(zip(NB201_EDGES, ops, strict=True)):
        out[i * 5 + op] = 1.0
        if op != 0 and a in fed and b in reach:
            out[30 + i * 5 + op] = 1.0
    return out


def encode_fbnet(op_idx: list[int] | str) -> np.ndarray:
    """FBNet op-index list -> 132 values (HELP's encoding, 6 per layer)."""
    out = np.zeros((22, 6))
    for i, o in enumerate(_fbnet_ops(op_idx)):
        if o == 8:  # skip
            continue
        out[i, 0 if o < 4 else 1] = 1.0
        out[i, 2 + o % 4] = 1.0
    return out.reshape(-1)


# FBNet macro-architecture of the 22 searchable layers (Wu et al. 2019, Table 1) with the CIFAR
# stride schedule of HW-NAS-Bench (32x32 input, stem 16 channels at stride 1, first stage at
# stride 1): output channels and stride per layer. The schedule agrees with the measured data:
# per-layer costs of the training devices scale with output area as 64:16:4:1 over the stages.
FBNET_CHANNELS = (16, 24, 24, 24, 24, 32, 32, 32, 32, 64, 64, 64, 64, 112, 112, 112, 112, 184, 184, 184, 184, 352)
FBNET_STRIDES = (1, 1, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)
FBNET_INPUT = (32, 16)  # resolution and channels entering the first searchable layer
FBNET_COSTS = ("log_macs", "log_pw_macs", "log_dw_macs", "log_params", "log_activations")


def _fbnet_ops(op_idx: list[int] | str) -> list[int]:
    ops = json.loads(op_idx) if isinstance(op_idx, str) else list(op_idx)
    if len(ops) != 22 or any(not 0 <= int(o) <= 8 for o in ops):
        raise HwsearchError(f"FBNet architecture {op_idx!r} is not 22 op indices in 0..8")
    return [int(o) for o in ops]


def fbnet_costs(op_idx: list[int] | str) -> np.ndarray:
    """FBNet op-index list -> 5 device-independent cost estimates (``FBNET_COSTS``), log(1 + x).

    Each searchable layer is an inverted-residual block 1x1 (groups g) -> kxk depthwise (stride)
    -> 1x1 (groups g) with expansion e: pointwise MACs ``h²·c·ec/g + h'²·ec·c'/g``, depthwise MACs
    ``h'²·ec·k²``, weights, and the activations read and written; skip costs nothing.
    Latency on most devices is close to additive in per-layer costs, and these sums are the
    roofline terms (compute, weight traffic, activation traffic) that weigh them.
    """
    h, cin = FBNET_INPUT
    pw = dw = par = act = 0.0
    for cout, stride, o in zip(FBNET_CHANNELS, FBNET_STRIDES, _fbnet_ops(op_idx), strict=True):
        ho = h // stride
        if o != 8:
            k, e, g = (3 if o < 4 else 5), (1, 1, 3, 6)[o % 4], (2 if o % 4 == 1 else 1)
            m = cin * e
            pw += (h * h * cin * m + ho * ho * m * cout) / g
            dw += ho * ho * m * k * k
            par += (cin * m + m * cout) / g + m * k * k
            act += h * h * (cin + m) + ho * ho * (m + cout)
        h, cin = ho, cout
    return np.log1p(np.array([pw + dw, pw, dw, par, act]))


def encode_ofa(arch: dict | str) -> np.ndarray:
    """OFA architecture (ks, e, d, r) -> 146 values (HELP's 145 one-hots plus (r/224)^2)."""
    a = json.loads(arch) if isinstance(arch, str) else dict(arch)
    try:
        ks, ex, depth, r = list(a["ks"]), list(a["e"]), list(a["d"]), int(a["r"])
    except (KeyError, TypeError, ValueError):
        raise HwsearchError(f"OFA architecture {arch!r} needs keys ks (20), e (20), d (5), r") from None
    if len(ks) != 20 or len(ex) != 20 or len(depth) != 5 or not 128 <= r <= 224:
        raise HwsearchError(f"OFA architecture {arch!r}: accepted ks/e of 20, d of 5, r in 128..224")
    ks_map, ex_map = {3: 0, 5: 1, 7: 2}, {3: 0, 4: 1, 6: 2}
    ks_oh, ex_oh = np.zeros((20, 3)), np.zeros((20, 3))
    for stage, dd in enumerate(depth):
        for j in range(stage * 4, stage * 4 + int(dd)):
            if ks[j] not in ks_map or ex[j] not in ex_map:
                raise HwsearchError(f"OFA architecture: kernel {ks[j]} / expansion {ex[j]}; accepted 3,5,7 / 3,4,6")
            ks_oh[j, ks_map[ks[j]]] = 1.0
            ex_oh[j, ex_map[ex[j]]] = 1.0
    r_oh = np.zeros(25)
    r_oh[(r - 128) // 4] = 1.0
    return np.concatenate([ks_oh.reshape(-1), ex_oh.reshape(-1), r_oh, [(r / 224.0) ** 2]])


ENCODERS = {"nasbench201": encode_nb201, "fbnet": encode_fbnet, "ofa": encode_ofa}
# analytic cost estimates per architecture, where the space's macro-architecture is known
COST_ENCODERS = {"fbnet": fbnet_costs}


# -- HELP --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HelpData:
    """One HELP search space: features per architecture (row = architecture index) and latencies."""

    space: str
    X: np.ndarray
    latency: pd.DataFrame  # rows = architecture index, columns = device names, milliseconds
    costs: np.ndarray | None = None  # rows = architecture index, analytic cost estimates (or None)

    @property
    def features(self) -> np.ndarray:
        """``X`` followed by the cost estimates (its last ``n_costs`` columns)."""
        return self.X if self.costs is None else np.hstack([self.X, self.costs])

    @property
    def n_costs(self) -> int:
        return 0 if self.costs is None else self.costs.shape[1]

    @property
    def devices(self) -> list[str]:
        return list(self.latency.columns)


def help_csv(data_dir: Path | str, space: str) -> Path:
    if space not in SPACES:
        raise unknown("search space", space, SPACES)
    path = Path(data_dir)
    if not path.is_dir():
        raise HwsearchError(f"HELP data directory {str(path)!r} does not exist; pass --data DIR holding {SPACES[space][0]}")
    csv = path / SPACES[space][0]
    if not csv.is_file():
        raise HwsearchError(f"{str(csv)!r} is missing; accepted: a HELP data directory holding {SPACES[space][0]}")
    return csv


def load_help(data_dir: Path | str, space: str) -> HelpData:
    """Read ``<space>_latency.csv`` and encode every architecture."""
    csv = help_csv(data_dir, space)
    column = SPACES[space][1]
    df = pd.read_csv(csv)
    if column not in df.columns or "idx" not in df.columns:
        raise HwsearchError(f"{str(csv)!r} lacks the columns idx and {column}")
    df = df.sort_values("idx").reset_index(drop=True)
    encode = ENCODERS[space]
    X = np.stack([encode(a) for a in df[column]])
    costs = np.stack([COST_ENCODERS[space](a) for a in df[column]]) if space in COST_ENCODERS else None
    lat = df.drop(columns=["idx", column]).astype(np.float64)
    return HelpData(space, X, lat, costs)


# -- Vidur ------------------------------------------------------------------------------------
GEMM_FEATURES = (
    "log2_M", "log2_K", "log2_N", "log2_flops", "log2_bytes", "log2_intensity",
    "log2_tiles_64", "log2_tiles_128", "log2_tiles_128x256", "pad_M_64", "pad_N_128",
)


def gemm_features(M: np.ndarray, K: np.ndarray, N: np.ndarray) -> np.ndarray:
    """Shape features of an fp16 GEMM (M x K) @ (K x N) that explain its cost on any GPU."""
    M, K, N = (np.asarray(v, dtype=np.float64) for v in (M, K, N))
    flops = 2.0 * M * K * N
    nbytes = 2.0 * (M * K + K * N + M * N)

    def tiles(tm: int, tn: int) -> np.ndarray:
        return np.ceil(M / tm) * np.ceil(N / tn)

    cols = [
        np.log2(M), np.log2(K), np.log2(N), np.log2(flops), np.log2(nbytes), np.log2(flops / nbytes),
        np.log2(tiles(64, 64)), np.log2(tiles(128, 128)), np.log2(tiles(128, 256)),
        np.ceil(M / 64) * 64 / M, np.ceil(N / 128) * 128 / N,
    ]
    return np.stack(cols, axis=1)


def load_vidur(path: Path | str) -> pd.DataFrame:
    """Vidur GEMMs, one row per (gpu, M, K, N) with the median over models that share the shape."""
    df = load_vidur_rows(path)
    return df.groupby(["gpu", "M", "K", "N"], as_index=False)["median_ms"].median()


def repeat_agreement(rows: pd.DataFrame, gpu: str, pct: float = 10.0) -> tuple[float | None, int]:
    """The noise floor: share of a GPU's repeated rows (same shape, other models) within ±pct % of
    their shape's median, and how many such rows there are (None, 0 when no shape repeats)."""
    g = rows[rows["gpu"] == gpu]
    med = g.groupby(["M", "K", "N"])["median_ms"].transform("median")
    rep = g.groupby(["M", "K", "N"])["median_ms"].transform("size") > 1
    if not rep.any():
        return None, 0
    ok = (g["median_ms"] - med).abs() <= pct / 100.0 * med
    return float(ok[rep].mean()), int(rep.sum())


def load_vidur_rows(path: Path | str) -> pd.DataFrame:
    """Vidur's rows as measured (one per model, op and shape), checked; positive latencies only."""
    p = Path(path)
    if not p.is_file():
        raise HwsearchError(f"Vidur GEMM file {str(p)!r} does not exist; pass --data FILE (gemm_fp16.csv)")
    df = pd.read_csv(p)
    need = {"gpu", "M", "K", "N", "median_ms"}
    if not need <= set(df.columns):
        raise HwsearchError(f"{str(p)!r} lacks columns {sorted(need - set(df.columns))}; accepted: Vidur gemm_fp16.csv")
    return df[df["median_ms"] > 0]
