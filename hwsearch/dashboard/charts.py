"""Plotly figure builders: plain functions from DataFrames to figures, no Streamlit.

Every point trace of the Pareto chart carries the trial number first in `customdata`, as plain
lists (a numpy array would reach the browser as a typed array, whose rows come back from a
click as objects keyed "0", "1", ...), and `trial_of_point` reads it back from any point
Streamlit reports, whatever trace it is in. Large studies draw their dominated trials with
WebGL (`Scattergl`), which stays smooth at 10,000 points; the front itself stays SVG (it is
small, and SVG points are crisp to click).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from hwsearch.search.accuracy import ERROR_LABEL, error_pct
from hwsearch.search.pareto import front_mask

GL_THRESHOLD = 2000
FRONT = "#d62728"
DOMINATED = "#9aa0a6"
MEASURED = "#1f77b4"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def _direction_note(name: str, direction: str) -> str:
    return f"{name} ({'lower' if direction == 'minimize' else 'higher'} is better)"


def is_latency(name: str) -> bool:
    """The objective verified plans are measured against (predicted latency)."""
    return "latency" in name.lower()


def _hover(objectives: tuple[str, ...] | list[str]) -> str:
    lines = ["trial %{customdata[0]}"] + [f"{o}: %{{customdata[{i + 1}]:.4g}}" for i, o in enumerate(objectives)]
    return "<br>".join(lines) + "<extra>%{fullData.name}</extra>"


def _custom(df: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> list[list[float]]:
    """`customdata` rows: the trial number, then `columns` (plain lists, see the module docstring)."""
    return df[["number", *columns]].astype(float).to_numpy().tolist()


def trial_of_point(point: object) -> int | None:
    """The trial a selected point stands for (its `customdata[0]`), or None for a point that names
    none (a line, the ring around the chosen trial). Accepts the list, or the object keyed "0",
    "1", ... that a typed array turns into."""
    custom = point.get("customdata") if isinstance(point, dict) else getattr(point, "customdata", None)
    if isinstance(custom, dict):
        custom = custom.get("0", custom.get(0))  # type: ignore[call-overload]
    elif isinstance(custom, list | tuple):
        custom = custom[0] if custom else None
    try:
        return None if custom is None else int(float(custom))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _span(values: list[pd.Series], pad: float = 0.06) -> list[float] | None:
    """An axis range around `values` with a margin (None when there is nothing to frame)."""
    v = pd.concat([pd.Series(x, dtype=float) for x in values]).dropna()
    if v.empty:
        return None
    lo, hi = float(v.min()), float(v.max())
    margin = (hi - lo) * pad or abs(hi) * pad or 1.0
    return [lo - margin, hi + margin]


def pareto_figure(
    df: pd.DataFrame, objectives: tuple[str, ...], directions: tuple[str, ...], x: str, y: str,
    color: str | None = None, bounds: dict[str, tuple[str, float]] | None = None, selected: int | None = None,
    frame_front: bool = True, band_pct: float | None = None,
) -> go.Figure:
    """2-D Pareto chart: dominated dimmed, infeasible crossed, the front bold (coloured by a third
    objective if given), constraint lines, verified points with predicted and measured latency.

    With `frame_front` the axes span the front and the chosen trial (the other trials, and measured
    points far from their predictions, are still drawn: pan or zoom out to see them); else they
    span every trial.
    With `band_pct` each front point's latency carries its calibrated upper bound as an error bar."""
    fig = go.Figure()
    dirs = dict(zip(objectives, directions, strict=True))
    custom_cols = list(objectives)
    big = len(df) > GL_THRESHOLD
    Scatter = go.Scattergl if big else go.Scatter
    dominated = df[df["feasible"] & ~df["pareto"]]
    infeasible = df[~df["feasible"]]
    front = df[df["pareto"]].sort_values(x)
    if len(infeasible):
        fig.add_trace(Scatter(x=infeasible[x], y=infeasible[y], mode="markers", name="infeasible",
                              marker={"symbol": "x", "size": 5, "color": DOMINATED, "opacity": 0.25},
                              customdata=_custom(infeasible, custom_cols), hovertemplate=_hover(custom_cols)))
    if len(dominated):
        fig.add_trace(Scatter(x=dominated[x], y=dominated[y], mode="markers", name="dominated",
                              marker={"size": 5, "color": DOMINATED, "opacity": 0.3},
                              customdata=_custom(dominated, custom_cols), hovertemplate=_hover(custom_cols)))
    marker: dict = {"size": 11, "color": FRONT, "line": {"width": 1, "color": "white"}}
    if color:
        marker.update({"color": front[color], "colorscale": "Viridis", "showscale": True,
                       "colorbar": {"title": {"text": color}}})
    bars = {}
    for axis, name in (("error_x", x), ("error_y", y)):
        if band_pct and is_latency(name):
            bars[axis] = {"type": "data", "symmetric": False, "arrayminus": [0.0] * len(front),
                          "array": (front[name] * band_pct / 100.0).tolist(), "color": FRONT, "thickness": 1}
    fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines+markers", name="Pareto front",
                             line={"shape": "hv" if dirs[x] == "minimize" else "vh", "color": FRONT, "width": 1},
                             marker=marker, customdata=_custom(front, custom_cols),
                             hovertemplate=_hover(custom_cols), **bars))
    _add_verified(fig, df, x, y)
    for name, (op, value) in (bounds or {}).items():
        label = f"{name} {'≤' if op == 'max' else '≥'} {value:g}"
        line = {"dash": "dash", "color": "#ff7f0e", "width": 1.5}
        if name == x:
            fig.add_vline(x=value, line=line, annotation_text=label, annotation_position="bottom left")
        elif name == y:
            fig.add_hline(y=value, line=line, annotation_text=label, annotation_position="bottom right")
    chosen = df[df["number"] == selected] if selected is not None else df.iloc[0:0]
    if len(chosen):
        fig.add_trace(go.Scatter(x=chosen[x], y=chosen[y], mode="markers", name=f"trial {selected}",
                                 customdata=_custom(chosen, custom_cols), hovertemplate=_hover(custom_cols),
                                 marker={"size": 22, "color": "rgba(0,0,0,0)", "line": {"width": 3, "color": "black"}}))
    fig.update_layout(xaxis_title=_direction_note(x, dirs[x]), yaxis_title=_direction_note(y, dirs[y]),
                      legend={"orientation": "h", "y": -0.18}, margin={"t": 30, "r": 10, "l": 10, "b": 10},
                      clickmode="event+select", dragmode="pan" if big else "zoom", height=520)
    if frame_front and len(front):
        framed = pd.concat([front, chosen])
        upper = front[x if is_latency(x) else y] * (1.0 + (band_pct or 0.0) / 100.0)
        fig.update_xaxes(range=_span([framed[x], *([upper] if is_latency(x) else [])]))
        fig.update_yaxes(range=_span([framed[y], *([upper] if is_latency(y) else [])]))
    return fig


def outside(fig: go.Figure, points: pd.DataFrame, x: str, y: str) -> int:
    """How many of `points` (x, y columns) fall outside the figure's fixed axis ranges."""
    xr, yr = fig.layout.xaxis.range, fig.layout.yaxis.range
    if not len(points) or xr is None or yr is None:
        return 0
    inside = points[x].between(*xr) & points[y].between(*yr)
    return int((~inside).sum())


def _add_verified(fig: go.Figure, df: pd.DataFrame, x: str, y: str) -> None:
    """Measured latency of verified trials beside the predicted one, joined by a dashed segment."""
    axis = "x" if is_latency(x) else ("y" if is_latency(y) else None)
    ver = df[df["verified"]] if "verified" in df else df.iloc[0:0]
    if axis is None or not len(ver):
        return
    other = y if axis == "x" else x
    seg_lat, seg_other = [], []
    for _, r in ver.iterrows():
        seg_lat += [r[x if axis == "x" else y], r["measured_ms"], None]
        seg_other += [r[other], r[other], None]
    xs, ys = (seg_lat, seg_other) if axis == "x" else (seg_other, seg_lat)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="predicted → measured", hoverinfo="skip",
                             line={"dash": "dot", "color": MEASURED, "width": 1.5}))
    mx, my = (ver["measured_ms"], ver[other]) if axis == "x" else (ver[other], ver["measured_ms"])
    fig.add_trace(go.Scatter(
        x=mx, y=my, mode="markers", name="measured on device",
        marker={"symbol": "diamond", "size": 11, "color": MEASURED, "line": {"width": 1, "color": "white"}},
        customdata=_custom(ver, ["predicted_ms", "measured_ms", "error_pct"]),
        hovertemplate="trial %{customdata[0]}<br>predicted %{customdata[1]:.4g} ms<br>"
                      "measured %{customdata[2]:.4g} ms<br>error %{customdata[3]:+.1f} % "
                      "(predicted − measured) / measured<extra>verified</extra>",
    ))


def pareto_3d(df: pd.DataFrame, objectives: tuple[str, ...], x: str, y: str, z: str,
              selected: int | None = None) -> go.Figure:
    """3-D view of a three-objective study: the front bold, other trials faint, the chosen trial ringed."""
    fig = go.Figure()
    for name, part, marker in (
        ("not on the front", df[~df["pareto"]], {"size": 2, "color": DOMINATED, "opacity": 0.3}),
        ("Pareto front", df[df["pareto"]], {"size": 5, "color": FRONT}),
        (f"trial {selected}", df[df["number"] == selected], {"size": 9, "color": "rgba(0,0,0,0)",
                                                             "line": {"width": 3, "color": "black"}}),
    ):
        if len(part):
            fig.add_trace(go.Scatter3d(x=part[x], y=part[y], z=part[z], mode="markers", name=name, marker=marker,
                                       customdata=_custom(part, list(objectives)),
                                       hovertemplate=_hover(list(objectives))))
    fig.update_layout(scene={"xaxis_title": x, "yaxis_title": y, "zaxis_title": z}, height=600,
                      margin={"t": 10, "r": 0, "l": 0, "b": 0})
    return fig


def compare_figure(df: pd.DataFrame, x: str, y: str, directions: dict[str, str]) -> go.Figure:
    """Several jobs on one chart, one colour per job: each job's points joined as a front.

    `df` has a `job` label, a `kind` ("measured" or "predicted") and the two axes. Each job's
    points of a kind are joined through those no other beats on the two axes drawn (`front_mask`):
    measured ones as diamonds and a solid line, predicted ones as small dots and a dotted line, so
    a job judged on what its plans measured is never drawn like one judged on predictions.
    """
    fig = go.Figure()
    shape = "hv" if directions.get(x) == "minimize" else "vh"
    for i, (label, part) in enumerate(df.groupby("job", sort=False)):
        colour = PALETTE[i % len(PALETTE)]
        for kind, pts in part.groupby("kind", sort=False):
            pts = pts.sort_values(x)
            measured = kind == "measured"
            line = pts[front_mask(pts[[x, y]].to_numpy(), [directions.get(x, "minimize"),
                                                           directions.get(y, "minimize")])]
            fig.add_trace(go.Scatter(x=line[x], y=line[y], mode="lines", hoverinfo="skip", showlegend=False,
                                     legendgroup=f"{label} · {kind}", line={"shape": shape, "color": colour,
                                     "dash": "solid" if measured else "dot", "width": 2 if measured else 1}))
            fig.add_trace(go.Scatter(
                x=pts[x], y=pts[y], mode="markers", name=f"{label} · {kind}", legendgroup=f"{label} · {kind}",
                marker={"color": colour, "size": 10 if measured else 6, "symbol": "diamond" if measured else "circle"},
                customdata=pts[["number"]].astype(float).to_numpy().tolist(),
                hovertemplate=f"trial %{{customdata[0]}} ({kind})<br>{x}: %{{x:.4g}}<br>{y}: %{{y:.4g}}"
                              "<extra>%{fullData.name}</extra>"))
    fig.update_layout(xaxis_title=_direction_note(x, directions.get(x, "minimize")),
                      yaxis_title=_direction_note(y, directions.get(y, "minimize")), height=520,
                      legend={"orientation": "h", "y": -0.18}, margin={"t": 30, "r": 10, "l": 10, "b": 10})
    return fig


def accuracy_figure(points: pd.DataFrame, as_error: bool = False) -> go.Figure:
    """Predicted vs measured (log-log) with y = x and the ±10 % band; or, with `as_error`, the
    error in % against measured latency, where the band is a horizontal strip of constant width
    (on a log-log chart spanning decades the band is thin, the error view shows it plainly)."""
    fig = go.Figure()
    lo = float(min(points["measured_ms"].min(), points["predicted_ms"].min())) * 0.8
    hi = float(max(points["measured_ms"].max(), points["predicted_ms"].max())) * 1.25
    grid = np.geomspace(max(lo, 1e-6), hi, 50)
    upper, lower, ideal = (np.full_like(grid, 10.0), np.full_like(grid, -10.0), np.zeros_like(grid)) if as_error \
        else (grid * 1.1, grid * 0.9, grid)
    fig.add_trace(go.Scatter(x=grid, y=upper, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=grid, y=lower, mode="lines", line={"width": 0}, fill="tonexty",
                             fillcolor="rgba(44,160,44,0.25)", name="±10 %", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=grid, y=ideal, mode="lines", line={"dash": "dash", "color": "#2ca02c"},
                             name="predicted = measured", hoverinfo="skip"))
    for i, (source, part) in enumerate(points.groupby("source", sort=False)):
        error = error_pct(part["predicted_ms"], part["measured_ms"])
        fig.add_trace(go.Scatter(
            x=part["measured_ms"], y=error if as_error else part["predicted_ms"], mode="markers", name=str(source),
            marker={"size": 8, "opacity": 0.8, "color": PALETTE[i % len(PALETTE)],
                    "symbol": "diamond" if (part["op"] == "model").all() else "circle"},
            customdata=np.column_stack([part["predicted_ms"], error]), text=part["op"],
            hovertemplate="%{text}<br>measured %{x:.4g} ms<br>predicted %{customdata[0]:.4g} ms"
                          "<br>error %{customdata[1]:+.1f} %<extra></extra>",
        ))
    yaxis = {"title": f"{ERROR_LABEL}: (predicted − measured) / measured", "zeroline": False} if as_error \
        else {"type": "log", "title": "predicted (ms)"}
    fig.update_layout(xaxis={"type": "log", "title": "measured (ms)"}, yaxis=yaxis,
                      height=480, legend={"orientation": "h", "y": -0.2}, margin={"t": 30, "r": 10, "l": 10, "b": 10})
    return fig


def plan_heatmap(layers: pd.DataFrame) -> go.Figure:
    """Blocks × layer roles, coloured by the size kept (% of the uncompressed layer), labelled by choice."""
    df = layers.copy()
    df["row"] = df["block"].map(lambda b: "other" if pd.isna(b) else f"block {int(b)}")
    df["col"] = df["role"].fillna(df["layer"])
    rows = list(dict.fromkeys(df["row"]))
    cols = list(dict.fromkeys(df["col"]))
    z = pd.DataFrame(np.nan, index=rows, columns=cols)
    labels = pd.DataFrame("", index=rows, columns=cols)
    names = pd.DataFrame("", index=rows, columns=cols)
    for _, r in df.iterrows():
        z.loc[r["row"], r["col"]] = np.nan if pd.isna(r["size %"]) else r["size %"]
        labels.loc[r["row"], r["col"]] = r["choice"]
        names.loc[r["row"], r["col"]] = r["layer"]
    fig = go.Figure(go.Heatmap(
        z=z.to_numpy(dtype=float), x=cols, y=rows, text=labels.to_numpy(), texttemplate="%{text}",
        customdata=names.to_numpy(), colorscale="RdYlGn_r", zmin=0, zmax=100,
        colorbar={"title": {"text": "size kept %"}},
        hovertemplate="%{customdata}<br>%{text}<br>size kept %{z:.1f} %<extra></extra>",
    ))
    fig.update_layout(yaxis={"autorange": "reversed"}, height=max(260, 28 * len(rows) + 120),
                      margin={"t": 10, "r": 10, "l": 10, "b": 10})
    return fig


def merge_figure(merge: pd.DataFrame) -> go.Figure:
    """Tokens merged per block (bars) and the tokens each block's MLP sees (line)."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=merge["block"], y=merge["r (merged)"], name="tokens merged (r)", marker_color=FRONT))
    fig.add_trace(go.Scatter(x=merge["block"], y=merge["tokens out"], name="tokens after the block", yaxis="y2",
                             mode="lines+markers", line={"color": MEASURED}))
    fig.update_layout(xaxis={"title": "block", "dtick": 1}, yaxis={"title": "r"},
                      yaxis2={"title": "tokens", "overlaying": "y", "side": "right", "rangemode": "tozero"},
                      height=300, legend={"orientation": "h", "y": -0.3}, margin={"t": 10, "r": 10, "l": 10, "b": 10})
    return fig


def coverage_figure(coverage: pd.DataFrame) -> go.Figure:
    """Measurements per op/format, native and emulated stacked."""
    fig = go.Figure()
    fig.add_trace(go.Bar(y=coverage["op/format"], x=coverage["native"], name="native", orientation="h",
                         marker_color="#2ca02c"))
    fig.add_trace(go.Bar(y=coverage["op/format"], x=coverage["emulated"], name="emulated (no fast path)",
                         orientation="h", marker_color="#ff7f0e"))
    fig.update_layout(barmode="stack", height=max(240, 26 * len(coverage) + 140), xaxis_title="measurements",
                      legend={"orientation": "h", "y": -0.4}, margin={"t": 36, "r": 10, "l": 10, "b": 10})
    return fig


def hypervolume_figure(history: pd.DataFrame) -> go.Figure:
    """Hypervolume of the feasible trials so far against the trial count (one step per improvement)."""
    fig = go.Figure(go.Scatter(x=history["trial"], y=history["hypervolume"], mode="lines", line={"shape": "hv",
                               "color": FRONT}, hovertemplate="after %{x} trials<br>hypervolume %{y:.4f}<extra></extra>"))
    fig.update_layout(xaxis_title="completed trials", yaxis_title="hypervolume (higher is better)", height=320,
                      yaxis={"rangemode": "tozero"}, margin={"t": 20, "r": 10, "l": 10, "b": 10})
    return fig


def parallel_figure(choices: pd.DataFrame, labels: dict[str, tuple[str, ...]], objectives: list[str],
                    colour: str) -> go.Figure:
    """Parallel coordinates: one axis per objective, then one per decision (its choices as ticks),
    one line per trial, coloured by `colour`."""
    dims = [{"label": o, "values": choices[o].astype(float).tolist()} for o in objectives]
    for name, ticks in labels.items():
        dims.append({"label": short_layer(name), "values": choices[name].astype(float).tolist(),
                     "tickvals": list(range(len(ticks))), "ticktext": list(ticks), "range": [0, max(len(ticks) - 1, 1)]})
    line = {"color": choices[colour].astype(float).tolist(), "colorscale": "Viridis", "showscale": True,
            "colorbar": {"title": {"text": colour}}}
    fig = go.Figure(go.Parcoords(line=line, dimensions=dims, labelangle=-30, labelside="bottom"))
    fig.update_layout(height=460, margin={"t": 40, "r": 60, "l": 60, "b": 90})
    return fig


def short_layer(name: str) -> str:
    """`blocks.3.attn.qkv` -> `b3.qkv`: axis labels that fit side by side."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "blocks" and parts[1].isdigit():
        return f"b{parts[1]}.{parts[-1]}"
    return name


def importance_figure(importance: pd.DataFrame, top: int = 20) -> go.Figure:
    """Horizontal bars: each decision's importance per objective (the `top` most important overall)."""
    order = importance.groupby("param")["importance"].max().sort_values(ascending=False).head(top).index[::-1]
    fig = go.Figure()
    for i, (objective, part) in enumerate(importance.groupby("objective", sort=False)):
        part = part.set_index("param").reindex(order)
        fig.add_trace(go.Bar(y=[short_layer(n) for n in order], x=part["importance"], name=str(objective),
                             orientation="h", marker_color=PALETTE[i % len(PALETTE)], customdata=list(order),
                             hovertemplate="%{customdata}<br>importance %{x:.3f}<extra>%{fullData.name}</extra>"))
    fig.update_layout(barmode="group", height=max(280, 22 * len(order) * max(1, importance["objective"].nunique())
                                                    // 2 + 120),
                      xaxis_title="importance (PED-ANOVA; an objective's importances sum to 1)",
                      legend={"orientation": "h", "y": -0.15}, margin={"t": 20, "r": 10, "l": 10, "b": 10})
    return fig


def layer_latency_figure(breakdown: pd.DataFrame) -> go.Figure:
    """Predicted kernel time per layer in model order, coloured by op, with the overhead as its own bar."""
    fig = go.Figure()
    for i, (op, part) in enumerate(breakdown.groupby("op", sort=False)):
        fig.add_trace(go.Bar(x=part["layer"], y=part["predicted_ms"], name=str(op),
                             marker_color=PALETTE[i % len(PALETTE)], customdata=part[["choice"]].to_numpy().tolist(),
                             hovertemplate="%{x}<br>%{customdata[0]}<br>%{y:.4g} ms<extra>%{fullData.name}</extra>"))
    fig.update_layout(barmode="stack", height=360, yaxis_title="predicted ms",
                      xaxis={"categoryorder": "array", "categoryarray": list(breakdown["layer"]), "tickangle": -60},
                      legend={"orientation": "h", "y": 1.1}, margin={"t": 30, "r": 10, "l": 10, "b": 10})
    return fig
