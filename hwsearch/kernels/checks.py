"""Conformance checks for backends and kernels (in the spirit of scikit-learn's `check_estimator`).

What every registered implementation of a backend must do, checked on tiny shapes that reach
each of them:

* **outputs**: it computes its spec, matching the fp64 reference within the format's tolerance;
* **coverage**: every available implementation is reached by some checked shape;
* **native flags are honest**: no implementation claims a fast path for a format the backend's
  capability function says the device lacks;
* **capabilities are consistent**: the capability dict has the shape spaces read, and every
  format (dense) and N:M pattern the search space would call native is run natively by the
  implementation the registry selects for it on some checked shape.

The tests run `check_backend` over every registered backend this machine can run, and the
profiling worker's self-check (`hwsearch worker`) runs it before a node joins a cluster. Each
failure is one line naming the kernel and the spec.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hwsearch.errors import HwsearchError
from hwsearch.kernels import registry
from hwsearch.kernels.inputs import make_inputs, reference, tolerance
from hwsearch.kernels.specs import AttentionSpec, ElementwiseSpec, LinearSpec, NormSpec, OpSpec, TomeMergeSpec
from hwsearch.spaces.formats import FLOAT_DTYPES, FORMATS, KV_FORMATS, KV_QUANT_FORMATS
from hwsearch.spaces.knobs import Capabilities


def check_specs() -> list[OpSpec]:
    """Tiny shapes that reach every registered implementation (formats, N:M, low rank, other ops)."""
    specs: list[OpSpec] = []
    for fmt in FORMATS:
        specs += [LinearSpec(9, 256, 48, fmt), LinearSpec(1, 256, 40, fmt), LinearSpec(9, 256, 48, fmt, sparsity="2:4"),
                  LinearSpec(5, 256, 64, fmt, rank=32)]
    specs += [LinearSpec(3, 256, 24, "int4", group_size=32), LinearSpec(3, 256, 24, "int4", group_size=64)]
    for dtype in FLOAT_DTYPES:
        specs += [AttentionSpec(9, 2, 16, dtype), AttentionSpec(1, 4, 16, dtype, kv_tokens=20, causal=True, kv_heads=2),
                  *(AttentionSpec(1, 4, 16, dtype, kv_tokens=80, kv_heads=2, kv_format=f,
                                  kv_group=32 if f in KV_QUANT_FORMATS else None) for f in KV_FORMATS),
                  NormSpec("layernorm", 6, 64, dtype), NormSpec("rmsnorm", 6, 64, dtype),
                  ElementwiseSpec("gelu", 6, 64, dtype), ElementwiseSpec("silu_mul", 6, 64, dtype),
                  ElementwiseSpec("add", 6, 64, dtype), ElementwiseSpec("rope", 6, 64, dtype),
                  TomeMergeSpec(33, 32, 8, dtype)]
    return specs


@dataclass
class KernelCheck:
    backend: str
    kernels: list[str]  # implementations checked
    cases: int  # (spec, implementation) pairs compared against the reference


def _dtype_of(spec: OpSpec) -> str:
    """The format (a linear; an attention's KV cache) or dtype (the other ops) a spec's tolerance
    and fast path go by."""
    if isinstance(spec, AttentionSpec) and spec.kv_format in KV_QUANT_FORMATS:
        return spec.kv_format
    return spec.format if isinstance(spec, LinearSpec) else spec.dtype  # type: ignore[attr-defined]


def check_output(kernel: registry.Kernel, spec: OpSpec, device: str = "cpu", seed: int = 1) -> float:
    """Run `kernel` on `spec` and compare with the fp64 reference; returns the relative error."""
    params, acts = make_inputs(spec, seed=seed, device=device)
    try:
        with torch.inference_mode():
            got = registry.build(kernel, spec, params, acts)()
            expected = reference(spec, params, acts)
        err = ((got.double() - expected).norm() / expected.norm()).item()
    except Exception as exc:  # noqa: BLE001 - any failure means this kernel cannot be used here
        raise HwsearchError(
            f"{kernel.name} fails on {spec.describe()} ({type(exc).__name__}: {exc}); "
            "accepted: a machine whose torch install runs every kernel (see `hwsearch profile --local`)"
        ) from exc
    tol = tolerance(spec)
    if not err <= tol:
        raise HwsearchError(
            f"{kernel.name} gives wrong results on {spec.describe()} (relative error {err:.3g} > {tol}); "
            "accepted: a machine whose kernels match the fp64 reference"
        )
    if got.shape != expected.shape or got.dtype != acts[0].dtype:
        raise HwsearchError(
            f"{kernel.name} returns {tuple(got.shape)} {got.dtype} on {spec.describe()}; "
            f"accepted: {tuple(expected.shape)} {acts[0].dtype}, like the reference and the activation"
        )
    return err


def check_outputs(backend: str, specs: Sequence[OpSpec] | None = None) -> tuple[set[str], int]:
    """Every implementation of each spec against the reference: (kernels reached, cases run)."""
    device = registry.torch_device(backend)
    checked: set[str] = set()
    cases = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's deprecation notes about quantized tensors
        for spec in check_specs() if specs is None else specs:
            for kernel in registry.implementations(spec, backend):
                check_output(kernel, spec, device)
                checked.add(kernel.name)
                cases += 1
    return checked, cases


def check_coverage(backend: str, checked: set[str]) -> None:
    """Every available implementation of `backend` was among those `checked`."""
    missing = sorted(k.name for k in registry.all_kernels()
                     if k.backend == backend and k.available() and k.name not in checked)
    if missing:
        raise HwsearchError(f"the check reached no shape for {', '.join(missing)}; accepted: kernels the check covers")


def check_native(backend: str, specs: Sequence[OpSpec] | None = None) -> None:
    """No implementation claims a fast path for a format or dtype the capabilities flag as missing."""
    caps = registry.capabilities(backend)
    for spec in check_specs() if specs is None else specs:
        if caps.get(_dtype_of(spec)):  # a format the capabilities do not name is no fast path
            continue
        for kernel in registry.implementations(spec, backend):
            if kernel.native(spec, caps):
                raise HwsearchError(
                    f"{kernel.name} claims a fast path for {spec.describe()}, but {backend}'s capabilities have "
                    f"{_dtype_of(spec)}=False; accepted: native only where the device runs it fast"
                )


def check_capabilities(backend: str, specs: Sequence[OpSpec] | None = None) -> None:
    """The capability dict has the shape spaces read, and what a search space built from it calls
    native runs natively here."""
    caps = registry.capabilities(backend)
    if not isinstance(caps.get("available"), bool):
        raise HwsearchError(f"{backend}'s capabilities {caps!r} have no boolean 'available'; accepted: a dict with one")
    if not caps["available"]:
        return
    flagged = [f for f in (*FORMATS, "nm") if f in caps and not isinstance(caps[f], bool)]
    if flagged:
        raise HwsearchError(f"{backend}'s capabilities give {flagged[0]}={caps[flagged[0]]!r}; accepted: True or False")
    space = Capabilities.from_dict(caps, backend)
    linear = [s for s in (check_specs() if specs is None else specs) if isinstance(s, LinearSpec) and s.rank is None]
    claims = [(f"{fmt} (dense)", [s for s in linear if s.format == fmt and s.nm is None]) for fmt in sorted(space.formats)]
    claims += [(f"{p} sparsity", [s for s in linear if s.sparsity == p]) for p in sorted(space.sparsities - {"dense"})]
    for what, candidates in claims:
        runnable = [s for s in candidates if _has_implementation(s, backend)]
        if runnable and not any(registry.select(s, backend).native(s, caps) for s in runnable):
            raise HwsearchError(
                f"{backend}'s capabilities make {what} native for the search, but no implementation runs "
                f"{runnable[0].describe()} natively; accepted: capabilities the kernels bear out"
            )


def _has_implementation(spec: OpSpec, backend: str) -> bool:
    """Whether `backend` has any implementation of `spec`."""
    return bool(registry.implementations(spec, backend))


def check_backend(backend: str, specs: Sequence[OpSpec] | None = None) -> KernelCheck:
    """All the checks above for one backend this machine can run."""
    registry.require_backend(backend)
    checked, cases = check_outputs(backend, specs)
    check_coverage(backend, checked)
    check_native(backend, specs)
    check_capabilities(backend, specs)
    return KernelCheck(backend, sorted(checked), cases)
