"""Compare: the fronts of several jobs on one chart (the same model on several devices, or any jobs)."""

from __future__ import annotations

import streamlit as st

from hwsearch.dashboard import charts, common, data

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
labels = {int(r["id"]): common.job_label(r) for _, r in pool.iterrows()}
default = list(labels)[:6]
chosen = st.multiselect("Jobs", list(labels), default=default, format_func=lambda i: labels[int(i)],
                        key=f"cmp_jobs_{mode}_{len(labels)}")
if len(chosen) < 1:
    st.info("Choose one or more jobs to draw their fronts.")
    st.stop()

df, objectives, directions = data.fronts(url, [int(j) for j in chosen])
if df.empty:
    st.info("None of the chosen jobs has completed trials yet; their fronts appear as trials complete.",
            icon=":material/hourglass_top:")
    st.stop()
if len(objectives) < 2:
    st.info("The chosen jobs share fewer than two objectives, so their fronts cannot be drawn on one chart; "
            "choose jobs searched on the same objectives.")
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
summary = df.groupby("job").agg(points=("number", "size"), **{f"best {o}": (o, "min" if dirs[o] == "minimize" else "max")
                                                              for o in objectives})
st.dataframe(summary)
