"""`hwsearch bench awq`: AWQ int4 against plain int4 on a model with weights and calibration data.

Per group size: the sensitivity proxy's own measurement (`measure_sensitivity`, calibration
split, one layer changed at a time) of every layer as plain int4 and as AWQ int4, the same
one-layer changes on the held-out split (where no alpha was chosen), and the whole
model with every layer plain int4 against every layer AWQ int4 (calibration and held-out
splits). Reported per layer: the quality change and the output divergence of both, and how many
layers AWQ makes less sensitive (lower divergence), equal or more.

The noise floor beside the whole-model figures: plain int4 of the same model with every weight
moved by `JITTER` of its row's spread before rounding (a few seeds), which changes which way a
small share of the weights round and nothing else. Its spread of the quality change is what
rounding luck alone moves the whole model by: a plain vs AWQ difference inside it is a tie.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hwsearch.errors import HwsearchError
from hwsearch.kernels.apply import layer_inputs
from hwsearch.search.quality_tasks import QualityTask, TinyLlamaConfig, quality_task
from hwsearch.search.sensitivity import measure_sensitivity, one_layer
from hwsearch.spaces.formats import check_int4_group_size
from hwsearch.spaces.knobs import Knobs, SearchSpace
from hwsearch.spaces.plan import LayerChoice, Plan

JITTER = 0.02  # of each weight row's standard deviation: moves a weight across a rounding edge now and then
NOISE_SEEDS = 4
# tiny_llama's whole-model comparison reads this many held-out windows, not the task's 32: on 32,
# every layer int4 at group 32 measured plain -0.0033 and AWQ +0.0104 against a rounding noise of
# -0.0029..+0.0054; on 256 windows of the same files, +0.0008 and +0.0070 inside +0.0024..+0.0104
# (2-vCPU AVX-512 EPYC). Which windows are read moves the perplexity by as much as AWQ does.
HELD_OUT_WINDOWS = 256


def rounding_noise(task: QualityTask, plan: Plan, split: str, base: float, seeds: int = NOISE_SEEDS) -> dict[str, Any]:
    """The quality change of `plan` from `base` (the uncompressed model's quality on `split`) on
    copies of the model whose linear weights were jittered (see the module docstring): its min,
    max and spread over `seeds` seeds."""
    deltas = []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        jittered = copy.deepcopy(task.model)
        with torch.no_grad():
            for name in plan.layers:
                w = jittered.get_submodule(name).weight
                w += JITTER * w.std(dim=1, keepdim=True) * torch.randn(w.shape, generator=gen).to(w.dtype)
        quality, _ = dataclasses.replace(task, model=jittered).measure(plan, split)
        deltas.append(quality - base)
    return {"seeds": seeds, "jitter": JITTER, "delta_min": min(deltas), "delta_max": max(deltas),
            "spread": max(deltas) - min(deltas)}


def bench_awq(model: str = "digits_vit", group_sizes: Sequence[int] = (128, 32),
              progress: Callable[[str, int, int], None] | None = None,
              held_out_windows: int = HELD_OUT_WINDOWS) -> dict[str, Any]:
    """Run the comparison; `progress(stage, done, total)` is called as it goes. The whole model is
    compared on `held_out_windows` held-out windows where the model is tiny_llama (the per-layer
    held-out figures stay on the task's own test split)."""
    report = progress or (lambda _stage, _done, _total: None)
    task = quality_task(model, progress=lambda message: report(message, 0, 1))
    wide = task
    if task.name == "tiny_llama":
        wide = quality_task(model, llama=TinyLlamaConfig(test_windows=held_out_windows),
                            progress=lambda message: report(message, 0, 1))
    if task.calibration is None:
        raise HwsearchError(f"model {model!r} has no calibration data for AWQ; accepted: a model whose quality task has a calib split")
    dtype, names = task.spec.dtype, task.spec.layer_names
    activations = layer_inputs(task.model, names, task.calibration)  # every layer's inputs, once
    out: dict[str, Any] = {"bench": "awq", "model": task.name, "metric": task.metric, "groups": {},
                           "per_layer_split": "calib (the sensitivity proxy's measurement), and test",
                           "whole_model_test_windows": held_out_windows if wide is not task else None}
    for g in group_sizes:
        check_int4_group_size(g)
        knobs = Knobs(formats=(dtype, "int4"), group_sizes=(g,), sparsities=("dense",), low_rank=False,
                      merge_r=(), allow_emulated=True, scalings=("awq",))
        table = measure_sensitivity(task, SearchSpace(task.spec, knobs=knobs),
                                    lambda done, total, g=g: report(f"per-layer int4 g{g}, plain and AWQ", done, total))
        plain, awq = LayerChoice(format="int4", group_size=g), LayerChoice(format="int4", group_size=g, scaling="awq")
        layers = {n: {"plain_delta": table.layers[n][plain.label()], "awq_delta": table.layers[n][awq.label()],
                      "plain_divergence": table.divergence[n][plain.label()],
                      "awq_divergence": table.divergence[n][awq.label()]} for n in names}
        # the same one-layer changes on the held-out split, which no alpha was chosen on
        for i, n in enumerate(names):
            report(f"per-layer int4 g{g}, held out", i, len(names))
            for label, choice in (("plain", plain), ("awq", awq)):
                with one_layer(task, n, choice, activations) as changed:
                    layers[n][f"{label}_test_divergence"] = task.pair(changed, "test")[1]
        whole: dict[str, Any] = {}
        for split in wide.splits:
            base = wide.evaluate(None, split)
            for label, choice in (("plain", plain), ("awq", awq)):
                quality, divergence = wide.measure(Plan(model=wide.spec.name, layers=dict.fromkeys(names, choice)), split)
                whole[f"{split}_{label}"] = {"quality": quality, "delta": quality - base, "divergence": divergence}
            whole[f"{split}_base"] = base
        whole["test_plain_noise"] = rounding_noise(wide, Plan(model=wide.spec.name, layers=dict.fromkeys(names, plain)),
                                                   "test", whole["test_base"])
        rows = layers.values()
        out["groups"][str(g)] = {
            "layers": layers,
            "awq_less_sensitive": sum(r["awq_divergence"] < r["plain_divergence"] for r in rows),
            "awq_equal": sum(r["awq_divergence"] == r["plain_divergence"] for r in rows),
            "awq_more_sensitive": sum(r["awq_divergence"] > r["plain_divergence"] for r in rows),
            "held_out": {
                "awq_less_sensitive": sum(r["awq_test_divergence"] < r["plain_test_divergence"] for r in rows),
                "awq_equal": sum(r["awq_test_divergence"] == r["plain_test_divergence"] for r in rows),
                "awq_more_sensitive": sum(r["awq_test_divergence"] > r["plain_test_divergence"] for r in rows),
            },
            "whole_model": whole,
        }
    out["base_calib"] = table.base_calib
    return out

