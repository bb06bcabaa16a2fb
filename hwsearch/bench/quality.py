"""`hwsearch bench quality`: how well the additive sensitivity proxy ranks real plan quality.

Random plans are drawn from the model's quality space (every format, N:M pattern, rank and
merge schedule, emulated ones included), each with its own aggressiveness (the chance that a
layer is compressed) so the plans span a wide range of quality. Each plan is applied to the
real model and scored on the held-out split; the proxy predicts it from the sensitivity table
(measured on the calibration split only). Reported: Spearman rank correlation and mean
absolute error of proxy vs. real, plus every plan's figures.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hwsearch.errors import HwsearchError
from hwsearch.predictors.metrics import spearman
from hwsearch.search.quality_metrics import quality_metric
from hwsearch.search.quality_tasks import quality_task
from hwsearch.search.sensitivity import quality_space, sensitivity_table
from hwsearch.spaces.knobs import Knobs

AGGRESSIVENESS = (0.05, 0.6)


def bench_quality(
    model: str = "digits_vit",
    plans: int = 50,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    knobs: Knobs | None = None,
) -> dict[str, Any]:
    """Run the benchmark; `progress(stage, done, total)` is called as it goes."""
    if plans < 3:
        raise HwsearchError(f"--plans {plans} is too few for a rank correlation; accepted: 3 or more")
    report = progress or (lambda _stage, _done, _total: None)
    task = quality_task(model, progress=lambda message: report(message, 0, 1))
    space = quality_space(task, knobs)
    t0 = time.perf_counter()
    table = sensitivity_table(task, space, lambda done, total: report("sensitivity table (calib split)", done, total))
    sens_s = time.perf_counter() - t0
    rng = random.Random(seed)
    rows = []
    t1 = time.perf_counter()
    for i in range(plans):
        plan = space.sample(rng, aggressiveness=rng.uniform(*AGGRESSIVENESS))
        real = task.evaluate(plan, "test")
        pred = table.predict(plan, task.spec.dtype)
        additive = table.predict(plan, task.spec.dtype, kind="additive")
        rows.append(
            {
                "plan": i,
                "layers_compressed": len(plan.layers),
                "merge": plan.merge.model_dump() if plan.merge is not None else None,
                "real": real,
                "proxy": pred,
                "proxy_additive": additive,
            }
        )
        report("random plans (test split)", i + 1, plans)
    real = np.array([r["real"] for r in rows])
    pred = np.array([r["proxy"] for r in rows])
    additive = np.array([r["proxy_additive"] for r in rows])
    return {
        "bench": "quality",
        "model": task.name,
        "metric": task.metric,
        "direction": quality_metric(task.metric).direction,
        "metric_label": quality_metric(task.metric).label,
        "split": "test (held out); sensitivity measured on calib",
        "plans": plans,
        "seed": seed,
        "spearman": spearman(pred, real),
        "mae": float(np.mean(np.abs(pred - real))),
        "proxy": "divergence: floor + (base - floor)·exp(∓alpha·sum of single-layer output divergences) (- for a "
                 "higher-is-better metric, + for perplexity), alpha fitted on the table",
        "alpha": table.alpha,
        "spearman_additive": spearman(additive, real),
        "mae_additive": float(np.mean(np.abs(additive - real))),
        "base_quality": table.base_test,
        "real_min": float(real.min()),
        "real_max": float(real.max()),
        "sensitivity_entries": sum(len(r) for r in table.layers.values()) + len(table.merge),
        "sensitivity_seconds": sens_s,
        "eval_seconds": time.perf_counter() - t1,
        "rows": rows,
    }
