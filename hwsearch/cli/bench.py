"""`hwsearch bench ...`: one command per benchmark; each prints its report, or one JSON document with --json."""

from __future__ import annotations

import typer

from hwsearch.cli.common import DB_OPTION, BenchProgress, open_engine, show
from hwsearch.cli.root import app

bench_app = typer.Typer(help="Benchmarks: each prints numbers (use --json for one JSON document).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("kernels")
def bench_kernels(
    device: str = typer.Option(..., "--device", help="A stored device name (see `hwsearch devices`)."),
    threads: int | None = typer.Option(None, "--threads", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Measured speed-ups over bf16 dense for a ViT-B MLP and an LLM decode GEMM."""
    from hwsearch.bench.kernels import run
    from hwsearch.bench.report import print_kernels
    from hwsearch.profilers.threads import check_threads

    check_threads(threads)
    doc = run(open_engine(db), device, threads=threads)
    show(doc, as_json, lambda: print_kernels(doc, device))


@bench_app.command("help")
def bench_help(
    data: str | None = typer.Option(None, "--data", help="HELP data folder (default: help/ in HWSEARCH_EXTERNAL_DATA, else in external/ of the data folder)."),
    space: str = typer.Option("nasbench201", "--space", help="nasbench201 | fbnet | ofa"),
    train_devices: str | None = typer.Option(None, "--train-devices", help="Comma list (default: HELP's meta-train devices)."),
    valid_devices: str | None = typer.Option(None, "--valid-devices", help="Comma list for checkpoint selection (default: HELP's; '' for none)."),
    test_devices: str | None = typer.Option(None, "--test-devices", help="Comma list (default: HELP's meta-test devices)."),
    shots: int = typer.Option(10, "--shots", help="Labelled architectures of each test device."),
    seeds: int = typer.Option(5, "--seeds", help="Draws of the adaptation samples."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """HELP's few-shot latency benchmark for the meta-learned predictor (Spearman and ±10 %)."""
    from pathlib import Path

    from hwsearch.bench.help import run_help
    from hwsearch.bench.report import print_help
    from hwsearch.config import external_data_dir

    path = Path(data) if data else external_data_dir() / "help"
    split = (lambda s: None if s is None else s.split(","))  # noqa: E731
    with BenchProgress(not as_json) as progress:
        doc = run_help(path, space, split(train_devices), split(valid_devices), split(test_devices),
                       shots=shots, seeds=seeds, progress=progress)
    show(doc, as_json, lambda: print_help(doc))


@bench_app.command("gemm-transfer")
def bench_gemm_transfer(
    data: str | None = typer.Option(None, "--data", help="Vidur gemm_fp16.csv (default: vidur/gemm_fp16.csv in HWSEARCH_EXTERNAL_DATA, else in external/ of the data folder)."),
    source: str = typer.Option("", "--source", help="Comma list of source GPUs (default: every GPU but the target)."),
    target: str = typer.Option("h100", "--target", help="Target GPU, or 'all': each GPU in turn, one table."),
    shots: int = typer.Option(10, "--shots", help="Labelled target shapes (the reference shapes count against them); 0: spec sheet only."),
    seeds: int = typer.Option(5, "--seeds", help="Draws of the non-reference shots."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also score the HELP-style meta-predictor on shape features (slower)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Vidur fp16 GEMMs: learn on source GPUs, predict the target from its spec sheet and a few shapes."""
    from pathlib import Path

    from hwsearch.bench.gemm_transfer import run_gemm_transfer
    from hwsearch.bench.report import print_gemm_transfer
    from hwsearch.config import external_data_dir

    path = Path(data) if data else external_data_dir() / "vidur" / "gemm_fp16.csv"
    with BenchProgress(not as_json) as progress:
        doc = run_gemm_transfer(path, source.split(","), target, shots=shots, seeds=seeds, baseline=baseline,
                                progress=progress)
    show(doc, as_json, lambda: print_gemm_transfer(doc, target, shots, seeds))


@bench_app.command("repeat")
def bench_repeat(
    device: str = typer.Option(..., "--device", help="A stored device profiled on this machine."),
    sample: int = typer.Option(100, "--sample", min=1, help="Stored kernels to re-time."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Re-time a sample of stored kernels now: how well the device's measurements repeat."""
    from hwsearch.bench.repeat import run as run_repeat
    from hwsearch.bench.report import print_repeat
    from hwsearch.profilers.progress import progress_bar

    with progress_bar(not as_json) as bar:
        task = bar.add_task(f"re-timing {device}", total=sample)
        doc = run_repeat(open_engine(db), device, sample=sample, seed=seed,
                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    show(doc, as_json, lambda: print_repeat(doc, device))


@bench_app.command("predictors")
def bench_predictors(
    device: str = typer.Option(..., "--device", help="A stored device name."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random split."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Kernel-latency accuracy per op family: random and shape-extrapolation splits, noise floor."""
    from hwsearch.bench.predictors import run as run_bench
    from hwsearch.bench.report import print_predictors

    doc = run_bench(open_engine(db), device, seed=seed)
    show(doc, as_json, lambda: print_predictors(doc, device))


@bench_app.command("quality")
def bench_quality_cmd(
    model: str = typer.Option("digits_vit", "--model", help="A model with weights: digits_vit, minilm or tiny_llama."),
    plans: int = typer.Option(50, "--plans", help="Random plans to apply and score."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random plans."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Sensitivity proxy vs. real quality of random plans (Spearman, MAE)."""
    from hwsearch.bench.quality import bench_quality
    from hwsearch.bench.report import print_quality

    with BenchProgress(not as_json) as progress:
        doc = bench_quality(model, plans=plans, seed=seed, progress=progress)
    show(doc, as_json, lambda: print_quality(doc, plans))


@bench_app.command("awq")
def bench_awq_cmd(
    model: str = typer.Option("digits_vit", "--model", help="A model with weights and calibration data: digits_vit, minilm or tiny_llama."),
    group_sizes: list[int] = typer.Option([128, 32], "--group-size", help="int4 group sizes to compare (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """AWQ int4 vs plain int4: per-layer sensitivity (calib) and the whole model, per group size."""
    from hwsearch.bench.awq import bench_awq
    from hwsearch.bench.report import print_awq

    with BenchProgress(not as_json) as progress:
        doc = bench_awq(model, tuple(group_sizes), progress=progress)
    show(doc, as_json, lambda: print_awq(doc))


@bench_app.command("model-latency")
def bench_model_latency(
    device: str = typer.Option(..., "--device", help="A stored device profiled on this machine."),
    model: str = typer.Option("vit_base", "--model", help="A catalogue ViT (vit_tiny, vit_small, vit_base, digits_vit) or minilm, or several joined by commas: the overhead is then fitted across them (it separates per-pass and per-kernel costs)."),
    plans: int = typer.Option(20, "--plans", help="Random plans to build, time and predict."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random plans."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Threads (default: the device's)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Whole-model latency: random plans built with apply_plan, timed end to end vs predicted."""
    from hwsearch.bench.model_latency import run as run_bench
    from hwsearch.bench.report import print_model_latency
    from hwsearch.profilers.threads import check_threads

    check_threads(threads)
    with BenchProgress(not as_json) as progress:
        doc = run_bench(open_engine(db), device, model, plans=plans, seed=seed, threads=threads, progress=progress)
    show(doc, as_json, lambda: print_model_latency(doc, model, device, plans))


@bench_app.command("search")
def bench_search(
    device: str = typer.Option(..., "--device", help="A stored device with a predictor."),
    model: str = typer.Option("vit_base", "--model", help="A model, or a comma list: the picks of all are pooled."),
    trials: int = typer.Option(500, "--trials"),
    seeds: int = typer.Option(3, "--seeds"),
    samplers: str = typer.Option("nsga2,tpe", "--samplers", help="Comma list of samplers to compare with random."),
    objectives: str = typer.Option("latency,size", "--objectives", help="Two objectives (the exact reference is 2-D)."),
    verify: int = typer.Option(3, "--verify", help="Plans per budget timed on the device for the violation rate."),
    profile_missing: bool = typer.Option(True, "--profile-missing/--no-profile-missing",
                                         help="On the device's machine, measure first what the space scores and no measurement covers."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Samplers vs random at equal trials against the exact reference front of a reduced space."""
    from hwsearch.bench.search import print_report, run_models

    doc = run_models(open_engine(db), device, [m.strip() for m in model.split(",") if m.strip()], trials=trials, seeds=seeds,
                     samplers=[s.strip() for s in samplers.split(",") if s.strip()],
                     objectives=[o.strip() for o in objectives.split(",")], verify=verify, show_progress=not as_json,
                     profile_missing=profile_missing)
    show(doc, as_json, lambda: print_report(doc))
