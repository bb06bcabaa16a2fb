"""The quality proxy a search scores: a sensitivity table per (model, weights, space).

For each layer × choice (each decoder block × KV-cache format, and each merge schedule), the
quality change and the output divergence when only that is changed, measured once on calibration data (`quality_tasks.QualityTask`) and
stored as JSON in the data directory (keyed by model, weights hash and space). A plan's quality
is predicted from the sum of its entries (`SensitivityTable.predict`). An AWQ int4 choice is
measured like any other, each layer calibrated on its own inputs from the uncompressed model
on the task's calibration inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwsearch.config import data_dir
from hwsearch.errors import HwsearchError
from hwsearch.kernels.apply import cache_reader, forward, layer_inputs
from hwsearch.kernels.awq import model_alphas
from hwsearch.kernels.modules import CompressedLinear
from hwsearch.search.objectives import divergence_curve
from hwsearch.search.quality_metrics import quality_metric
from hwsearch.search.quality_tasks import QualityTask
from hwsearch.spaces.knobs import Knobs, SearchSpace
from hwsearch.spaces.plan import LayerChoice, MergePlan, Plan

SENSITIVITY_VERSION = 6  # 4: AWQ layers without group clipping; 5: AWQ alpha chosen on the model's output;
# 6: ... by the task's own divergence, here as in `apply_plan` (`kernels.awq.model_alphas`)


@dataclass
class SensitivityTable:
    """Per (layer, choice) and per merge schedule, measured on calibration data with only that
    changed: the quality change (`layers`, `merge`) and the output divergence from the
    uncompressed model (`divergence`, `merge_divergence`).

    Two additive predictions of a plan's held-out quality:
    - `additive`: base quality + the sum of the single-change quality deltas;
    - `divergence` (default): the single-change divergences (KL of the output distribution, or
      1 - cosine) add up far better than top-1 deltas, which are coarse and saturate; their sum
      D is mapped to quality by q = floor + (base - floor)·exp(sign·alpha·D) (`divergence_curve`:
      towards the floor for top-1 and cosine, base·exp(alpha·D) for perplexity), with alpha
      fitted once on the table's own single-change entries.
    """

    model: str
    metric: str
    weights_hash: str
    space_key: str
    base_calib: float
    base_test: float
    floor: float
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    merge: dict[str, float] = field(default_factory=dict)
    divergence: dict[str, dict[str, float]] = field(default_factory=dict)
    merge_divergence: dict[str, float] = field(default_factory=dict)
    # decoder block -> KV-cache format label -> quality change / divergence, that block's cache alone
    kv: dict[str, dict[str, float]] = field(default_factory=dict)
    kv_divergence: dict[str, dict[str, float]] = field(default_factory=dict)
    alpha: float = 1.0
    version: int = SENSITIVITY_VERSION

    def entries(self, plan: Plan, dtype: str = "fp32") -> list[tuple[float, float]]:
        """(quality change, divergence) of every changed layer and of the merge schedule."""
        out = []
        for name, choice in plan.layers.items():
            if choice.is_identity(dtype):
                continue
            row = self.layers.get(name)
            if row is None:
                raise HwsearchError(f"layer {name!r} is not in the sensitivity table of {self.model!r}; accepted: its layers")
            key = choice.label()
            if key not in row:
                raise HwsearchError(f"choice {key} of layer {name!r} was not measured; accepted: {', '.join(sorted(row))}")
            out.append((row[key], self.divergence[name][key]))
        for block, kv in (plan.kv_cache or {}).items():
            if kv.is_identity(dtype):
                continue
            row = self.kv.get(block)
            if row is None or kv.label() not in row:
                accepted = ", ".join(sorted(row or {})) or "none: no KV-cache formats in its space"
                raise HwsearchError(f"KV cache {kv.label()} of block {block!r} was not measured; accepted: {accepted}")
            out.append((row[kv.label()], self.kv_divergence[block][kv.label()]))
        if isinstance(plan.merge, MergePlan) and plan.merge.r:
            key = plan.merge.label()
            if key not in self.merge:
                raise HwsearchError(f"merge {key} was not measured; accepted: {', '.join(sorted(self.merge))}")
            out.append((self.merge[key], self.merge_divergence[key]))
        elif isinstance(plan.merge, list) and any(plan.merge):
            raise HwsearchError("the proxy predicts {r, start_block} merge schedules only; accepted: merge {r, start_block}")
        return out

    def curve(self, divergence: float | np.ndarray, base: float | None = None) -> float | np.ndarray:
        """Quality predicted from a summed divergence (monotone: worse as it grows)."""
        return divergence_curve(divergence, self.floor, self.base_test if base is None else base, self.alpha, self.metric)

    def predict(self, plan: Plan, dtype: str = "fp32", kind: str = "divergence") -> float:
        """Predicted held-out quality of `plan`."""
        found = self.entries(plan, dtype)
        if kind == "additive":
            return self.base_test + sum(e[0] for e in found)
        if kind == "divergence":
            return float(self.curve(sum(e[1] for e in found)))
        raise HwsearchError(f"unknown proxy kind {kind!r}; accepted: divergence, additive")

    def fit(self) -> SensitivityTable:
        """Fit alpha so the curve reproduces the single-change quality deltas (least squares)."""
        from scipy.optimize import minimize_scalar

        pairs = np.array(
            [(q, self.divergence[n][k]) for n, row in self.layers.items() for k, q in row.items()]
            + [(q, self.merge_divergence[k]) for k, q in self.merge.items()]
            + [(q, self.kv_divergence[b][k]) for b, row in self.kv.items() for k, q in row.items()]
        )
        if len(pairs) == 0:
            return self
        dq, div = pairs[:, 0], np.clip(pairs[:, 1], 0.0, None)

        def loss(log_alpha: float) -> float:
            curve = divergence_curve(div, self.floor, self.base_calib, float(np.exp(log_alpha)), self.metric) - self.base_calib
            return float(np.mean((curve - dq) ** 2))

        self.alpha = float(np.exp(minimize_scalar(loss, bounds=(-8, 8), method="bounded").x))
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SensitivityTable | None:
        """The stored table, or None when it was written by another version of this code."""
        doc = json.loads(text)
        return cls(**doc) if doc.get("version") == SENSITIVITY_VERSION else None


def space_key(space: SearchSpace) -> str:
    doc = {
        "layers": {n: [c.label() for c in s.choices()] for n, s in space.layers.items()},
        "merge": [m.label() for m in space.merge_options],
        **({"kv": {b: [c.label() for c in opts] for b, opts in space.kv.items()}} if space.kv else {}),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _divergence(divergence: float, quality: float, base: float, metric: str) -> float:
    """A task without an output divergence (a custom score) uses how much worse it got instead."""
    return divergence if divergence == divergence else max(0.0, quality_metric(metric).sign * (quality - base))


def _swap(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old = getattr(owner, child)
    setattr(owner, child, module)
    return old


@contextmanager
def one_layer(task: QualityTask, name: str, choice: LayerChoice, activations: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """`task.model` with layer `name` alone compressed as `choice`, swapped in place and put back
    on leaving. An AWQ choice takes its inputs from `activations` (`layer_inputs` of the
    uncompressed model on the task's calibration inputs) and its alpha as `apply_plan` chooses it
    for this task (`model_alphas` with the task's divergence: same measure, same cache)."""
    model = task.model
    alpha = None
    if choice.scaling == "awq":
        alpha = model_alphas(model, {name: choice}, activations, lambda: forward(model, task.calibration),
                             divergence=task.calib_divergence)[name]
    original = _swap(model, name, CompressedLinear(model.get_submodule(name), choice, rows=task.spec.layer(name).tokens,
                                                   calibration=activations.get(name), awq_alpha=alpha))
    try:
        yield model
    finally:
        _swap(model, name, original)


def measure_sensitivity(
    task: QualityTask, space: SearchSpace, progress: Callable[[int, int], None] | None = None
) -> SensitivityTable:
    """Change one layer (or the merge schedule) at a time and measure quality on `calib`."""
    model = task.model
    base = task.pair(model, "calib")[0]
    table = SensitivityTable(
        task.name, task.metric, task.weights_hash, space_key(space), base, task.pair(model, "test")[0], task.floor
    )
    dtype = task.spec.dtype
    jobs = [(n, c) for n, s in space.layers.items() for c in s.choices() if not c.is_identity(dtype)]
    merges = [m for m in space.merge_options if m.r]
    kv_jobs = [(b, c) for b, opts in space.kv.items() for c in opts if not c.is_identity(dtype)]
    total, done = len(jobs) + len(merges) + len(kv_jobs), 0

    def record(deltas: dict[str, float], divergences: dict[str, float], key: str, quality: float,
               divergence: float) -> None:
        """One single-change measurement into its rows, and the progress bar a tick on."""
        nonlocal done
        deltas[key] = quality - base
        divergences[key] = _divergence(divergence, quality, base, task.metric)
        done += 1
        if progress:
            progress(done, total)
    scaled = list(dict.fromkeys(n for n, c in jobs if c.scaling is not None))
    if scaled and task.calibration is None:
        raise HwsearchError(f"the space offers AWQ int4 layers but task {task.name!r} has no calibration inputs; "
                            "accepted: Knobs(scalings=()) for it, or a task with calibration data")
    activations = layer_inputs(model, scaled, task.calibration) if scaled else {}
    for name, choice in jobs:
        with one_layer(task, name, choice, activations) as changed:
            record(table.layers.setdefault(name, {}), table.divergence.setdefault(name, {}), choice.label(),
                   *task.pair(changed, "calib"))
    for block, kv in kv_jobs:
        reader = cache_reader(model, block)
        before = reader.kv_choice
        reader.kv_choice = kv
        try:
            record(table.kv.setdefault(block, {}), table.kv_divergence.setdefault(block, {}), kv.label(),
                   *task.pair(model, "calib"))
        finally:
            reader.kv_choice = before
    for merge in merges:
        record(table.merge, table.merge_divergence, merge.label(),
               *task.measure(Plan(model=task.spec.name, merge=merge), "calib"))
    return table.fit()


def sensitivity_path(task: QualityTask, space: SearchSpace) -> Path:
    return data_dir() / "quality" / f"sensitivity-{task.name}-{task.weights_hash}-{space_key(space)}.json"


def sensitivity_table(
    task: QualityTask, space: SearchSpace, progress: Callable[[int, int], None] | None = None
) -> SensitivityTable:
    """The stored table for (model, weights, space), measured now if missing."""
    path = sensitivity_path(task, space)
    if path.exists():
        table = SensitivityTable.from_json(path.read_text())
        if table is not None:
            return table
    table = measure_sensitivity(task, space, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(table.to_json())
    tmp.replace(path)
    return table


def quality_space(task: QualityTask, knobs: Knobs | None = None) -> SearchSpace:
    """The space quality studies use: every format and pattern, emulated ones included (and AWQ
    int4 where the task has calibration data)."""
    knobs = knobs or Knobs(allow_emulated=True)
    return SearchSpace(task.spec, knobs=knobs.with_calibration(task.calibration is not None))
