"""Pareto explorer: a job's front, verified points, and the plan of the point a user chooses.

A trial is chosen by clicking any point on the 2-D chart, a row of the trial table, the trial
box, or the best plan under a budget (Streamlit reports no clicks from 3-D charts); the choice is kept in the session and the URL
(`?job=3&trial=41`). The charts' and the table's selection states are read before the chart is
drawn, so the ring marking the chosen point is never one click behind. The front, a
prediction's error and "best under a budget" are the search package's definitions, so this
page and `hwsearch jobs show` / `hwsearch export` always agree.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import streamlit as st

from hwsearch.dashboard import charts, common, data, plans
from hwsearch.errors import HwsearchError
from hwsearch.search.accuracy import ERROR_HELP, ERROR_LABEL, describe
from hwsearch.search.objectives import CONSTRAINTS, OBJECTIVES, constraint
from hwsearch.search.pareto import best_under
from hwsearch.search.quality_metrics import quality_metric
from hwsearch.search.report import NO_QUALITY
from hwsearch.spaces.plan import Plan

url = common.url()
st.title("Pareto explorer")
table = common.job_table(url)
if table.empty:
    st.info(common.NO_JOBS, icon=":material/info:")
    st.stop()
job_id = common.pick_job(table)
job = data.job(url, job_id)
if job is None:
    st.warning(f"Job #{job_id} is no longer in the database; choose another.")
    st.stop()
running = job["status"] in ("queued", "running")


@st.fragment(run_every=5 if running else None)
def progress() -> None:
    """Status line; while the job runs it re-reads the job every 5 s on its own."""
    row = data.job(url, job_id) or job
    done, total = int(row["n_trials_done"] or 0), int(row["n_trials_total"] or 0)
    spec = row["spec"] or {}
    where = " · ".join(str(x) for x in (spec.get("model"), spec.get("device")) if x)
    st.caption(f"Job #{job_id} **{row['name']}** · {row['status']} · {where} · {done} of {total or '?'} trials")
    if row["status"] in ("queued", "running"):
        st.progress(min(done / total, 1.0) if total else 0.0)
        beat = row.get("heartbeat_at")
        if beat is not None:
            st.caption(f"last heartbeat {(datetime.now(UTC) - beat).total_seconds():.0f} s ago")
    if row["status"] == "failed" and row.get("error"):
        st.error(f"This job failed: {row['error']}", icon=":material/error:")


progress()

df, meta = data.study_front(url, job_id)
if meta is None or df.empty:
    if job["status"] == "queued":
        st.info("This job is queued: its trials appear here as soon as a worker starts it. The status line above "
                "updates by itself.", icon=":material/schedule:")
    elif running:
        st.info("This job is running but no trial has finished yet; the front appears with the first completed "
                "trials (press Refresh in the sidebar).", icon=":material/hourglass_top:")
    else:
        st.info(f"Job #{job_id} has no completed trials to show ({job['status']}).", icon=":material/info:")
    st.stop()
if running:
    st.info(f"The job is still running: this is the front of the {len(df)} trials completed so far "
            "(press Refresh in the sidebar for newer ones).", icon=":material/hourglass_top:")

objectives, directions = meta.objectives, meta.directions
front = df[df["pareto"]]
m = st.columns(4)
m[0].metric("completed trials", f"{len(df):,}")
m[1].metric("on the front", f"{len(front):,}", help="Feasible trials no other trial beats on every objective; "
            "trials with equal values count once (the earliest), as in `hwsearch jobs show` and `job.pareto()`.")
m[2].metric("feasible", f"{int(df['feasible'].sum()):,}")
m[3].metric("verified on device", f"{int(df['verified'].sum()):,}")
if "quality" not in objectives and "min_quality" not in (job["spec"] or {}).get("constraints", {}):
    st.warning(NO_QUALITY, icon=":material/visibility_off:")


# -- which trial is chosen --------------------------------------------------------------------
CHART_KEY, CHART3D_KEY = f"pareto_chart_{job_id}", f"pareto3d_{job_id}"
TABLE_KEY, PICK_KEY = f"trials_table_{job_id}", f"trial_pick_{job_id}"
numbers = set(df["number"].astype(int))


def _points(state: object) -> list[int]:
    """Trials named by a chart's selection state (any trace; points that name none are skipped)."""
    sel = state.get("selection", {}) if isinstance(state, dict) else getattr(state, "selection", {})
    points = sel.get("points", []) if isinstance(sel, dict) else getattr(sel, "points", [])
    found = (charts.trial_of_point(p) for p in points or [])
    return [n for n in found if n is not None and n in numbers]


def _choose(number: int) -> None:
    st.session_state[f"trial_{job_id}"] = int(number)
    st.query_params["trial"] = str(int(number))


clicked = _points(st.session_state.get(CHART_KEY))
if clicked and clicked[0] != st.session_state.get(f"clicked_{job_id}"):
    _choose(clicked[0])
st.session_state[f"clicked_{job_id}"] = clicked[0] if clicked else None

names = data.objective_names(objectives)
if names is not None and len(front):
    with st.expander("Best plan under a budget", icon=":material/target:"):
        metric = data.quality_metric_of(job["spec"])
        budget_keys = [k for k, (n, _) in CONSTRAINTS.items() if n in names]
        with st.form(f"budget_{job_id}", border=False):
            cols = st.columns(len(budget_keys) + 1, vertical_alignment="bottom")
            budget = {}
            for col, key in zip(cols, budget_keys, strict=False):
                name, kind = constraint(key, metric)
                label = f"{'max' if kind == 'max' else 'min'} {OBJECTIVES[name].column}"
                if name == "quality":
                    label += f" ({quality_metric(metric).label})"
                budget[key] = col.number_input(label, value=None, min_value=0.0, format="%.4g", key=f"b_{key}_{job_id}")
            if cols[-1].form_submit_button("Choose", type="primary"):
                try:
                    pick = best_under(front, names, budget, band_pct=data.latency_band(job), metric=metric)
                except HwsearchError as err:
                    st.warning(str(err), icon=":material/warning:")
                else:
                    _choose(int(pick["number"]))
        band = data.latency_band(job)
        st.caption("The front's plan within the bounds that is best on the first objective they leave free, "
                   "on predicted values" + (f" (a latency budget holds for the upper bound, +{band:.1f} %)" if band
                                            else "") + ": what `job.best(...)` and `hwsearch export JOB "
                   "--max-latency-ms X` choose.")

from_url = st.query_params.get("trial")
if f"trial_{job_id}" not in st.session_state or st.session_state[f"trial_{job_id}"] not in numbers:
    default = int(front.sort_values(objectives[0])["number"].iloc[0]) if len(front) else int(df["number"].iloc[0])
    if from_url is not None and from_url.isdigit() and int(from_url) in numbers:
        default = int(from_url)
    _choose(default)
selected = int(st.session_state[f"trial_{job_id}"])

# -- the chart --------------------------------------------------------------------------------
bounds = data.constraint_bounds(job["spec"])
latency_first = sorted(objectives, key=lambda o: not charts.is_latency(o))
c = st.columns([1, 1, 1, 1])
x = c[0].selectbox("x axis", objectives, index=objectives.index(latency_first[0]), key=f"x_{job_id}")
rest = [o for o in objectives if o != x]
if not rest:
    st.info("This study has one objective: its trials are ranked in the table below.")
    y = None
else:
    y_default = "quality" if "quality" in rest else rest[0]
    y = c[1].selectbox("y axis", rest, index=rest.index(y_default), key=f"y_{job_id}")
third = [o for o in objectives if o not in (x, y)]
color = c[2].selectbox("colour", [None, *third], index=1 if third else 0, key=f"c_{job_id}",
                       format_func=lambda o: "none" if o is None else o) if third else None
three_d = c[3].toggle("3-D view", key=f"3d_{job_id}", disabled=len(objectives) < 3,
                      help="Rotate all three objectives; click a point to see its plan.")
all_trials = c[3].toggle("axes: all trials", key=f"all_{job_id}", disabled=bool(three_d),
                         help="Off: the axes frame the front (the other trials are still there: pan or zoom out). "
                              "On: the axes span every trial.")

if y is not None and three_d and third:
    st.plotly_chart(charts.pareto_3d(df, objectives, x, y, third[0], selected), key=CHART3D_KEY,
                    config={"displaylogo": False})
    st.caption("Red: the front; grey: every other trial; the ring: the chosen trial. Hover a point to read its "
               "trial, then choose it in the Trial box below (Streamlit reports no clicks from 3-D charts).")
elif y is not None:
    fig = charts.pareto_figure(df, objectives, directions, x, y, color=color, bounds=bounds, selected=selected,
                               frame_front=not all_trials, band_pct=data.latency_band(job))
    st.plotly_chart(fig, key=CHART_KEY, on_select="rerun", selection_mode="points",
                    config={"displaylogo": False})
    measured = df[df["verified"]].assign(**{"latency_ms": df.loc[df["verified"], "measured_ms"]}) \
        if "latency_ms" in (x, y) else df.iloc[0:0]
    hidden = charts.outside(fig, measured, x, y) if not all_trials else 0
    st.caption("Click any point to see its plan. Grey: dominated trials; crosses: trials that break a constraint; "
               "dashed orange lines: the job's constraints; blue diamonds: latency measured on the device "
               "beside the predicted one." + ("" if all_trials else " The axes frame the front; "
                                             "switch on *axes: all trials* to see every trial.")
               + (f" {hidden} measured point(s) lie outside these axes." if hidden else ""))

candidates = sorted(set(front["number"].astype(int)) | set(df.loc[df["verified"], "number"].astype(int)) | {selected})
st.session_state[PICK_KEY] = selected
st.selectbox("Trial", candidates, key=PICK_KEY, on_change=lambda: _choose(st.session_state[PICK_KEY]),
             format_func=lambda n: f"trial {n}" + (" (front)" if n in set(front["number"]) else ""),
             help="The front's trials and the verified ones; click any point on the chart for others.")

# -- verified plans ---------------------------------------------------------------------------
ver = data.verifications(url, job_id)
if len(ver):
    with st.expander(f"Verified on the device: {len(ver)} plan(s), predicted vs measured latency", expanded=True):
        st.dataframe(ver[["trial_number", "device", "predicted_ms", "measured_ms", "error_pct", "measured_p10_ms",
                          "measured_p90_ms"]], hide_index=True,
                     column_config={"trial_number": "trial", "error_pct": st.column_config.NumberColumn(
                         ERROR_LABEL, format="%+.1f", help=ERROR_HELP),
                         "predicted_ms": st.column_config.NumberColumn(format="%.3f"),
                         "measured_ms": st.column_config.NumberColumn(format="%.3f")})
        st.caption(f"{ERROR_LABEL}: {ERROR_HELP}")
elif job["status"] == "done":
    st.caption("No plan of this job has been verified on the device yet.")

# -- the chosen plan --------------------------------------------------------------------------
st.header(f"Plan of trial {selected}")
row = df[df["number"] == selected].iloc[0]
mc = st.columns(len(objectives) + 1)
for col, name in zip(mc, objectives, strict=False):
    col.metric(name, f"{row[name]:.4g}")
if bool(row["verified"]):
    mc[-1].metric("measured latency (ms)", f"{row['measured_ms']:.4g}",
                  delta=describe(row["error_pct"]) if pd.notna(row["error_pct"]) else None,
                  delta_color="off", delta_arrow="off", help=f"{ERROR_LABEL}: {ERROR_HELP}")
if not bool(row["feasible"]):
    st.warning("This trial breaks a constraint of the job.", icon=":material/warning:")
if data.latency_band(job) and "latency_ms" in objectives:
    band = data.latency_band(job)
    st.caption(f"Predicted latency {row['latency_ms']:.4g} ms, at most {row['latency_ms'] * (1 + band / 100):.4g} ms "
               f"on the device (calibrated band +{band:.1f} %).")

try:
    doc = data.trial_plan(url, job_id, selected)
except HwsearchError as err:
    st.warning(f"The plan of trial {selected} cannot be rebuilt: {err}", icon=":material/warning:")
    st.stop()
if doc is None:
    st.info(f"Trial {selected} has no stored plan (its trial attributes hold none and it was not verified).")
    st.stop()
try:
    layers = plans.layer_table(doc)
    merge = plans.merge_table(doc)
except HwsearchError as err:
    st.warning(f"The stored plan of trial {selected} cannot be shown: {err}")
    st.code(str(doc), language="json")
    st.stop()

def _merge_summary(merge: pd.DataFrame) -> str:
    merged, blocks = int(merge["r (merged)"].sum()), int((merge["r (merged)"] > 0).sum())
    if merged == 0:
        return "no token merging"
    return f"token merging: {merged} token{'s' * (merged != 1)} merged over {blocks} block{'s' * (blocks != 1)}"


st.markdown(
    f"**{doc.get('model')}**: {len(layers)} linear layers; choices used: "
    + ", ".join(f"`{k}` ×{v}" for k, v in layers["choice"].value_counts().items())
    + ("" if merge is None else "; " + _merge_summary(merge))
)
plan_json = Plan.parse(doc).to_json()
try:
    breakdown = data.layer_latency(url, job_id, plan_json)
    no_breakdown = None
except Exception as err:  # noqa: BLE001 - a predictor that cannot load is one line on the page, not a crash
    breakdown, no_breakdown = None, f"{type(err).__name__}: {err}".splitlines()[0]
if breakdown is not None:
    per_layer = breakdown.set_index("layer")["predicted_ms"]
    layers["predicted ms"] = layers["layer"].map(per_layer)

tabs = st.tabs(["Heat-map", "Per-layer table", "Latency by layer", "Merge schedule", "Plan JSON"])
with tabs[0]:
    st.plotly_chart(charts.plan_heatmap(layers), key=f"heat_{job_id}_{selected}")
    st.caption("Colour: bytes kept relative to the uncompressed layer; text: format / sparsity / low-rank rank.")
with tabs[1]:
    st.dataframe(layers, hide_index=True, column_config={"size %": st.column_config.NumberColumn(format="%.1f"),
                                                         "predicted ms": st.column_config.NumberColumn(format="%.4f")})
with tabs[2]:
    if breakdown is None:
        st.info(f"No per-layer latency for this plan: {no_breakdown}", icon=":material/info:")
    else:
        total = float(breakdown["predicted_ms"].sum())
        st.plotly_chart(charts.layer_latency_figure(breakdown), key=f"lat_{job_id}_{selected}")
        st.caption(f"Predicted kernel time per layer on {job['spec'].get('device')}, {total:.4g} ms in all with the "
                   "overhead term (dispatch, casts, per forward) as its own bar"
                   + (f"; the search scored this trial at {row['latency_ms']:.4g} ms" if "latency_ms" in row else "")
                   + ". Attention, norms and element-wise kernels are listed per block.")
        st.dataframe(breakdown, hide_index=True, column_config={
            "predicted_ms": st.column_config.NumberColumn("predicted ms", format="%.4f"),
            "share %": st.column_config.NumberColumn(format="%.1f")})
with tabs[3]:
    if merge is None:
        st.info("This model has no token merging (only ViT-style models with a class token merge tokens).")
    elif int(merge["r (merged)"].sum()) == 0:
        st.info("This plan merges no tokens.")
        st.dataframe(merge, hide_index=True)
    else:
        st.plotly_chart(charts.merge_figure(merge), key=f"merge_{job_id}_{selected}")
        st.dataframe(merge, hide_index=True)
with tabs[4]:
    st.code(json.dumps(doc, indent=2), language="json")

st.subheader("Download")
files = plans.export_files(plan_json)
dl = st.columns(len(files))
for col, f in zip(dl, files, strict=True):
    with col:
        st.download_button(f"{f.format}", f.data, file_name=f"trial{selected}-{f.filename}", mime=f.mime,
                           disabled=not f.data, icon=":material/download:", key=f"dl_{f.format}_{job_id}_{selected}")
        if f.warnings:
            with st.expander(f"{len(f.warnings)} thing(s) {f.format} cannot express"):
                for w in f.warnings:
                    st.caption(w)

# -- how the search went ----------------------------------------------------------------------
st.header("How the search went")
search_tabs = st.tabs(["Hypervolume over trials", "Per-layer choices", "Knob importance"])
with search_tabs[0]:
    history, note = data.hypervolume_history(url, job_id, len(df))
    if history.empty:
        st.info(note, icon=":material/info:")
    else:
        st.plotly_chart(charts.hypervolume_figure(history), key=f"hv_{job_id}")
        st.caption(f"Share of the objective space the feasible trials so far dominate. {note}")
with search_tabs[1]:
    shown_front = st.toggle("all trials", key=f"pc_all_{job_id}", help="Off: the front's trials. On: every trial "
                            f"(the last {data.PARCOORDS_MAX:,} when there are more).")
    pool = df if shown_front else front
    pool = pool.sort_values("number").tail(data.PARCOORDS_MAX)
    choices, labels = data.trial_choices(url, job_id, tuple(int(n) for n in pool["number"]))
    if choices.empty:
        st.info("This study stores no per-layer parameters (its trials carry ready plans), so there are no "
                "choices to draw.", icon=":material/info:")
    else:
        varied = [k for k in labels if choices[k].nunique() > 1]
        spread = {k: float(-(choices[k].value_counts(normalize=True).pipe(lambda q: q * np.log(q))).sum())
                  for k in varied}
        default = [k for k in varied if k in sorted(spread, key=spread.get, reverse=True)[:data.PARCOORDS_AXES]]
        picked = st.multiselect("decisions", varied, default=default, key=f"pc_dims_{job_id}_{shown_front}",
                                format_func=charts.short_layer, help="At first: the decisions whose choices vary "
                                "most among these trials (highest entropy), in model order.")
        merged = choices.merge(pool[["number", *objectives]], on="number")
        colour = "latency_ms" if "latency_ms" in objectives else objectives[0]
        st.plotly_chart(charts.parallel_figure(merged, {k: labels[k] for k in varied if k in picked},
                                               list(objectives), colour), key=f"pc_{job_id}")
        st.caption(f"One line per trial ({len(merged):,}); an axis per objective and per chosen decision "
                   f"({len(picked)} of the {len(varied)} whose choice varies among these trials; "
                   f"{len(labels) - len(varied)} never vary); drag along an axis to filter.")
with search_tabs[2]:
    if len(df) > data.IMPORTANCE_AUTO_MAX and not st.toggle("compute", key=f"imp_{job_id}",
                                                              help="Can take a while on a large study."):
        st.caption(f"{len(df):,} trials: switch on to compute the knob importance.")
    else:
        try:
            imp = data.importances(url, job_id, len(df))
        except (ValueError, RuntimeError) as err:
            imp, why = None, str(err).splitlines()[0]
        else:
            why = "no decision varies across the trials"
        if imp is None or imp.empty:
            st.info(f"No knob importance for this study: {why}.", icon=":material/info:")
        else:
            st.plotly_chart(charts.importance_figure(imp), key=f"imp_chart_{job_id}")
            n = imp["param"].nunique()
            st.caption("How much each decision matters for each objective, by Optuna's PED-ANOVA evaluator (how "
                       "differently a decision is chosen in an objective's best trials than in all trials); the 20 "
                       f"most important. An objective's importances sum to 1 over its {n} decisions, so about "
                       f"{1 / n:.3f} each when they matter alike.")

# -- all trials, paged ------------------------------------------------------------------------
st.header("All trials")
t = st.columns([2, 1, 1])
sort_by = t[0].selectbox("sort by", ["number", *objectives], index=1 if objectives else 0, key=f"sort_{job_id}")
ascending = t[1].toggle("ascending", value=True, key=f"asc_{job_id}")
only_front = t[2].toggle("front only", value=False, key=f"fo_{job_id}")
n_rows = int(df["pareto"].sum()) if only_front else len(df)
n_pages = max(1, -(-n_rows // data.PAGE_SIZE))
page_no = st.pagination(n_pages, key=f"page_{job_id}_{sort_by}_{ascending}_{only_front}") if n_pages > 1 else 1
page, _ = data.trials_page(df, page_no, sort_by=sort_by, ascending=ascending, only_front=only_front)
event = st.dataframe(page[["number", *objectives, "feasible", "pareto", "verified", "measured_ms"]], hide_index=True,
                     on_select="rerun", selection_mode="single-row", key=TABLE_KEY)
st.caption(f"{n_rows:,} trials, {data.PAGE_SIZE} a page; click a row to see its plan.")
rows = event.selection.rows if event else []
if rows:
    number = int(page.iloc[rows[0]]["number"])
    if number != st.session_state.get(f"table_clicked_{job_id}"):
        st.session_state[f"table_clicked_{job_id}"] = number
        _choose(number)
        st.rerun()
