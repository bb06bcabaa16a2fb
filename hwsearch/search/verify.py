"""Verification: the chosen plans built with `apply_plan` and timed end to end on the device.

A plan's predicted latency came from kernel predictions plus the device's overhead term; here
the real compressed module is timed with the profiler's harness (blocks, interleaved rounds,
median of the round medians) at the device's thread count, on the device's own machine: in the runner when
that is the device's host, else as a Ray task on the node offering the resource `device:NAME`.
Quality, where the job has it, is measured for real on the held-out split. Predicted and
measured figures are stored side by side (`verifications`), and the measurements can refit
the device's overhead term.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Verification
from hwsearch.db.ops import insert_ignore
from hwsearch.errors import HwsearchError
from hwsearch.search.accuracy import stood_behind
from hwsearch.spaces.model import ModelSpec
from hwsearch.spaces.plan import Plan

VIT_CONFIGS = ("vit_tiny", "vit_small", "vit_base", "vit_large", "digits_vit")
DECODERS = ("tiny_llama", "llama3_8b")
TIMED_MODELS = (*VIT_CONFIGS, "minilm", *DECODERS)


def decoder_model(model: ModelSpec) -> tuple[Any, Any]:
    """A catalogue decoder and what one timed call runs: in decode mode one step of `tokens` new
    tokens over a KV cache holding `context` (`DecodeStep`: the latency a decoder's search scores
    is ms per generated token at that context), in prefill mode a causal pass over `tokens`.
    tiny_llama has its trained weights, llama3_8b seeded ones at its real shapes."""
    import torch

    from hwsearch.kernels.kvcache import DecodeStep
    from hwsearch.kernels.models import LlamaDecoder
    from hwsearch.spaces.catalog import LLAMA3_8B

    if model.name.partition(":")[0] == "tiny_llama":
        from hwsearch.search.quality_tasks import load_tiny_llama

        module, x = load_tiny_llama().eval(), torch.zeros(1, model.tokens, dtype=torch.long)
    else:  # the spec is the stack of blocks alone (no embedding, no head): so is what is timed
        torch.manual_seed(0)
        dtype = torch.bfloat16 if model.dtype == "bf16" else torch.float32
        module = LlamaDecoder(LLAMA3_8B, int(model.options["blocks"])).to(dtype).eval()
        x = torch.randn(1, model.tokens, LLAMA3_8B.dim, dtype=dtype)
    if model.options.get("mode") == "decode":
        return module, DecodeStep(x, int(model.options.get("context") or 0))
    return module, x


def prefill_of(model: ModelSpec) -> ModelSpec | None:
    """The prefill whose time is a decode spec's time to first token (TTFT): the same catalogue
    decoder over its `context` prompt tokens at once (`llama_spec` with tokens=context); None for
    anything but a decode step over a context longer than a decode step."""
    from hwsearch.spaces.catalog import DECODE_MAX_TOKENS, OPTIONS, get_model

    name, context = model.name.partition(":")[0], int(model.options.get("context") or 0)
    if name not in DECODERS or model.options.get("mode") != "decode" or context <= DECODE_MAX_TOKENS:
        return None
    keep = {k: int(v) for k, v in model.options.items() if k in OPTIONS[name] and k not in ("tokens", "context")}
    return get_model(name, **keep, tokens=context)


def prompt_of(step: Any) -> Any:
    """A decode step's prompt as one prefill (`DecodeStep` over empty caches): `context` tokens of
    the step's kind of input, appended into fresh caches in the plan's formats. None for inputs
    that are not a decode step over a context."""
    from hwsearch.kernels.kvcache import DecodeStep

    if not isinstance(step, DecodeStep) or step.context <= 0:
        return None
    x = step.inputs
    return DecodeStep(x.new_zeros((x.shape[0], step.context, *x.shape[2:])), 0)


def torch_model(model: ModelSpec, module: Any = None, example_inputs: Any = None) -> tuple[Any, Any]:
    """(module, its inputs) to time: the given module, a catalogue ViT with seeded weights, the
    packaged MiniLM with its tokenised sentences (a dict of keyword inputs), or a catalogue
    decoder (`decoder_model`: a decode step over its KV cache, or a prefill)."""
    import torch

    if module is not None:
        return module.eval(), example_inputs
    name = model.name.partition(":")[0]
    if name == "minilm":
        from hwsearch.search.quality_tasks import load_minilm

        found = load_minilm()
        return found.model.eval(), dict(found.batch)
    if name in DECODERS:
        return decoder_model(model)
    if name not in VIT_CONFIGS:
        raise HwsearchError(f"end-to-end timing builds {', '.join(TIMED_MODELS)}; got {name!r}; accepted: one of "
                            "those or a SearchSpec with a torch model")
    from hwsearch.kernels.models import ViT
    from hwsearch.spaces import catalog

    cfg = getattr(catalog, name.upper())
    torch.manual_seed(0)
    return ViT(cfg).eval(), torch.randn(1, cfg.channels, cfg.image, cfg.image)


def time_plans(model: ModelSpec, plans: Sequence[Plan], threads: int, backend: str = "cpu",
               module: Any = None, example_inputs: Any = None, dispatch: Any = None,
               layers: bool = False, prefill: bool = False) -> list[dict[str, Any]]:
    """End-to-end latency (ms) of each plan built on the real module with the device's dispatch:
    the profiler's protocol (blocks, rounds interleaved across the plans, stability gate). With
    `layers`, each plan's layers are also timed in place (`layers_ms`: name -> ms, the floor of
    `profilers.inmodel.layer_times`), which is what a refit adds to the model's in-place table.
    With `prefill`, a decoder's decode step is joined by its time to first token (`prefill_ms`:
    the whole `context`-token prompt in one pass into fresh caches in the plan's formats,
    `prompt_of`), timed under `PREFILL_PROTOCOL`: a prompt of thousands of tokens takes seconds."""
    import torch

    from hwsearch.kernels.apply import apply_plan, forward
    from hwsearch.kernels.registry import torch_device
    from hwsearch.profilers.timing import MODEL_PROTOCOL, PREFILL_PROTOCOL, time_items

    base, x = torch_model(model, module, example_inputs)
    prompt = prompt_of(x) if prefill else None
    first: list[Any] = [None] * len(plans)
    with torch.inference_mode():
        # AWQ layers are calibrated on the timing input: their scales' values do not change the time
        built = [apply_plan(base, plan, model, backend=backend, dispatch=dispatch, calibration=x).eval() for plan in plans]
        timings = time_items([[lambda m=m: forward(m, x)] for m in built], threads=threads,
                             device=torch_device(backend), protocol=MODEL_PROTOCOL)
        if prompt is not None:
            first = time_items([[lambda m=m: forward(m, prompt)] for m in built], threads=threads,
                               device=torch_device(backend), protocol=PREFILL_PROTOCOL)
    inside: list[dict[str, float] | None] = [None] * len(built)
    if layers and backend == "cpu":  # hooks time a CPU layer; a GPU layer would need events
        from hwsearch.profilers.inmodel import layer_times

        inside = [layer_times(m, x, list(model.layer_names), threads=threads) for m in built]
    del built
    return [{"measured_ms": t.median_us / 1e3, "p10_ms": t.p10_us / 1e3, "p90_ms": t.p90_us / 1e3, "cov": t.cov,
             "spread": t.spread, "unstable": t.unstable, **({"layers_ms": ms} if ms is not None else {}),
             **({"prefill_ms": f.median_us / 1e3, "prefill_spread": f.spread} if f is not None else {})}
            for t, ms, f in zip(timings, inside, first, strict=True)]


def time_on_device(device: str, fingerprint: dict[str, Any], model: ModelSpec, plans: Sequence[Plan],
                   module: Any = None, example_inputs: Any = None, dispatch: Any = None,
                   layers: bool = False, prefill: bool = False) -> list[dict[str, Any]]:
    """Time here when this is the device's host, else on the Ray node offering `device:NAME`."""
    threads = int(fingerprint.get("threads") or 1)
    backend = fingerprint.get("backend", "cpu")
    if fingerprint.get("host") == socket.gethostname():
        return time_plans(model, plans, threads, backend, module, example_inputs, dispatch, layers, prefill)
    import ray

    resource = f"device:{device}"
    if not ray.is_initialized() or not any(resource in n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")):
        raise HwsearchError(
            f"device {device!r} is not this machine ({socket.gethostname()}) and no Ray node offers {resource}; "
            f"accepted: run on the device's host, or start a Ray node there with --resources '{{\"{resource}\": 1}}'"
        )
    task = ray.remote(time_plans).options(resources={resource: 1}, num_cpus=0)
    return ray.get(task.remote(model, list(plans), threads, backend, module, example_inputs, dispatch, layers, prefill))


def store_verifications(engine: Engine, job_id: int, device_id: int, rows: Sequence[dict[str, Any]]) -> int:
    """One transaction: a row per verified plan (trial, plan, predicted vs measured); a trial the
    job already verified on the device (an earlier attempt) keeps its row. Returns rows stored."""
    with session_scope(engine) as s:
        return insert_ignore(s, Verification, [
            {"job_id": job_id, "trial_number": r["trial"], "device_id": device_id, "plan": r["plan"],
             "predicted_ms": r.get("predicted_ms"), "measured_ms": r["measured_ms"],
             "measured_p10_ms": r.get("p10_ms"), "measured_p90_ms": r.get("p90_ms")} for r in rows])


def verifications(engine: Engine, job_id: int) -> list[dict[str, Any]]:
    with session_scope(engine) as s:
        rows = s.scalars(select(Verification).where(Verification.job_id == job_id).order_by(Verification.id)).all()
        return [{"trial": r.trial_number, "predicted_ms": r.predicted_ms, "measured_ms": r.measured_ms,
                 "p10_ms": r.measured_p10_ms, "p90_ms": r.measured_p90_ms, "plan": r.plan} for r in rows]


def summary(rows: Sequence[dict[str, Any]], max_latency_ms: float | None) -> dict[str, Any]:
    """Prediction error and how many chosen plans break the latency constraint when measured."""
    if not rows:
        return {"plans": 0}
    scored = [r for r in rows if r.get("predicted_ms") is not None]
    pred = np.array([stood_behind(r) for r in scored], dtype=float)
    meas = np.array([r["measured_ms"] for r in scored], dtype=float)
    out: dict[str, Any] = {"plans": len(rows)}
    if scored:
        err = np.abs(pred - meas) / meas
        out.update(mape=float(100 * err.mean()), within_10pct=float(np.mean(err <= 0.10)))
        last = max(r.get("round", 1) for r in rows)
        if last > 1:  # what the job stands behind after its refits: the plans of its last round
            final = np.array([r.get("round", 1) == last for r in scored])
            out["last_round"] = {"round": int(last), "plans": int(final.sum()), "mape": float(100 * err[final].mean()),
                                 "within_10pct": float(np.mean(err[final] <= 0.10))}
    timed = [r["prefill_ms"] for r in rows if r.get("prefill_ms")]
    if timed:  # a decode search's time to first token: measured, and predicted beside it where calibrated
        out["prefill_ms"] = [float(min(timed)), float(max(timed))]
        first = [r for r in rows if r.get("prefill_ms") and r.get("predicted_prefill_ms")]
        if first:
            ttft = np.array([[r["predicted_prefill_ms"], r["prefill_ms"]] for r in first], dtype=float)
            out.update(prefill_mape=float(100 * np.mean(np.abs(ttft[:, 0] - ttft[:, 1]) / ttft[:, 1])),
                       prefill_measured_share=float(np.mean([r.get("prefill_measured_share", 0.0) for r in first])))
    if max_latency_ms is not None:
        broken = sum(1 for r in rows if r["measured_ms"] > max_latency_ms)
        out.update(max_latency_ms=max_latency_ms, violations=broken, violation_rate=broken / len(rows))
    return out
