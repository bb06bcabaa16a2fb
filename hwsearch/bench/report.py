"""Showing benchmark results to a person: the table or lines each `hwsearch bench ...` prints.

Each function takes the benchmark's JSON document (what `--json` prints) and prints it.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from hwsearch.console import wide_console


def print_kernels(doc: dict[str, Any], device: str) -> None:
    """`bench kernels`: speed-ups over bf16 dense with achieved GB/s and TFLOP/s."""
    limits = doc.get("limits")
    caption = (f"memory {limits['memory_gbs']:.0f} GB/s, cache {limits['cache_gbs']:.0f} GB/s (this device's probe)"
               if limits else "no limits probed for this device (profile it again to measure them)")
    how = ("each shape's kernels timed side by side now" if all(r.get("timed") == "side by side" for r in doc["rows"])
           else "stored measurements")
    grid = Table(title=f"Kernel speed-ups on {device} ({how}, floor of interleaved rounds; emulated kernels are not real speed-ups)",
                 caption=caption)
    for col in ("shape M×K×N (attention: tokens×heads×head_dim×context×kv_heads)", "format", "sparsity", "rank", "native", "implementation", "µs", "× bf16", "GB/s", "TFLOP/s",
                "rounds"):
        grid.add_column(col)
    for r in doc["rows"]:
        note = "legacy" if r["rounds"] is None else f"{r['rounds']} ±{100 * r['spread']:.0f}%" + (" [red]unstable" if r["unstable"] else "")
        grid.add_row("×".join(map(str, r["shape"])), r["format"], r["sparsity"], str(r["rank"] or "full"),
                     "yes" if r["native"] else "[red]emulated", escape(r["implementation"]), f"{r['median_us']:.1f}",
                     f"{r['speedup_vs_bf16']:.2f}", f"{r['achieved_gbs']:.1f}", f"{r['achieved_tflops']:.3f}", note)
    wide_console().print(grid)


def print_help(doc: dict[str, Any]) -> None:
    """`bench help`: Spearman and within ±10 % per test device beside HELP's published numbers."""
    pub = doc["published"]
    grid = Table(title=f"HELP benchmark, {doc['space']}: {doc['shots']} shots, mean of {doc['seeds']} seeds",
                 caption=f"published: {pub['source']}", title_justify="left")
    for col in ("device", "Spearman", "within ±10 %", "HELP published Spearman"):
        grid.add_column(col, justify="right" if col != "device" else "left")
    for dev, m in doc["devices"].items():
        ref = pub["spearman"].get(dev)
        grid.add_row(dev, f"{m['spearman']:.3f}", f"{m['within_10pct']:.3f}", "-" if ref is None else f"{ref:.3f}")
    mean_ref = pub["mean_spearman"]
    grid.add_row("[bold]mean", f"[bold]{doc['mean_spearman']:.3f}", f"[bold]{doc['mean_within_10pct']:.3f}",
                 "-" if mean_ref is None else f"[bold]{mean_ref:.3f}")
    for name, val in pub["baselines"].items():
        grid.add_row(f"[dim]{name}", "", "", f"[dim]{val:.3f}")
    wide_console().print(grid)


def print_gemm_transfer(doc: dict[str, Any], target: str, shots: int, seeds: int) -> None:
    """`bench gemm-transfer`: few-shot and zero-shot accuracy per target GPU beside the noise floor."""
    pub = doc["published"]
    grid = Table(title=f"GEMM transfer to {target}: {shots} shots ({doc['reference']} fixed reference shapes + random), "
                       f"mean of {seeds} seeds, scored on every other target shape",
                 caption=f"method: {doc['method']}\nbaseline: {doc['baseline_method']}\n"
                         f"compare: {pub['methods']} ({pub['numbers']})\n"
                         "noise floor: Vidur's repeated rows of one shape within ±10 % of its median; "
                         "data: Vidur profiling (github.com/microsoft/vidur)",
                 title_justify="left", caption_justify="left")
    cols = ("target", "sources", "within ±10 %", "Spearman", "MAPE %", "0-shot ±10 %", "0-shot MAPE %",
            "baseline ±10 %", "baseline Spearman", "noise floor ±10 %")
    for col in cols:
        grid.add_column(col, justify="left" if col in ("target", "sources") else "right")
    for name, row in doc["targets"].items():
        base, zero, floor = row["baseline"], row["zero_shot"], row["noise_floor"]["within_10pct"]
        few = ("-", "-", "-") if shots == 0 else (f"{row['within_10pct']:.3f}", f"{row['spearman']:.3f}",
                                                  f"{row['mape']:.1f}")
        grid.add_row(name, ",".join(row["source"]), *few, f"{zero['within_10pct']:.3f}", f"{zero['mape']:.1f}",
                     "-" if base is None else f"{base['within_10pct']:.3f}",
                     "-" if base is None else f"{base['spearman']:.3f}", "-" if floor is None else f"{floor:.3f}")
    wide_console().print(grid)


def print_repeat(doc: dict[str, Any], device: str) -> None:
    """`bench repeat`: how well stored kernels re-time now."""
    grid = Table(title=f"{device}: {doc['n']} stored kernels re-timed now ({doc['unstable']} stored unstable, "
                       f"{doc['legacy']} from before rounds)", caption=doc["statistic"], title_justify="left")
    for col in ("kernels", "n", "within ±5 %", "within ±10 %", "median |log ratio|", "ratio p10–p90"):
        grid.add_column(col, justify="left" if col == "kernels" else "right")
    for label, m in (("all", doc), ("stable only", doc["stable_only"]), *doc["per_op"].items()):
        if m["n"]:
            grid.add_row(label, str(m["n"]), f"{m['within_5pct']:.1%}", f"{m['within_10pct']:.1%}",
                         f"{m['median_abs_log_ratio']:.3f}", f"{m['ratio_p10']:.2f}–{m['ratio_p90']:.2f}")
    console = wide_console()
    console.print(grid)
    for ref in doc["references"]:
        console.print(f"  reference: {ref}")


def print_predictors(doc: dict[str, Any], device: str) -> None:
    """`bench predictors`: kernel-latency accuracy per split and op family."""
    rounds = doc["noise_floor"].get("rounds") or {}
    floor = (f"; noise floor: two fastest rounds within ±10 % for {rounds['rounds_within_10pct']:.0%} of kernels"
             if rounds.get("rounds_within_10pct") is not None else "")
    grid = Table(title=f"Kernel latency predictor on {device} ({doc['rows']} kernels, "
                       f"{doc['noise_floor']['dropped_unstable']} unstable left out); median CoV "
                       f"{doc['noise_floor']['median_cov']:.3f}{floor}",
                 caption=f"published: {doc['published']['source']}; re-time kernels with `hwsearch bench repeat`",
                 title_justify="left")
    for col in ("split", "family", "n", "within ±10 %", "within ±5 %", "MAPE %", "Spearman"):
        grid.add_column(col, justify="left" if col in ("split", "family") else "right", no_wrap=True)
    for split, body in doc["splits"].items():
        for fam, m in body["scores"].items():
            if m["n"]:
                rho = "-" if m["spearman"] is None else f"{m['spearman']:.3f}"
                grid.add_row(split, fam, str(m["n"]), f"{m['within_10pct']:.1%}", f"{m['within_5pct']:.1%}",
                             f"{m['mape']:.1f}", rho)
    wide_console().print(grid)


def print_quality(doc: dict[str, Any], plans: int) -> None:
    """`bench quality`: the sensitivity proxy against real quality of random plans."""
    print(
        f"{doc['model']}: {plans} random plans, real {doc['metric_label']} {doc['real_min']:.3f}..{doc['real_max']:.3f} "
        f"(uncompressed {doc['base_quality']:.3f}); proxy Spearman {doc['spearman']:.3f}, MAE {doc['mae']:.4f} "
        f"(additive single-change deltas: Spearman {doc['spearman_additive']:.3f}, MAE {doc['mae_additive']:.4f})"
    )


def print_awq(doc: dict[str, Any]) -> None:
    """`bench awq`: AWQ against plain int4: per group, the layer counts and the whole-model figures."""
    for g, row in doc["groups"].items():
        n = len(row["layers"])
        print(f"{doc['model']} int4 g{g}: AWQ lowers the output divergence of {row['awq_less_sensitive']}/{n} layers "
              f"(equal {row['awq_equal']}, higher {row['awq_more_sensitive']}), calib split (alphas chosen there); "
              f"held out: {row['held_out']['awq_less_sensitive']}/{n} (equal {row['held_out']['awq_equal']}, "
              f"higher {row['held_out']['awq_more_sensitive']})")
        windows = doc.get("whole_model_test_windows")
        for key, fig in row["whole_model"].items():
            if isinstance(fig, dict) and "quality" in fig:
                where = f" ({windows} held-out windows)" if windows and key.startswith("test") else ""
                print(f"  all layers {key}{where}: {doc['metric']} {fig['quality']:.4f} (change {fig['delta']:+.4f}), "
                      f"divergence {fig['divergence']:.5f}")
        noise = row["whole_model"]["test_plain_noise"]
        print(f"  noise floor: plain int4 with its weights jittered by {noise['jitter']:.0%} of their spread "
              f"({noise['seeds']} seeds): change {noise['delta_min']:+.4f} .. {noise['delta_max']:+.4f} "
              f"(spread {noise['spread']:.4f})")


def print_model_latency(doc: dict[str, Any], model: str, device: str, plans: int) -> None:
    """`bench model-latency`: whole-model MAPE per model beside the same plans timed twice."""
    print(f"{model} on {device}, {plans} random plans ({doc['predictor']['detail']}): MAPE {doc['mape']:.1f} %, "
               f"within ±10 % {doc['within_10pct']:.0%} (kernel sum alone: MAPE {doc['kernel_sum_only']['mape']:.1f} %); "
               f"noise floor (the same plans timed twice): MAPE {doc['noise_floor_mape']:.1f} %")
    state = doc.get("machine_state")
    if state:
        raw = state["raw"]
        noise = "-" if raw["noise_floor_mape"] is None else f"{raw['noise_floor_mape']:.1f} %"
        lo, mid, hi = state["p10_p50_p90"]
        print(f"  each plan judged at the machine state it was timed in (its uncompressed model beside it: p10 {lo:.2f}, "
              f"p90 {hi:.2f} of the median); as timed, drift included: MAPE {raw['mape']:.1f} %, noise floor {noise}")
    for name, m in doc["per_model"].items():
        rho = "-" if m["spearman"] is None else f"{m['spearman']:.2f}"
        print(f"  {name}: {m['plans']} plans, MAPE {m['mape']:.1f} %, Spearman {rho}, worst under-prediction "
                   f"{m['worst_under_prediction_pct']:.1f} %; timed twice: MAPE {m['noise_floor_mape']:.1f} %")
    unseen = doc.get("unseen_models")
    if unseen:
        ways = unseen.get("chosen_without") or {}
        print("  a model left out (fitted and chosen on the others' plans, anchored): MAPE "
              + ", ".join(f"{m} {v:.1f} % ({ways.get(m, doc['composition'])})" for m, v in doc["leave_one_model_out"].items())
              + f"; stored for models no plan timed: {unseen['composition']}")
