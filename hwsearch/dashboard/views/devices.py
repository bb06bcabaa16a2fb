"""Devices: fingerprint, what was measured (per op/format, native or emulated), predictor accuracy."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from hwsearch.dashboard import charts, common, data
from hwsearch.search.accuracy import ERROR_HELP, ERROR_LABEL

url = common.url()
st.title("Devices")
table = data.devices(url)
if not table:
    st.info(common.NO_DEVICES, icon=":material/info:")
    st.stop()

names = [d["name"] for d in table]
most = max(range(len(table)), key=lambda i: table[i]["measurements"])  # at first: the most measured device
name = st.selectbox("Device", names, index=most, key="device_pick",
                    format_func=lambda n: f"{n} ({next(d for d in table if d['name'] == n)['kind']})")
dev = next(d for d in table if d["name"] == name)

m = st.columns(4)
m[0].metric("measurements", f"{dev['measurements']:,}")
m[1].metric("native", f"{dev['native']:,}")
m[2].metric("emulated", f"{dev['emulated']:,}", help="No fast path on this device: measured, never a real speed-up.")
m[3].metric("last measured", dev["last_measured"].strftime("%Y-%m-%d") if dev["last_measured"] else "never",
            help=f"{dev['last_measured']:%Y-%m-%d %H:%M} UTC" if dev["last_measured"] else None)

left, right = st.columns([1, 2])
with left:
    st.subheader("Fingerprint")
    fp = pd.DataFrame([{"field": k, "value": str(v)} for k, v in sorted((dev["fingerprint"] or {}).items())])
    if fp.empty:
        st.caption("No fingerprint stored.")
    else:
        st.dataframe(fp, hide_index=True)
with right:
    st.subheader("Coverage")
    cov = data.coverage_frame(dev)
    if cov.empty:
        st.info(f"Nothing measured on {name} yet: `hwsearch profile --local --name {name}`.")
    else:
        st.plotly_chart(charts.coverage_figure(cov), key=f"cov_{name}")
        st.dataframe(cov, hide_index=True)

st.subheader("Predictor accuracy")
preds = data.predictors(url, name)
points = data.held_out_points(url, name)
if preds.empty and points.empty:
    st.info(f"No predictor answers for {name} yet. Train one: `hwsearch train --device {name}` "
            "(or `--kind meta` for a device with few measurements).", icon=":material/info:")
    st.stop()
if not points.empty:
    view = st.segmented_control("View", ["predicted vs measured", ERROR_LABEL], default="predicted vs measured",
                                key=f"acc_view_{name}", help=f"{ERROR_LABEL}: {ERROR_HELP}")
    st.plotly_chart(charts.accuracy_figure(points, as_error=view == ERROR_LABEL), key=f"acc_{name}")
    within = (abs(points["predicted_ms"] - points["measured_ms"]) <= 0.1 * points["measured_ms"])
    st.caption(f"{int(within.sum())} of {len(points)} points within ±10 % (shaded band). Held-out kernels were not "
               "used to fit the predictor that predicted them; verified plans are whole models timed end to end.")
else:
    st.caption("No held-out points stored for this device's predictors (retrain to record them); metrics below.")
if not preds.empty:
    st.dataframe(
        preds.drop(columns=["device"]), hide_index=True,
        column_config={
            "within_10pct": st.column_config.NumberColumn("within ±10 %", format="percent"),
            "within_5pct": st.column_config.NumberColumn("within ±5 %", format="percent"),
            "mape": st.column_config.NumberColumn("MAPE %", format="%.1f"),
            "spearman": st.column_config.NumberColumn("Spearman", format="%.3f"),
            "created": st.column_config.DatetimeColumn("trained", format="YYYY-MM-DD HH:mm"),
        },
    )
