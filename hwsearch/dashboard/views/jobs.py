"""Jobs: every search job with its status, progress, device and model; open one in the explorer."""

from __future__ import annotations

import streamlit as st

from hwsearch.dashboard import common

st.title("Jobs")
table = common.job_table(common.url())
if table.empty:
    st.info(common.NO_JOBS, icon=":material/info:")
    st.stop()

counts = table["status"].value_counts()
cols = st.columns(5)
for col, status in zip(cols, ("queued", "running", "done", "failed", "cancelled"), strict=True):
    col.metric(status, int(counts.get(status, 0)))

shown = table[["id", "name", "status", "progress", "trials", "device", "model", "created", "finished", "error"]]
event = st.dataframe(
    shown,
    hide_index=True,
    on_select="rerun",
    selection_mode="single-row",
    key="jobs_table",
    column_config={
        "id": st.column_config.NumberColumn("job", format="#%d", width="small"),
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        "finished": st.column_config.DatetimeColumn("finished", format="YYYY-MM-DD HH:mm"),
        "error": st.column_config.TextColumn("error", width="large"),
    },
)
st.caption("Click a row, or choose a job below, to open its Pareto front.")
selected = event.selection.rows if event else []
if selected:
    job_id = int(shown.iloc[selected[0]]["id"])
    st.session_state["job_id"] = job_id
    st.switch_page("views/pareto.py", query_params={"job": str(job_id)})

left, right = st.columns([3, 1], vertical_alignment="bottom")
with left:
    job_id = common.pick_job(table, "Open a job")
with right:
    if st.button("Open in Pareto explorer", type="primary", icon=":material/scatter_plot:"):
        st.switch_page("views/pareto.py", query_params={"job": str(job_id)})
