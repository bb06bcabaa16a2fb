"""`hwsearch bench search`: samplers vs random at equal trials, against the exact front.

On a reduced space of the model (four formats, int4 group 128, three ranks, a few merge
schedules) the exact Pareto front of the two objectives is computed by dynamic programming
over the additive tables (`search.reference`). Each sampler then runs as the service runs it
(warm start included) and once without the warm start, and random search runs without it, all
for the same number of trials and seeds; every study runs in memory so the numbers are the
samplers', not the storage's.

Hypervolume is measured in the box from the reference front's ideal to its nadir widened by
10 % of its range (the usual reference point), so `hv_ratio` = HV(sampler front) / HV(exact
front) says how much of the real front a sampler found. `trials_to_95pct` is the first trial
count whose front reaches 95 % of the reference hypervolume (None: not within the budget).
`violation_rate` is measured: the plans a user would pick under several latency budgets (the
reference front's quartiles; each checked against the latency's calibrated upper bound) are
built and timed end to end on the device; it reports the share whose measured latency breaks
its budget and the worst overshoot. Given several models (`run_models`), each is benchmarked as
above and the picks of all of them are pooled into one violation rate, the figure a user betting
constraints on different models meets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from hwsearch.errors import HwsearchError
from hwsearch.search import pareto
from hwsearch.search.problem import build_problem
from hwsearch.search.reference import exact_front
from hwsearch.search.samplers import SAMPLERS
from hwsearch.search.spec import SearchSpec
from hwsearch.search.study import optimize_in_memory

QUANTUNE = ("Quantune (Lee et al., 2022, Future Generation Computer Systems 'Quantune: Post-training quantization of "
            "convolutional neural networks using extreme gradient boosting for fast deployment'): 36.5x less search "
            "time than random, grid and genetic search")
MARGIN = 0.10


def reduced_knobs(depth: int, dim: int) -> dict[str, Any]:
    step = max(1, dim // 8)
    return {"formats": ["fp32", "bf16", "int8", "int4"], "group_sizes": [128], "rank_step": step,
            "rank_fraction": 0.4, "merge_start": [0, depth // 2]}


def _box(front: np.ndarray, objectives: list[str], metric: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    s = pareto.signs(objectives, metric)
    z = front * s
    lo, hi = z.min(0), z.max(0)
    nadir = hi + MARGIN * np.where(hi > lo, hi - lo, np.abs(hi) + 1e-9)
    return lo * s, nadir * s


def run(engine: Engine, device: str, model: str = "vit_base", trials: int = 500, seeds: int = 3,
        samplers: list[str] | None = None, objectives: list[str] | None = None, verify: int = 3,
        show_progress: bool = False, profile_missing: bool = True) -> dict[str, Any]:
    from hwsearch.profilers.progress import progress_bar

    samplers = samplers or ["nsga2", "tpe"]
    objectives = objectives or ["latency", "size"]
    for s in samplers:
        if s not in SAMPLERS or s == "random":
            raise HwsearchError(f"unknown sampler {s!r} to compare; accepted: {', '.join(x for x in SAMPLERS if x != 'random')}")
    if len(objectives) != 2:
        raise HwsearchError(f"bench search compares on 2 objectives; got {objectives}; accepted: e.g. latency,size")
    if trials < 10 or seeds < 1:
        raise HwsearchError("bench search needs --trials >= 10 and --seeds >= 1")
    from hwsearch.spaces.catalog import get_model

    desc = get_model(model)
    knobs = reduced_knobs(len(desc.blocks) or 1, min(min(la.K, la.N) for la in desc.layers))
    # on the device's own machine, what the reduced space scores and no measurement covers is measured
    # first (as a job with profile_missing does): the picks are then timed against measured tables
    spec = SearchSpec(model=model, device=device, objectives=objectives, knobs=knobs, n_trials=trials, verify_top_k=0,
                      profile_missing=profile_missing and "latency" in objectives and _is_local(engine, device))
    problem = build_problem(engine, spec)
    tables = problem.tables
    t0 = time.perf_counter()
    ref = exact_front(tables, objectives)
    ref_seconds = time.perf_counter() - t0
    metric = tables.metric
    ideal, nadir = _box(ref, objectives, metric)
    hv_ref = pareto.hypervolume(ref, objectives, ideal, nadir, metric)
    runs = [(s, True) for s in samplers] + [(s, False) for s in samplers] + [("random", False)]
    out: dict[str, dict[str, Any]] = {}
    fronts: dict[str, np.ndarray] = {}
    with progress_bar(show_progress) as bar:
        task = bar.add_task("search benchmark", total=len(runs) * seeds)
        for sampler, warm in runs:
            key = sampler if warm or sampler == "random" else f"{sampler}_no_warm_start"
            ratios, hits, speeds, curves = [], [], [], []
            for seed in range(seeds):
                started = time.perf_counter()
                done = optimize_in_memory(tables, objectives, {}, sampler, seed, trials, warm)
                speeds.append(len(done) / (time.perf_counter() - started))
                values = np.array([t.values for t in done], dtype=float)
                curve = pareto.hv_curve(values, np.ones(len(values), bool), objectives, ideal, nadir, metric) / hv_ref
                curves.append(curve)
                ratios.append(float(curve[-1]))
                hits.append(pareto.trials_to(curve, 0.95))
                if seed == 0:
                    fronts[key] = values[pareto.pareto_mask(values * pareto.signs(objectives, metric))]
                bar.advance(task)
            reached = [h for h in hits if h is not None]
            out[key] = {
                "hv_ratio": float(np.mean(ratios)), "hv_ratio_per_seed": ratios,
                "trials_to_95pct": float(np.mean(reached)) if len(reached) == len(hits) else None,
                "trials_to_95pct_per_seed": hits, "trials_per_second": float(np.mean(speeds)),
                "hv_ratio_at": {str(n): float(np.mean([c[min(n, trials) - 1] for c in curves]))
                                for n in (20, 50, 100, 200, trials) if n <= trials},
            }
    rnd = out["random"]["trials_to_95pct"]
    for key, doc in out.items():
        if key == "random":
            continue
        mine = doc["trials_to_95pct"]
        doc["fewer_trials_than_random"] = (rnd / mine) if (rnd and mine) else None
        if mine and not rnd:
            doc["fewer_trials_than_random_at_least"] = trials / mine
    doc: dict[str, Any] = {
        "device": device, "model": model, "objectives": objectives, "trials": trials, "seeds": seeds,
        "space": {"knobs": knobs, "variables": len(tables.variables), "merges": len(tables.merges),
                  "plans": float(np.prod([float(len(v.choices)) for v in tables.variables]) * len(tables.merges))},
        "reference": {"points": int(len(ref)), "hypervolume": hv_ref, "seconds": ref_seconds,
                      "box": {"ideal": ideal.tolist(), "nadir": nadir.tolist()}},
        "predictor": problem.predictor,
        "samplers": out,
        "hv_ratio": {k: v["hv_ratio"] for k, v in out.items()},
        "trials_to_95pct": {k: v["trials_to_95pct"] for k, v in out.items()},
        "trials_per_second": {k: v["trials_per_second"] for k, v in out.items()},
        "targets": {"hv_ratio_min": 0.99, "fewer_trials_than_random_min": 10.0},
        "published": QUANTUNE,
    }
    doc["violation_rate"] = _violations(problem, objectives, ref, fronts.get(samplers[0]), verify, spec)
    return doc


def run_models(engine: Engine, device: str, models: list[str], **kwargs: Any) -> dict[str, Any]:
    """`run` for each model, the constrained picks pooled: one violation rate over every model's picks."""
    if not models:
        raise HwsearchError("bench search needs at least one model; accepted: e.g. --model vit_tiny,vit_base,minilm")
    docs = {m: run(engine, device, m, **kwargs) for m in models}
    if len(docs) == 1:
        return docs[models[0]]
    measured = {m: d["violation_rate"] for m, d in docs.items() if d["violation_rate"].get("measured")}
    rows = [dict(r, model=m) for m, v in measured.items() for r in v["rows"]]
    over = [100 * (r["measured_ms"] / r["budget_ms"] - 1) for r in rows]
    pooled: dict[str, Any] = {
        "measured": bool(measured), "models": list(measured),
        "not_measured": {m: d["violation_rate"].get("reason") for m, d in docs.items() if m not in measured},
        "picks": len(rows), "budgets": sum(len(v["budgets_ms"]) for v in measured.values()),
        "refused_budgets": sum(len(v["refused_budgets_ms"]) for v in measured.values()),
        "violation_rate": float(np.mean([o > 0 for o in over])) if rows else 0.0,
        "worst_overshoot_pct": float(max(over)) if rows else None,
        "max_rounds": max((len(v["rounds"]) for v in measured.values()), default=0),
        "machine_states": {m: v["machine_states"] for m, v in measured.items()},
        "machine_disturbed": [m for m, v in measured.items() if v["machine_disturbed"]],
        "rows": rows,
    }
    samplers = list(next(iter(docs.values()))["hv_ratio"])
    return {"device": device, "models": models, "per_model": docs, "violation_rate": pooled,
            "hv_ratio": {s: {m: d["hv_ratio"][s] for m, d in docs.items()} for s in samplers},
            "hv_ratio_min": {s: min(d["hv_ratio"][s] for d in docs.values()) for s in samplers},
            "targets": next(iter(docs.values()))["targets"], "published": QUANTUNE}


def _is_local(engine: Engine, device: str) -> bool:
    from hwsearch.profilers.coverage import local_fingerprint

    try:
        local_fingerprint(engine, device, "hwsearch bench search")
    except HwsearchError:
        return False
    return True


BUDGET_QUANTILES = (0.2, 0.35, 0.5, 0.65, 0.8)
# The fresh timing that counts violations is taken with the machine in the state the promise was
# made for: on a shared 2-vCPU VM three vit_tiny picks verified at 20.5-21.8 ms were re-timed at
# 31.7-34.0 ms, 1.5x, while nothing in the plans had changed (the machine had slowed; vit_tiny
# uncompressed was 15.7 ms at calibration). The uncompressed model timed beside the picks shows that.
STATE_TOLERANCE = 0.05  # how far from the calibrated state a counted timing may run
STATE_TRIES = 4
STATE_PAUSE_S = 30.0


def _violations(problem: Any, objectives: list[str], ref: np.ndarray, front: np.ndarray | None, k: int,
                spec: SearchSpec) -> dict[str, Any]:
    """Pick what a user would under several latency budgets, time it, refit, count broken budgets.

    Budgets are quantiles (`BUDGET_QUANTILES`) of the reference front's upper bounds; under each,
    the search runs with the budget as its constraint (checked against the latency's calibrated
    upper bound, `Tables.margin`) and the `k` feasible plans best on the other objective are
    picked and timed end to end together (interleaved rounds). While a pick breaks its budget,
    the refit a job does (`results.verify_and_refit`: this model's correction and band from every
    plan timed so far) re-scores the searched trials and the picks are made and timed again, for
    at most `REFIT_ROUNDS` rounds; a plan already timed is judged by its measurement (widened by
    the device's re-timing drift at state, `Overhead.retime_state_band_pct`), not its estimate. Every timing runs
    beside the uncompressed model, and a verification is brought to the machine state the tables
    were calibrated in (`results.anchor_drift`), as a job's is. The last round's picks are then
    timed once more, in a state within `STATE_TOLERANCE` of the calibrated one (re-timed after a
    pause while it is not, `STATE_TRIES` at most, each try's state reported), and the violations
    counted on that fresh timing. What is handed over, per budget, is the `k` best plans whose
    verification fits it (a last-round pick that broke its budget is withdrawn and replaced by a
    plan verified earlier, under any budget, where one fits).
    """
    if "latency" not in objectives or front is None or k <= 0:
        return {"measured": False, "reason": "needs the latency objective and --verify > 0"}
    if not problem.local:
        return {"measured": False, "reason": f"device {spec.device!r} is not this machine; timing needs its host"}
    from hwsearch.predictors.calibration import conformal_band
    from hwsearch.search.results import REFIT_ROUNDS, anchor_drift, plan_of
    from hwsearch.search.study import optimize_in_memory as search
    from hwsearch.search.verify import time_plans
    from hwsearch.spaces.plan import Plan

    li = objectives.index("latency")
    other = 1 - li
    sign = problem.tables.objective(objectives[other]).sign
    margin = problem.tables.margin("latency")
    band = (margin - 1) * 100
    budgets = [float(np.quantile(ref[:, li] * margin, q)) for q in BUDGET_QUANTILES]
    # the last round's picks are what a user is handed; a budget no plan fits after a refit is refused
    searched = {b: search(problem.tables, objectives, {"latency_ms": b}, spec.sampler, 0, spec.n_trials, True)
                for b in budgets}
    threads, backend = int(problem.fingerprint.get("threads") or 1), problem.fingerprint.get("backend", "cpu")
    # verifications judged, and the fresh timing taken, at the calibrated machine state: the margin is
    # the re-timing drift at state (`Overhead.retime_state_band_pct`), the raw one where none is stored
    # (on a 2-vCPU EPYC the raw 98 % band was 52.8 %, and it withdrew every pick of three models)
    latency = problem.tables.provenance.get("latency") or {}
    drift = float(latency.get("retime_state_band_pct") or latency.get("retime_band_pct") or 0.0) / 100

    base = Plan(model=problem.space.model.name, device=spec.device, layers={})

    def time_trials(trials: list[Any]) -> tuple[list[dict[str, float]], float]:
        """The trials' plans timed beside the uncompressed model: (their timings, the machine's state
        in those rounds: `results.anchor_drift`, 1 where the device stores no anchor for the model)."""
        got = time_plans(problem.space.model, [*(plan_of(t, problem.space, spec) for t in trials), base], threads,
                         backend, dispatch=problem.dispatch)
        return got[:-1], anchor_drift(problem, got[-1])

    # a plan's parameters -> its verification (measured ms and round spread), timed once
    timed: dict[tuple[tuple[str, Any], ...], dict[str, float]] = {}
    seen_pred: list[float] = []
    seen_meas: list[float] = []
    correction = 1.0
    rounds = []
    picks: list[tuple[float, Any]] = []
    refused: list[float] = []

    def choose(bound: Callable[[Any], float], verified: bool = False) -> tuple[list[tuple[float, Any]], list[float]]:
        """Per budget, the `k` plans best on the other objective whose bound fits it, among its search's
        trials (or among every plan timed so far, under any budget, if `verified`); and the budgets no
        such plan fits (the user is told so)."""
        picks: list[tuple[float, Any]] = []
        refused: list[float] = []
        timed_trials = list({_key(t): t for ts in searched.values() for t in ts if _key(t) in timed}.values())
        for b in budgets:
            pool = timed_trials if verified else searched[b]
            ok = sorted((t for t in pool if bound(t) <= b), key=lambda t: t.values[other] * sign)
            picks += [(b, t) for t in list({_key(t): t for t in ok}.values())[:k]]  # k different plans
            if not ok:
                refused.append(b)
        return picks, refused

    for round_no in range(1, REFIT_ROUNDS + 1):
        factor = correction * (1 + band / 100)

        def bound(t: Any, factor: float = factor) -> float:
            """A verified plan's measurement widened by the machine's re-timing drift (or its own round
            spread, if larger); else the estimate's upper bound."""
            seen = timed.get(_key(t))
            return seen["measured_ms"] * (1 + max(seen["spread"], drift)) if seen else t.values[li] * factor

        picks, refused = choose(bound)
        new = list({_key(t): t for _, t in picks if _key(t) not in timed}.values())
        got, state = time_trials(new) if new else ([], 1.0)
        for t, g in zip(new, got, strict=True):
            # judged at the state the tables were calibrated in, as a job's verification judges it
            timed[_key(t)] = dict(g, measured_ms=g["measured_ms"] / state, state=state)
            seen_pred.append(t.values[li])
            seen_meas.append(timed[_key(t)]["measured_ms"])
        # broken: measured over the budget, or too close to it to hold when timed again (drift)
        broken = [(b, t) for b, t in picks if bound(t) > b]
        over = sum(timed[_key(t)]["measured_ms"] > b for b, t in picks)
        rounds.append({"round": round_no, "picks": len(picks), "violations": over, "too_close": len(broken) - over,
                       "refused_budgets": len(refused),
                       "correction": correction, "band_pct": band})
        if not broken:
            break
        pred, meas = np.array(seen_pred), np.array(seen_meas)
        correction = float(np.median(meas / pred))
        band = max(band, conformal_band(correction * pred, meas))
    if not timed:
        return {"measured": False, "reason": "no plan's upper bound fits under any budget"}
    # What the user is handed: per budget, the k best verified plans that fit it. A last-round pick
    # whose verification broke its budget (or came too close) is withdrawn (and counted); a plan
    # verified earlier (under any budget) that fits takes its place, so no budget is left with
    # fewer picks than the verified plans allow, and nothing handed over goes unverified.
    withdrawn = sum(bound(t) > b for b, t in picks)
    picks, refused = choose(bound, verified=True)
    # What the user is handed is timed once more, afresh: the violations are counted on that timing,
    # not on the verification that picked it (which a lucky measurement could pass).
    final = list({_key(t): t for _, t in picks}.values())
    # ... in the machine state the promise was made for: where the uncompressed model, timed in the
    # same rounds, runs more than `STATE_TOLERANCE` from its calibrated time, something else is
    # running; the picks are timed again after a pause, `STATE_TRIES` at most
    states: list[float] = []
    again: dict[tuple[tuple[str, Any], ...], float] = {}
    for attempt in range(STATE_TRIES if final else 0):
        got, state = time_trials(final)
        states.append(state)
        again = {_key(t): g["measured_ms"] for t, g in zip(final, got, strict=True)}
        if abs(state - 1) <= STATE_TOLERANCE or attempt == STATE_TRIES - 1:
            break
        time.sleep(STATE_PAUSE_S)
    rows = [{"budget_ms": b, "predicted_ms": float(t.values[li]), "upper_ms": float(t.values[li] * factor),
             "verified_ms": float(timed[_key(t)]["measured_ms"]), "verified_state": float(timed[_key(t)]["state"]),
             "bound_ms": float(bound(t)), "measured_ms": float(again[_key(t)]), "machine_state": states[-1],
             "round": len(rounds)} for b, t in picks]
    measured = np.array([r["measured_ms"] for r in rows])
    limit = np.array([r["budget_ms"] for r in rows])
    predicted = np.array([r["predicted_ms"] for r in rows])
    return {"measured": True, "picks": len(rows), "budgets_ms": budgets, "refused_budgets_ms": refused,
            "band_pct": (margin - 1) * 100,
            "violation_rate": float(np.mean(measured > limit)) if len(rows) else 0.0,
            "worst_overshoot_pct": float((100 * (measured / limit - 1)).max()) if len(rows) else None,
            "prediction_mape": float(100 * np.mean(np.abs(predicted - measured) / measured)) if len(rows) else None,
            "all_timed_mape": float(100 * np.mean(np.abs(np.array(seen_pred) - np.array(seen_meas)) / np.array(seen_meas))),
            "retimed_mape": float(100 * np.mean([abs(r["measured_ms"] - r["verified_ms"]) / r["verified_ms"] for r in rows]))
            if rows else None,
            "counted_on": "the picks timed afresh after the last round (not the verification timing that chose them), "
                          f"beside the uncompressed model, in a machine state within {STATE_TOLERANCE:.0%} of the "
                          "calibrated one where one came within the tries (`machine_states`)",
            "machine_states": states,
            "machine_disturbed": bool(states) and abs(states[-1] - 1) > STATE_TOLERANCE,
            "withdrawn_picks": withdrawn, "retime_margin_pct": 100 * drift,
            "retime_margin_at_state": bool(latency.get("retime_state_band_pct")),
            "rounds": rounds, "plans_timed": len(timed), "rows": rows}


def _key(trial: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(trial.params.items()))


def print_report(doc: dict[str, Any]) -> None:
    from rich.console import Console

    if "per_model" in doc:
        for one in doc["per_model"].values():
            print_report(one)
        v = doc["violation_rate"]
        worst = "-" if v["worst_overshoot_pct"] is None else f"{v['worst_overshoot_pct']:+.1f} %"
        Console().print(f"all models ({', '.join(v['models'])}): {sum(r['measured_ms'] > r['budget_ms'] for r in v['rows'])} "
                        f"of {v['picks']} picks under {v['budgets']} budgets break theirs (violation rate "
                        f"{v['violation_rate']:.3f}, worst overshoot {worst}, at most {v['max_rounds']} round(s)); "
                        f"lowest HV / exact: " + ", ".join(f"{s} {h:.4f}" for s, h in doc["hv_ratio_min"].items()))
        return
    from rich.table import Table

    grid = Table(title=f"Search benchmark: {doc['model']} on {doc['device']}, {'x'.join(doc['objectives'])}, "
                       f"{doc['trials']} trials x {doc['seeds']} seeds; exact front: {doc['reference']['points']} points",
                 caption=f"published: {doc['published']}", title_justify="left")
    for col in ("sampler", "HV / exact", "trials to 95 %", "x fewer than random", "trials/s"):
        grid.add_column(col, justify="right" if col != "sampler" else "left")
    for key, s in doc["samplers"].items():
        fewer = s.get("fewer_trials_than_random")
        if fewer is None and s.get("fewer_trials_than_random_at_least"):
            fewer_text = f">= {s['fewer_trials_than_random_at_least']:.1f}"
        else:
            fewer_text = "-" if fewer is None else f"{fewer:.1f}"
        t95 = s["trials_to_95pct"]
        grid.add_row(key, f"{s['hv_ratio']:.4f}", "not reached" if t95 is None else f"{t95:.0f}", fewer_text,
                     f"{s['trials_per_second']:.1f}")
    Console().print(grid)
    v = doc["violation_rate"]
    if v.get("measured"):
        broken = sum(r["measured_ms"] > r["budget_ms"] for r in v["rows"])
        worst = "-" if v["worst_overshoot_pct"] is None else f"{v['worst_overshoot_pct']:+.1f} %"
        Console().print(f"measured: {broken} of {v['picks']} plans picked under {len(v['budgets_ms'])} latency budgets "
                        f"break theirs on the device after {len(v['rounds'])} round(s) of verify-and-refit "
                        f"(violation rate {v['violation_rate']:.2f}, worst overshoot {worst}, band "
                        f"+{v['band_pct']:.1f} %; {len(v['refused_budgets_ms'])} budget(s) refused: no plan fits; "
                        f"machine state of the fresh timing(s): {', '.join(f'{x:.2f}' for x in v['machine_states'])})")
    else:
        Console().print(f"violation rate not measured: {v['reason']}")
