"""Compare: several jobs on one chart (the same model on several devices, or any jobs).

Jobs are judged on what their plans measured where they were verified on the device (a
predicted front can be off by tens of percent, and two devices' predictors err differently),
with each job's predicted front drawn dotted beside it. The jobs chosen at first are those
searched on the same objectives as the newest finished one, so the chart can be drawn.
"""

from __future__ import annotations

import streamlit as st

from hwsearch.dashboard import charts, common, data
from hwsearch.search.accuracy import ERROR_HELP, ERROR_LABEL

url = common.url()
st.title("Compare fronts")
table = common.job_table(url)
table = table[table["study_name"].notna()]
if table.empty:
    st.info(common.NO_JOBS, icon=":material/info:")
    st.stop()

models = sorted({str(m) for m in table["model"].dropna()})
mode = st.radio("Compare", ["one model on several devices", "any jobs"], horizontal=True, key="cmp_mode")
if mode == "one model on several devices" and models:
    model = st.selectbox("Model", models, key="cmp_model")
    pool = table[table["model"] == model]
else:
    pool = table
labels = {int(r["id"]): f"{common.job_label(r)} · {r['objectives']}" for _, r in pool.iterrows()}
done = pool[pool["status"] == "done"]
anchor = (done if len(done) else pool).iloc[0]
default = [int(i) for i in pool.loc[pool["objectives"] == anchor["objectives"], "id"]][:6]
chosen = st.multiselect("Jobs", list(labels), default=default, format_func=lambda i: labels[int(i)],
                        key=f"cmp_jobs_{mode}_{len(labels)}",
                        help="At first: the jobs searched on the same objectives as the newest finished one.")
if len(chosen) < 1:
    st.info("Choose one or more jobs to draw their fronts.")
    st.stop()
basis = st.segmented_control("Latency", ["measured where verified", "predicted"], default="measured where verified",
                             key="cmp_basis", help="Measured: each job's verified plans at the latency timed on "
                             "the device (solid), with its predicted front dotted beside them. Predicted: the "
                             "fronts as the searches scored them.")

df, objectives, directions = data.fronts(url, [int(j) for j in chosen], measured=basis != "predicted")
if df.empty:
    st.info("None of the chosen jobs has completed trials yet; their fronts appear as trials complete.",
            icon=":material/hourglass_top:")
    st.stop()
if len(objectives) < 2:
    st.info("The chosen jobs share fewer than two objectives, so their fronts cannot be drawn on one chart; "
            "choose jobs searched on the same objectives (the label of each job ends with them).")
    st.stop()
dirs = dict(zip(objectives, directions, strict=True))
latency_first = sorted(objectives, key=lambda o: not charts.is_latency(o))
c = st.columns(2)
x = c[0].selectbox("x axis", objectives, index=objectives.index(latency_first[0]), key="cmp_x")
rest = [o for o in objectives if o != x]
y = c[1].selectbox("y axis", rest, index=rest.index("quality") if "quality" in rest else 0, key="cmp_y")
st.plotly_chart(charts.compare_figure(df, x, y, dirs), key="cmp_chart")
missing = sorted(set(int(j) for j in chosen) - set(df["job_id"].astype(int)))
if missing:
    st.caption("No completed trials yet in: " + ", ".join(labels[j] for j in missing))
unverified = sorted(set(df["job"]) - set(df.loc[df["kind"] == "measured", "job"]))
if basis != "predicted" and unverified:
    st.caption("Not verified on a device, so shown as predicted only: " + "; ".join(unverified))

predicted = df[df["kind"] == "predicted"]
summary = predicted.groupby("job", sort=False).agg(
    front=("number", "size"), **{f"best {o}": (o, "min" if dirs[o] == "minimize" else "max") for o in objectives})
measured = df[df["kind"] == "measured"].groupby("job", sort=False).agg(
    verified=("number", "size"), best_measured_ms=("measured_ms", "min"), mean_error_pct=("error_pct", "mean"))
summary = summary.join(measured)
st.dataframe(summary, column_config={
    "front": st.column_config.NumberColumn("on the front", help="Predicted front, as `hwsearch jobs show` counts it."),
    "best_measured_ms": st.column_config.NumberColumn("best measured latency (ms)", format="%.4g"),
    "mean_error_pct": st.column_config.NumberColumn(f"mean {ERROR_LABEL}", format="%+.1f", help=ERROR_HELP)})
