"""`hwsearch bench model-latency`: random plans built with `apply_plan`, timed end to end vs predicted.

Each plan is drawn from the model's search space on the device (native choices only, each layer
compressed with a probability drawn per plan from `AGGRESSIVENESS`, a random merge schedule as often), built into the torch model with `apply_plan`, and timed with the
profiler's harness (`time_calls` with `MODEL_PROTOCOL`: blocks, rounds, the floor) at the device's thread count.

Each kernel's isolated latency is the device's stored measurement where there is one (or an
interpolation between measured neighbours), else the predictor's; each layer is also timed in
place (`profilers.inmodel`). How the kernels compose into the model is fitted on the timed plans
themselves (`predictors.calibration`: kernel sum, one overhead scale, or in-model family scales
plus overhead), so every score is held out: each plan is predicted by a composition fitted on
the other plans, and `leave_one_model_out` on the other models' plans. The composition with the
lowest held-out error is stored for the device (target "model-overhead") with its conformal
band. The same plans are also scored by the predictor alone (`predictor_only`) and timed a
second time (`noise_floor_mape`), side by side in one run. Timing needs the machine itself:
only a device profiled on this host can be benchmarked here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from hwsearch.errors import HwsearchError
from hwsearch.predictors.calibration import (
    COVERAGE,
    PER_MODEL,
    RETIME_COVERAGE,
    TIE_POINTS,
    VARIANTS,
    PlanParts,
    choose_composition,
    conformal_band,
    fit_compose,
    in_place_records,
    plan_parts,
)
from hwsearch.predictors.metrics import mape, spearman, within_pct
from hwsearch.predictors.model_latency import ModelLatency, anchor_key, device_overhead, store_overhead
from hwsearch.predictors.registry import Answer, best_predictor
from hwsearch.profilers.coverage import local_fingerprint
from hwsearch.search.spec import SearchSpec
from hwsearch.search.verify import torch_model
from hwsearch.spaces.catalog import get_model, split_model_refs

# A search's picks compress most layers (every plan of the demo's vit_base front all 49), and a
# layer costs less in place among compressed neighbours than among fp32 ones: calibrated on plans
# compressing 10-90 % of their layers, the demo predicted its verified plans 15-40 % too slow
AGGRESSIVENESS = (0.3, 1.0)
MAX_COVERING = 3  # covering plans per model (`SearchSpace.covering_plans`)


def aggressiveness_draws(rng: random.Random, owners: Sequence[str]) -> list[float]:
    """Each plan's share of compressed layers, uniform in `AGGRESSIVENESS` and stratified per model
    (its n plans one in each n-th of the range, in random order): the same distribution as
    independent draws, without the clumps that leave a model's plans a few per cent apart, where
    the machine's noise, not the estimate, decides their ranking (on a 2-vCPU EPYC eight vit_small
    plans timed twice ranked alike at a Spearman of 0.71)."""
    lo, hi = AGGRESSIVENESS
    out = [0.0] * len(owners)
    for m in dict.fromkeys(owners):
        mine = [i for i, o in enumerate(owners) if o == m]
        strata = list(range(len(mine)))
        rng.shuffle(strata)
        for i, j in zip(mine, strata, strict=True):
            out[i] = lo + (hi - lo) * (j + rng.random()) / len(mine)
    return out


def _plan_doc(plan: Any) -> dict[str, Any]:
    labels: dict[str, int] = {}
    for choice in plan.layers.values():
        labels[choice.label()] = labels.get(choice.label(), 0) + 1
    merge = plan.merge.model_dump() if hasattr(plan.merge, "model_dump") else plan.merge
    return {"compressed_layers": len(plan.layers), "choices": labels, "merge": merge}


def _scores(pred: np.ndarray, measured: np.ndarray, again: np.ndarray | None) -> dict[str, Any]:
    """One model's plans: accuracy beside the same plans timed twice (None: not timed again)."""
    return {"plans": int(len(measured)), "mape": mape(pred, measured),
            "spearman": spearman(pred, measured) if len(measured) > 2 else None,
            "worst_under_prediction_pct": float(100 * np.min((pred - measured) / measured)),
            "noise_floor_mape": None if again is None else mape(again, measured),
            "noise_floor_spearman": spearman(again, measured) if again is not None and len(measured) > 2 else None}


def run(
    engine: Engine, device: str, model: str | Sequence[Any] = "vit_base", plans: int = 20, seed: int = 0, threads: int | None = None,
    aggressiveness: float | None = None, store: bool = True, progress: Callable[[str, int, int], None] | None = None,
    cover: bool = True, retime: bool = True,
) -> dict[str, Any]:
    """Time `plans` random plans (and the covering ones), fit and score the compositions, store the
    chosen one. `retime=False` skips timing every plan a second time: the noise floor and the
    re-timing band then come from the uncompressed model, timed beside every plan all through the
    run (`hwsearch demo`, which has minutes, not a benchmark's hour)."""
    import torch

    from hwsearch.kernels import registry
    from hwsearch.kernels.apply import apply_plan, forward
    from hwsearch.profilers.inmodel import layer_times
    from hwsearch.profilers.noise import stored_noise
    from hwsearch.profilers.timing import MODEL_PROTOCOL, time_items
    from hwsearch.spaces.knobs import Capabilities, SearchSpace

    if plans < 3:
        raise HwsearchError(f"plans={plans} is too few to fit and score the overhead; accepted: 3 or more")
    requests = split_model_refs(model) if isinstance(model, str) else list(model)
    fp = local_fingerprint(engine, device, "hwsearch bench model-latency")
    backend = fp.get("backend", "cpu")
    threads = threads or fp.get("threads") or 1
    answer = best_predictor(engine, device)
    caps = Capabilities.from_dict(registry.capabilities(backend), device)
    specs, built_models, spaces = {}, {}, {}
    for request in requests:
        if isinstance(request, SearchSpec):  # a user's torch model (traced) or a catalogue one, with its knobs
            desc = request.model_description()
            specs[desc.name] = desc
            built_models[desc.name] = ((request.model.eval(), request.example_inputs) if request.custom
                                       else torch_model(desc))
            spaces[desc.name] = SearchSpace(desc, caps, request.knob_values())
        else:
            specs[request] = get_model(request)
            built_models[request] = torch_model(specs[request])
            spaces[request] = SearchSpace(specs[request], caps)
    models = list(specs)
    latencies = {m: ModelLatency(specs[m], answer) for m in models}
    # the same plans scored by the predictor alone (no stored measurement answers): side by side
    alone = Answer(answer.device, answer.kind, answer.predictor, answer.roofline, answer.predictor_id, answer.detail,
                   answer.device_id, dispatch=answer.dispatch)
    predicted_only = {m: ModelLatency(specs[m], alone) for m in models}
    # what a search on this device would promise today: the stored composition, band and anchors
    stored_overhead, stored_id = device_overhead(engine, answer.device_id)
    as_searched = {m: ModelLatency(specs[m], answer, stored_overhead) for m in models}
    rng = random.Random(seed)
    # round-robin over the models: with two sizes of model the constant and per-kernel terms separate
    # each plan compresses a random share of its layers (uniform in AGGRESSIVENESS unless given), so a
    # model's plans span its latency range and a ranking of them means something
    owners = [models[i % len(models)] for i in range(plans)]
    shares = aggressiveness_draws(rng, owners) if aggressiveness is None else [aggressiveness] * plans
    drawn = [(m, spaces[m].sample(rng, a, device)) for m, a in zip(owners, shares, strict=True)]
    # plans that together run every choice of every layer shape once (`SearchSpace.covering_plans`):
    # they only ever train, so each kernel a search can put in a layer has its in-place time in
    # this model; every score below is over the random plans
    covering = [(m, p) for m in models for p in spaces[m].covering_plans(device, MAX_COVERING)] if cover else []

    def build(name: str, plan: Any) -> Any:
        base, _ = built_models[name]
        return apply_plan(base, plan, specs[name], backend=backend, dispatch=answer.dispatch).eval()

    beside: list[tuple[str, float]] = []  # each timing's model and anchor ms, in timing order (covering, random, again)

    def timed(module: Any, name: str) -> Any:
        """The plan's module timed in interleaved rounds beside its uncompressed model (the
        anchor, measured all through the run: its median over the run is what is stored)."""
        base, x = built_models[name]
        with torch.inference_mode():
            plan_t, anchor_t = time_items([[lambda m=module: forward(m, x)], [lambda: forward(base, x)]], threads=threads,
                                          protocol=MODEL_PROTOCOL)
        beside.append((name, anchor_t.median_us / 1e3))
        return plan_t

    parts: list[PlanParts] = []
    parts_alone: list[PlanParts] = []
    measured, rows, records, records_alone, promised = [], [], [], [], []
    cover_parts: list[PlanParts] = []
    cover_parts_alone: list[PlanParts] = []
    cover_records: list[Any] = []
    cover_records_alone: list[Any] = []
    cover_y: list[float] = []
    for i, (name, plan) in enumerate(covering + drawn):
        training_only = i < len(covering)
        est = latencies[name].plan(plan)
        module, args = build(name, plan), built_models[name][1]
        timing = timed(module, name)
        part = plan_parts(latencies[name], plan, est)
        inside = layer_times(module, args, list(part.layer_ms), threads=threads)
        record = in_place_records(part, inside)  # every layer and every block's token merge, timed in place
        part_alone = plan_parts(predicted_only[name], plan)
        record_alone = in_place_records(part_alone, inside)
        del module
        if training_only:
            cover_parts.append(part)
            cover_parts_alone.append(part_alone)
            cover_records.append(record)
            cover_records_alone.append(record_alone)
            cover_y.append(timing.median_us / 1e3)
            if progress:
                progress("timing the covering plans (every choice of every layer shape, in place)", i + 1, len(covering))
            continue
        promised.append(as_searched[name].plan(plan).total_ms)
        records.append(record)
        parts.append(part)
        records_alone.append(record_alone)
        parts_alone.append(part_alone)
        measured.append(timing.median_us / 1e3)
        rows.append({"model": name, **_plan_doc(plan), "kernel_sum_ms": est.kernel_ms, "kernels": est.kernels,
                     "cast_melems": est.cast_melems, "measured_share": est.measured_share,
                     "layers_in_model_ms": float(sum(inside.values())),
                     "layers_isolated_ms": float(sum(part.layer_ms.values())),
                     "measured_ms": timing.median_us / 1e3,
                     "measured_p10_ms": timing.p10_us / 1e3, "measured_p90_ms": timing.p90_us / 1e3,
                     "measured_cov": timing.cov, "measured_spread": timing.spread,
                     "parts": {"rest_ms": part.rest_ms, "launches": part.launches, "merge_blocks": part.merge_blocks,
                               "layers": {n: [part.family[n], inside[n], part.layer_ms[n]] for n in part.layer_ms}}})
        if progress:
            progress("timing plans (end to end and layer by layer)", i + 1 - len(covering), plans)
    # The noise floor: every plan built and timed a second time, after all the others.
    again = []
    for i, (name, plan) in enumerate(drawn if retime else []):
        again.append(timed(build(name, plan), name).median_us / 1e3)
        if progress:
            progress("timing plans again (noise floor)", i + 1, plans)
    # Each model uncompressed, timed end to end beside every plan: the anchor its plans are predicted
    # from (`Overhead.anchors`; `profile --for` stores the same measurement for a user's model).
    anchor_ms = {m: float(np.median([a for n, a in beside if n == m])) for m in models}
    bases = {m: plan_parts(latencies[m], None) for m in models}
    bases_alone = {m: plan_parts(predicted_only[m], None) for m in models}
    anchors = [(bases[name], anchor_ms[name]) for name, _ in drawn]
    anchors_alone = [(bases_alone[name], anchor_ms[name]) for name, _ in drawn]
    # The machine state each plan was timed in: its anchor, timed in the same interleaved rounds,
    # over that model's median anchor. A shared VM's speed drifts by +-15 % from minute to minute
    # (a 2-vCPU EPYC: the same plans timed twice 12.6 % apart, and 3.1 % apart judged each at its
    # own state), and no composition can predict the state a plan will meet. So, as a job's
    # verification does, every plan and its layers timed in place are brought to the median state
    # (divided by the factor) before fitting and scoring; `raw` scores the measurements as taken.
    state_of = np.array([a / anchor_ms[n] for n, a in beside])
    state_cover, state = state_of[:len(covering)], state_of[len(covering):len(covering) + len(drawn)]
    state_again = state_of[len(covering) + len(drawn):]

    def at_state(recs: list[Any], factors: np.ndarray) -> list[Any]:
        """Layer records (family, in-place ms, ...) with their in-place ms brought to the median state."""
        return [[(r[0], r[1] / f, *r[2:]) for r in rec] for rec, f in zip(recs, factors, strict=True)]

    cover_y = list(np.array(cover_y) / state_cover)
    records, records_alone = at_state(records, state), at_state(records_alone, state)
    cover_records, cover_records_alone = at_state(cover_records, state_cover), at_state(cover_records_alone, state_cover)
    y_raw, y2_raw = np.array(measured), (np.array(again) if retime else None)
    y, y2 = y_raw / state, (None if y2_raw is None else y2_raw / state_again)
    names = np.array([name for name, _ in drawn])
    # the same model timed again and again: each anchor timing against its model's median
    anchor_seen = np.array([a for _, a in beside])
    anchor_mid = np.array([anchor_ms[n] for n, _ in beside])
    noise = mape(y2, y) if y2 is not None else mape(anchor_mid, anchor_seen)

    def again_of(sel: np.ndarray) -> np.ndarray | None:
        return None if y2 is None else y2[sel]
    k = np.array([p.kernel_ms for p in parts])
    everyone = np.arange(len(y))

    cover_names = np.array([name for name, _ in covering], dtype=object)
    y_all = np.concatenate([y, cover_y])

    # the two views of every plan (kernels from measurements, or from the predictor alone), each
    # with its covering plans: (random plans' parts, their records, covering parts, their records,
    # each plan's anchor for a model's gain: its model's uncompressed parts and measured ms). The
    # covering plans have none: they run each kernel once, so the in-place entries they make give
    # them their own timings back, not what a plan the composition has not seen gets (with them,
    # vit_tiny's gain on a 2-vCPU EPYC came out 0.89 and its held-out MAPE 5.4 %; without, 0.56 and 2.2 %)
    measured_view = (parts, records, cover_parts, cover_records, anchors + [None] * len(covering))
    alone_view = (parts_alone, records_alone, cover_parts_alone, cover_records_alone, anchors_alone + [None] * len(covering))

    def fit_on(variant: str, view: tuple[Any, ...], train: np.ndarray, left_out: str | None = None) -> Any:
        """`variant` fitted on the random plans `train` selects and the covering plans (but those
        of the model `left_out`)."""
        ps, recs, cps, crecs, anchored = view
        return fit_compose(variant, ps + cps, recs + crecs, y_all, np.concatenate([train, cover_names != left_out]),
                           answer.roofline.bandwidth_gbs, anchored)

    def held_out(variant: str, view: tuple[Any, ...], anchored: list[Any] | None,
                 train: Callable[[int], np.ndarray]) -> np.ndarray:
        """Each plan predicted by `variant` fitted on the plans `train(i)` selects (and the covering
        ones of the models it keeps)."""
        return np.array([fit_on(variant, view, train(i), names[i] if train is other_models else None)
                         .predict(view[0][i], None if anchored is None else anchored[i]) for i in everyone])

    def others(i: int) -> np.ndarray:
        return everyone != i

    def other_models(i: int) -> np.ndarray:
        return names != names[i]

    def choose(predicted: dict[str, np.ndarray], sel: np.ndarray | None = None) -> str:
        """The composition chosen on these held-out predictions of the plans `sel` picks (default:
        every plan) (`choose_composition`)."""
        sel = np.ones(len(y), bool) if sel is None else sel
        return choose_composition({v: mape(p[sel], y[sel]) for v, p in predicted.items()}, noise_floor_mape=noise,
                                  errors={v: p[sel] / y[sel] - 1 for v, p in predicted.items()})

    # held-out predictions of each way to compose: each plan from a fit on the other plans
    loo = {v: held_out(v, measured_view, anchors, others) for v in VARIANTS}
    scores = {v: {"mape": mape(p, y), "within_10pct": within_pct(p, y, 10.0)} for v, p in loo.items()}
    chosen = choose(loo)
    pred = loo[chosen]
    # a model no plan here timed (a user's new one) composes with lines fitted on the others: each
    # way to compose is scored on every model left out in turn, and the one that transfers best
    # is stored beside the chosen one for such models (`Overhead.unseen`)
    lomo_by = {v: held_out(v, measured_view, anchors, other_models) for v in VARIANTS} if len(models) > 1 else None
    unseen = None if lomo_by is None else choose(lomo_by)
    # what a model no plan timed gets: with lines of each calibrated model's own, the `unseen` way
    # (a left-out model has no lines of its own); that way chosen on the *other* models' errors
    # alone, so the left-out model's figure is not the one the choice was made on
    per_unseen = None if lomo_by is None else {
        m: choose(lomo_by, names != m) if chosen in PER_MODEL else chosen for m in models}
    lomo = None if lomo_by is None else {m: mape(lomo_by[per_unseen[m]][names == m], y[names == m]) for m in models}
    bare = held_out(chosen, measured_view, None, others)
    bare_lomo = held_out(chosen, measured_view, None, other_models) if len(models) > 1 else None
    full = fit_on(chosen, measured_view, everyone == everyone).overhead
    full.anchors = {anchor_key(specs[m]): anchor_ms[m] for m in models}
    # only a composition with lines of each model's own tells calibrated models from the others
    unseen = unseen if chosen in PER_MODEL else chosen
    if unseen is not None and unseen != chosen:
        full.unseen = fit_on(unseen, measured_view, everyone == everyone).overhead
    loo_alone = {v: held_out(v, alone_view, anchors_alone, others) for v in VARIANTS}
    chosen_alone = choose(loo_alone)
    pred_alone = loo_alone[chosen_alone]
    # a promise meets whatever state the machine is in: the band covers the drift too (raw timings)
    full.band_pct = conformal_band(pred, y_raw)
    # the same plans timed again (or the uncompressed model, timed beside each): the machine's drift
    full.retime_band_pct = (conformal_band(y_raw, y2_raw, RETIME_COVERAGE) if y2_raw is not None
                            else conformal_band(anchor_mid, anchor_seen, RETIME_COVERAGE))
    # ... and what is left of it with both timings at their machine state (plans timed twice only)
    full.retime_state_band_pct = None if y2 is None else conformal_band(y, y2, RETIME_COVERAGE)
    for i, (row, p) in enumerate(zip(rows, pred, strict=True)):
        row["predicted_ms"] = float(p)
        row["machine_state"] = float(state[i])
        row["measured_at_median_state_ms"] = float(y[i])
        if y2_raw is not None:
            row["measured_again_ms"] = float(y2_raw[i])
            row["machine_state_again"] = float(state_again[i])
    doc: dict[str, Any] = {
        "device": device,
        "model": ",".join(models),
        "predictor": answer.describe(),
        "threads": threads,
        "plans": plans,
        "covering_plans": len(covering),
        "mape": mape(pred, y),
        "within_10pct": within_pct(pred, y, 10.0),
        "spearman": spearman(pred, y),
        "composition": chosen,
        "compositions": scores,
        "kernel_sum_only": {"mape": mape(k, y), "within_10pct": within_pct(k, y, 10.0)},
        "predictor_only": {"composition": chosen_alone, "mape": mape(pred_alone, y),
                           "within_10pct": within_pct(pred_alone, y, 10.0), "spearman": spearman(pred_alone, y),
                           "per_model": {m: _scores(pred_alone[names == m], y[names == m], again_of(names == m)) for m in models},
                           "note": "the same timed plans, every kernel answered by the predictor (no measurement)"},
        "measured_share": float(np.mean([r["measured_share"] for r in rows])),
        "family_scale": full.family_scale,
        "band_pct": full.band_pct,
        "retime_band_pct": full.retime_band_pct,
        "retime_state_band_pct": full.retime_state_band_pct,
        "band_coverage": COVERAGE,
        "retime_band_coverage": RETIME_COVERAGE,
        "within_band": float(np.mean(y_raw <= pred * (1 + full.band_pct / 100))),
        "overhead": full.as_dict(),
        "per_model": {m: _scores(pred[names == m], y[names == m], again_of(names == m)) for m in models},
        "leave_one_model_out": lomo,
        "unseen_models": None if lomo_by is None else {
            "composition": unseen,
            "chosen_without": per_unseen,
            "leave_one_model_out": {v: {m: mape(p[names == m], y[names == m]) for m in models} for v, p in lomo_by.items()},
            "note": "how a model this calibration did not time composes: each way fitted on the other models' plans "
                    "only (anchored on the left-out model's measured uncompressed time, as `profile --for` stores it); "
                    "the one chosen by the same rule on these errors is stored for such models"},
        "anchors_ms": anchor_ms,
        "as_searched": {"overhead_id": stored_id, "anchored": {m: as_searched[m].anchored for m in models},
                        "mape": mape(np.array(promised), y), "spearman": spearman(np.array(promised), y),
                        "per_model": {m: _scores(np.array(promised)[names == m], y[names == m], again_of(names == m)) for m in models},
                        "note": "the estimates a search would have used before this run: the composition, band and "
                                "anchors stored for the device (nothing fitted on these plans)"},
        "unanchored": {"mape": mape(bare, y), "spearman": spearman(bare, y),
                       "per_model": {m: _scores(bare[names == m], y[names == m], again_of(names == m)) for m in models},
                       "leave_one_model_out": None if bare_lomo is None else
                       {m: mape(bare_lomo[names == m], y[names == m]) for m in models},
                       "note": "the same composition without the measured uncompressed model (anchor)"},
        "noise_floor_mape": noise,
        "machine_state": {
            "note": "every plan is scored at the machine state it was timed in (its uncompressed model timed beside "
                    "it, over that model's median): measured / state against the estimate; `raw` scores the "
                    "timings as taken, drift between plans included",
            "p10_p50_p90": [float(v) for v in np.percentile(state_of, [10, 50, 90])],
            "raw": {"mape": mape(pred, y_raw), "spearman": spearman(pred, y_raw),
                    "noise_floor_mape": None if y2_raw is None else mape(y2_raw, y_raw),
                    "per_model": {m: _scores(pred[names == m], y_raw[names == m],
                                             None if y2_raw is None else y2_raw[names == m]) for m in models}}},
        "scoring": ("leave-one-out: each plan predicted by a composition fitted on the other plans (family scales "
                    "from their layers timed in place, overhead by NNLS); of the compositions "
                    f"({', '.join(VARIANTS)}) the richest within {TIE_POINTS:g} point(s) of the lowest held-out MAPE "
                    "(or within the noise floor, where wider, and not worse than it in a paired one-sided Wilcoxon "
                    "test on the plans' errors, p >= 0.05) is scored and stored; "
                    "leave_one_model_out scores what a model no plan timed gets: the way a left-out model composes, "
                    "fitted and chosen on the other models' plans only; every prediction is anchored: "
                    "the model's uncompressed latency measured end to end plus the composed difference the plan "
                    "makes (`unanchored` scores the same without it)"),
        "target": {"mape_max": 5.0, "met": bool(mape(pred, y) <= max(5.0, noise + 2.0))},
        "measurement_noise_median_cov": float(np.median([r["measured_cov"] for r in rows])),
        "noise_floor": {
            "source": ("noise_floor_mape: the same plans built and timed a second time, after all the others" if retime else
                       "noise_floor_mape: the uncompressed model timed beside every plan, against its median (plans not "
                       "timed twice)"),
            "plans_median_round_spread": float(np.median([r["measured_spread"] for r in rows])),
            "kernels": stored_noise(engine, device),
            "note": "the plans' spread between timing rounds, and the stored kernels' round agreement; "
                    "`hwsearch bench repeat` re-times kernels for the full figure",
        },
        "rows": rows,
    }
    if store:
        full.anchors = {**device_overhead(engine, answer.device_id)[0].anchors, **full.anchors}
        doc["overhead_id"] = store_overhead(engine, device, full, {"mape_loo": doc["mape"], "within_10pct_loo": doc["within_10pct"],
                                                                   "composition": chosen, "band_pct": full.band_pct},
                                            {"model": ",".join(models), "plans": plans, "seed": seed, "kernel_predictor": answer.describe()})
    return doc
