"""The kernel registry: backends, and (op, format, sparsity, backend) → an implementation.

A backend (a device kind: "cpu", "cuda") joins with `register_backend` from its own module,
with its capability function (what the device behind it runs fast, read from the hardware) and
the torch device its tensors live on. The modules in `BACKEND_MODULES` (the one list of them)
are imported on first use, so this module imports none of them; each imports this one to
register itself and its kernels.

A `Kernel` is one implementation of one op on one backend. It
says which specs it serves (`supports`) and whether it is a real fast path on a given device
(`native`) — an implementation that emulates a format the device cannot run fast is still
registered, measured and used, but reported with native = False.

`prepare` does the untimed work (quantising, packing, pruning weights); `run` is the hot path the
profiler times and the compressed modules call.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from hwsearch.errors import HwsearchError, unknown
from hwsearch.kernels.specs import LinearSpec, OpSpec

# Modules that register backends and kernels on import; missing ones (optional backends) are skipped.
BACKEND_MODULES: tuple[str, ...] = ("hwsearch.kernels.cpu", "hwsearch.kernels.cuda", "hwsearch.kernels.triton")

State = dict[str, torch.Tensor]


class Kernel:
    """One implementation of one op on one backend."""

    name: ClassVar[str] = ""
    op: ClassVar[str] = ""
    backend: ClassVar[str] = "cpu"
    priority: ClassVar[int] = 0  # higher wins among native (or among emulated) candidates

    def supports(self, spec: OpSpec) -> bool:
        """Whether this implementation computes `spec` at all."""
        return spec.op == self.op

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        """Whether `spec` runs on a real fast path of a device with capabilities `caps`."""
        return True

    def available(self) -> bool:
        """Whether this process can run it (a CUDA device, a Triton install ...)."""
        return True

    def prepare(self, spec: OpSpec, params: State) -> State:
        """Untimed: turn fp32 parameters into what `run` consumes."""
        return dict(params)

    def run(self, spec: OpSpec, state: State, *acts: torch.Tensor) -> torch.Tensor:
        raise HwsearchError(f"kernel {self.name} has no run method")

    def describe_config(self, spec: OpSpec) -> dict[str, Any]:
        """Launch configuration worth recording with a measurement (autotuned tiles, padding)."""
        return {}

    def __repr__(self) -> str:
        return f"<Kernel {self.name}>"


class LowRank(Kernel):
    """A low-rank linear: the two factor linears, each on its own best kernel."""

    op = "linear"

    def __init__(self, first: Kernel, second: Kernel):
        self.first, self.second = first, second
        self.backend = first.backend  # type: ignore[misc]
        self.name = f"lowrank[{first.name}]" if first.name == second.name else f"lowrank[{first.name},{second.name}]"  # type: ignore[misc]

    def supports(self, spec: OpSpec) -> bool:
        return isinstance(spec, LinearSpec) and spec.rank is not None

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        a, b = spec.factors()  # type: ignore[attr-defined]
        return self.first.native(a, caps) and self.second.native(b, caps)

    def prepare(self, spec: OpSpec, params: State) -> State:
        a, b = spec.factors()  # type: ignore[attr-defined]
        state = {f"a.{k}": v for k, v in self.first.prepare(a, {"weight": params["weight_a"]}).items()}
        second = {"weight": params["weight_b"]}
        if params.get("bias") is not None:
            second["bias"] = params["bias"]
        state.update({f"b.{k}": v for k, v in self.second.prepare(b, second).items()})
        return state

    def describe_config(self, spec: OpSpec) -> dict[str, Any]:
        a, b = spec.factors()  # type: ignore[attr-defined]
        return {k: v for k, v in (("first", self.first.describe_config(a)), ("second", self.second.describe_config(b))) if v}

    def run(self, spec: OpSpec, state: State, *acts: torch.Tensor) -> torch.Tensor:
        a, b = spec.factors()  # type: ignore[attr-defined]
        sa = {k[2:]: v for k, v in state.items() if k.startswith("a.")}
        sb = {k[2:]: v for k, v in state.items() if k.startswith("b.")}
        return self.second.run(b, sb, self.first.run(a, sa, *acts))


@dataclass(frozen=True)
class Backend:
    """A device kind: its capability function and the torch device its tensors live on.

    `capabilities()` returns a dict with ``available`` and, where available, each format flagged
    as a real fast path or not, plus ``nm`` for 2:4 (``{"fp32": True, "fp8": False, "nm": False}``,
    what `hwsearch.spaces.knobs.Capabilities.from_dict` reads), and whatever the backend's own
    kernels decide by (a GPU's ``sm``). `missing` is what is said when the backend is asked for on
    a machine that cannot run it.
    """

    name: str
    capabilities: Callable[[], dict[str, Any]]
    torch_device: str = "cpu"
    missing: str = "this machine cannot run it"


_BACKENDS: dict[str, Backend] = {}
_KERNELS: list[Kernel] = []


def register_backend(backend: Backend) -> Backend:
    """Add a backend (its module calls this on import); a name registered twice is an error."""
    if backend.name in _BACKENDS:
        raise HwsearchError(f"backend {backend.name!r} is registered twice")
    _BACKENDS[backend.name] = backend
    capabilities.cache_clear()
    return backend


def unregister_backend(name: str) -> None:
    """Remove a backend and its kernels (for tests that register a toy one)."""
    _BACKENDS.pop(name, None)
    _KERNELS[:] = [k for k in _KERNELS if k.backend != name]
    capabilities.cache_clear()


def register(kernel: Kernel | type[Kernel]) -> Kernel | type[Kernel]:
    """Add an implementation (usable as a class decorator)."""
    instance = kernel() if isinstance(kernel, type) else kernel
    if any(k.name == instance.name for k in _KERNELS):
        raise HwsearchError(f"kernel {instance.name!r} is registered twice")
    _KERNELS.append(instance)
    return kernel


@functools.cache
def _load_backends() -> None:
    for module in BACKEND_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def backends() -> tuple[str, ...]:
    """The registered backend names, in registration order."""
    _load_backends()
    return tuple(_BACKENDS)


def get_backend(name: str) -> Backend:
    """A backend by name; an unknown one is one line listing the registered ones."""
    _load_backends()
    if name not in _BACKENDS:
        raise unknown("backend", name, tuple(_BACKENDS))
    return _BACKENDS[name]


def torch_device(backend: str) -> str:
    """The torch device a backend's tensors live on ("cpu", "cuda")."""
    return get_backend(backend).torch_device


def require_backend(backend: str) -> Backend:
    """A registered backend this machine can run; else one line saying why and what is accepted."""
    found = get_backend(backend)
    if not capabilities(backend).get("available"):
        runnable = [b for b in _BACKENDS if capabilities(b).get("available")]
        raise HwsearchError(f"backend {backend!r} asked for but {found.missing}; accepted: "
                            + ", ".join(f"--backend {b}" for b in runnable))
    return found


def all_kernels() -> list[Kernel]:
    _load_backends()
    return list(_KERNELS)


def get(name: str) -> Kernel:
    """A kernel by name (as stored with a measurement)."""
    kernels = all_kernels()
    for k in kernels:
        if k.name == name:
            return k
    if name.startswith("lowrank["):
        inner = name[len("lowrank[") : -1].split(",")
        first = get(inner[0])
        return LowRank(first, get(inner[-1]))
    raise unknown("kernel implementation", name, [k.name for k in kernels])


@functools.cache
def capabilities(backend: str) -> dict[str, Any]:
    """What the device behind `backend` can run fast, read from the hardware (once per process),
    with `kv_cache`: the KV-cache formats its kernels read (`kv_cache_formats`)."""
    caps = get_backend(backend).capabilities()
    return {**caps, "kv_cache": kv_cache_formats(backend, caps)} if caps.get("available") else caps


def kv_cache_formats(backend: str, caps: dict[str, Any]) -> dict[str, bool]:
    """KV-cache format -> whether decode attention over such a cache runs natively on a device
    with capabilities `caps`, for every format some kernel of `backend` reads (a device read from
    its stored fingerprint gets the same answer as on its host)."""
    from hwsearch.kernels.specs import AttentionSpec
    from hwsearch.spaces.formats import FLOAT_DTYPES, KV_FORMATS

    out: dict[str, bool] = {}
    compute = "bf16" if caps.get("bf16") else "fp32"  # a quantised cache read into a float the device runs fast
    for fmt in KV_FORMATS:
        dtype = fmt if fmt in FLOAT_DTYPES else compute  # a float cache in the model's own dtype
        spec = AttentionSpec(1, 8, 128, dtype, kv_tokens=1024, kv_heads=8, kv_format=fmt)
        found = [k for k in all_kernels() if k.backend == backend and k.supports(spec)]
        if found:
            out[fmt] = any(k.native(spec, caps) for k in found)
    return out


def implementations(spec: OpSpec, backend: str = "cpu") -> list[Kernel]:
    """Every available implementation of `spec` on `backend`, best first."""
    caps = capabilities(backend)
    if isinstance(spec, LinearSpec) and spec.rank is not None:
        a, b = spec.factors()
        firsts, seconds = implementations(a, backend), implementations(b, backend)
        return [LowRank(firsts[0], seconds[0])] if firsts and seconds else []
    found = [k for k in all_kernels() if k.backend == backend and k.supports(spec) and k.available()]
    return sorted(found, key=lambda k: (not k.native(spec, caps), -k.priority))


def select(spec: OpSpec, backend: str = "cpu") -> Kernel:
    """The implementation that compressed modules use for `spec` on `backend`."""
    found = implementations(spec, backend)
    if not found:
        served = sorted({k.name for k in all_kernels() if k.backend == backend})
        raise HwsearchError(f"no {backend} implementation of {spec.describe()}; accepted implementations: {', '.join(served)}")
    return found[0]


def build(kernel: Kernel, spec: OpSpec, params: State, acts: Sequence[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """A zero-argument closure running `kernel` on prepared state (what the profiler times)."""
    state = kernel.prepare(spec, params)
    acts = tuple(acts)
    return lambda: kernel.run(spec, state, *acts)
