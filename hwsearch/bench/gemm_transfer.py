"""Cross-GPU transfer on Vidur's measured fp16 GEMMs: learn on source GPUs, adapt to a target.

What the target may see (and nothing else): its spec sheet and ``shots`` labelled shapes. The
first ``min(reference, shots)`` shots are a fixed reference set (the same shapes for every seed,
spread evenly over log-FLOPs, measured on every source too) and the rest are drawn at random per
seed. Every predictor is scored on every other target shape; with zero shots, on all of them.

The method is :class:`hwsearch.predictors.gemm_tiles.GemmTransferPredictor` (spec-sheet tile and
wave roofline times a residual learned on the sources). The baseline is the HELP-style
:class:`MetaPredictor` on shape features alone, adapted from the same shots (the reference shapes'
latencies are its hardware embedding). Beside them: the spec-sheet-only floor (zero shots) and
the noise floor (Vidur's repeated rows of one shape, see ``repeat_agreement``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hwsearch.bench.external import gemm_features, load_vidur_rows, repeat_agreement
from hwsearch.errors import HwsearchError, unknown
from hwsearch.predictors.gemm_tiles import GemmTask, GemmTransferPredictor
from hwsearch.predictors.meta import MetaPredictor, MetaTask
from hwsearch.predictors.metrics import mape, spearman, within_pct
from hwsearch.profilers.gpu_specs import gpu_spec

DEFAULT_PARAMS: dict[str, Any] = {}  # the baseline MetaPredictor's
TRANSFER_PARAMS: dict[str, Any] = {}  # the GemmTransferPredictor's
REFERENCE = 4
ALL = "all"
METHOD = ("spec-sheet tile/wave roofline (NeuSight-style tiles and waves, Habitat-style wave scaling) x "
          "residual learned on the sources; 3 roofline numbers refitted on the target's shots")
BASELINE = "HELP-style MetaPredictor on shape features, adapted from the same shots"
PUBLISHED = {
    "methods": "NeuSight (Lee et al., ASPLOS 2025): tile-level GPU roofline for unseen GPUs; "
               "Habitat (Yu et al., USENIX ATC 2021): wave scaling between GPUs",
    "numbers": "none quoted: neither evaluates on Vidur's GEMMs with this protocol",
}

Progress = Callable[[str, int, int], None]


def reference_shapes(keys: np.ndarray, flops: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` shapes evenly spaced in log-FLOPs (deterministic, latency-blind)."""
    if n <= 0:
        return np.zeros(0, dtype=int)
    order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0], flops))
    pos = np.linspace(0, len(order) - 1, n + 2)[1:-1].round().astype(int)
    return order[pos]


def _scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    return {"spearman": spearman(pred, true), "within_10pct": within_pct(pred, true, 10.0), "mape": mape(pred, true)}


def _mean(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def run_gemm_transfer(
    data_file: Path | str,
    source: Sequence[str],
    target: str,
    shots: int = 10,
    seeds: int = 5,
    reference: int = REFERENCE,
    params: dict[str, Any] | None = None,
    baseline: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fit on ``source`` GPUs, adapt to ``target`` (or each GPU in turn: ``"all"``), score the rest.

    An empty ``source`` means every other GPU in the file; ``"all"`` with sources given targets
    every GPU that is not a source. The document's ``spearman``,
    ``within_10pct`` and ``mape`` are means over the seeds (and over the targets for ``"all"``).
    """
    rows = load_vidur_rows(data_file)
    df = rows.groupby(["gpu", "M", "K", "N"], as_index=False)["median_ms"].median()
    gpus = sorted(df["gpu"].unique())
    source = [s.strip() for s in source if s.strip()]
    target = target.strip()
    for g in source:
        if g not in gpus:
            raise unknown("GPU", g, gpus)
    if target != ALL and target not in gpus:
        raise unknown("GPU", target, [*gpus, ALL])
    if target in source:
        raise HwsearchError(f"target {target!r} is also a source; accepted: a target not in --source")
    if seeds < 1:
        raise HwsearchError(f"seeds {seeds} out of range; accepted: 1 or more")
    if shots < 0:
        raise HwsearchError(f"shots {shots} out of range; accepted: 0 or more")
    targets = [g for g in gpus if g not in source] if target == ALL else [target]
    specs = {g: gpu_spec(g) for g in {*targets, *(source or gpus)}}  # fail before any fitting
    out: dict[str, Any] = {}
    for t in targets:
        src = [g for g in (source or gpus) if g != t]
        if not src:
            raise HwsearchError(f"no source GPU left for target {t!r}; accepted: --source naming another of "
                                f"{', '.join(gpus)}")
        out[t] = _one_target(df, rows, src, t, specs, shots, seeds, reference, params, baseline, progress)
    doc: dict[str, Any] = {
        "source": source, "shots": shots, "seeds": seeds, "reference": min(reference, shots),
        "method": METHOD, "baseline_method": BASELINE, "published": PUBLISHED,
        **_mean([{k: r[k] for k in ("spearman", "within_10pct", "mape")} for r in out.values()]),
        "targets": out,
    }
    return doc


def _one_target(df: pd.DataFrame, rows: pd.DataFrame, source: list[str], target: str, specs: dict[str, Any],
                shots: int, seeds: int, reference: int, params: dict[str, Any] | None, baseline: bool,
                progress: Progress | None) -> dict[str, Any]:
    key = ["M", "K", "N"]
    tables = {g: df[df["gpu"] == g].set_index(key)["median_ms"].sort_index() for g in [*source, target]}
    tgt = tables[target]
    n_tgt = len(tgt)
    if shots >= n_tgt:
        raise HwsearchError(f"shots {shots} out of range for {target!r}; accepted: 0..{n_tgt - 1}")
    tk = np.asarray(tgt.index.tolist(), dtype=np.float64)
    yt = tgt.to_numpy()

    # reference shapes: measured on every source and on the target, spread over log-FLOPs
    common = tables[source[0]].index
    for g in source[1:]:
        common = common.intersection(tables[g].index)
    cand = np.flatnonzero(tgt.index.isin(common))
    n_ref = min(reference, shots, cand.size)
    ref_t = cand[reference_shapes(tk[cand], np.log(tk[cand]).sum(1), n_ref)]
    rest = np.setdiff1d(np.arange(n_tgt), ref_t)
    draws = []
    for seed in range(seeds):
        extra = np.random.default_rng(seed).choice(rest, size=shots - n_ref, replace=False)
        draws.append(np.concatenate([ref_t, extra]).astype(int))

    stage = (lambda name: (lambda i, n: progress(f"{target}: {name}", i, n)) if progress else None)  # noqa: E731
    tasks = []
    for g in source:
        k = np.asarray(tables[g].index.tolist(), dtype=np.float64)
        tasks.append(GemmTask(g, specs[g], k[:, 0], k[:, 1], k[:, 2], tables[g].to_numpy()))
    model = GemmTransferPredictor(**TRANSFER_PARAMS).fit(tasks)
    spec = specs[target]
    zero = model.adapt(spec).predict(tk[:, 0], tk[:, 1], tk[:, 2])
    runs, tick = [], stage("adapt")
    for i, seen in enumerate(draws):
        test = np.setdiff1d(np.arange(n_tgt), seen)
        adapted = model.adapt(spec, tk[seen, 0], tk[seen, 1], tk[seen, 2], yt[seen])
        runs.append(_scores(adapted.predict(tk[test, 0], tk[test, 1], tk[test, 2]), yt[test]))
        if tick is not None:
            tick(i + 1, seeds)
    floor, n_rep = repeat_agreement(rows, target)
    row: dict[str, Any] = {
        "source": source, "spec": spec.as_dict(), "n_shapes": n_tgt, **_mean(runs),
        "zero_shot": _scores(zero, yt),
        "noise_floor": {"within_10pct": floor, "repeated_rows": n_rep},
        "roofline": {g: asdict(f) for g, f in {**model.fits_, "prior": model.prior_}.items()},
        "baseline": None,
    }
    if baseline and shots >= 1 and n_ref >= 1:
        row["baseline"] = _baseline(tables, common, source, tk, yt, ref_t, draws, params, stage("baseline"))
    return row


def _baseline(tables: dict[str, pd.Series], common: pd.Index, source: list[str], tk: np.ndarray, yt: np.ndarray,
              ref_t: np.ndarray, draws: list[np.ndarray], params: dict[str, Any] | None,
              progress: Callable[[int, int], None] | None) -> dict[str, float]:
    """The HELP-style meta-predictor on shape features, adapted from the same shots."""
    common = common.sort_values()
    ck = np.asarray(common.tolist(), dtype=np.float64)
    Xs = gemm_features(ck[:, 0], ck[:, 1], ck[:, 2])
    Xt = gemm_features(tk[:, 0], tk[:, 1], tk[:, 2])
    ref_keys = pd.MultiIndex.from_arrays([tk[ref_t, j].astype(int) for j in range(3)], names=["M", "K", "N"])
    tasks = [MetaTask(g, Xs, tables[g].loc[common].to_numpy(), tables[g].loc[ref_keys].to_numpy()) for g in source]
    model = MetaPredictor(**{**DEFAULT_PARAMS, **(params or {})})
    model.meta_fit(tasks, progress=progress)
    runs = []
    for seen in draws:
        test = np.setdiff1d(np.arange(len(yt)), seen)
        adapted = model.adapt(yt[ref_t], Xt[seen], yt[seen])
        runs.append(_scores(adapted.predict(Xt[test]), yt[test]))
    return _mean(runs)
