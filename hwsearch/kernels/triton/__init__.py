"""The project's own Triton kernels, registered as "cuda" implementations of `linear`.

- `triton.linear.w4a16`: int4 group-quantised weights × bf16 activations, dequantised in the
  GEMM, for every M, K, N and group 32/64/128 (torch's packed int4 mm needs aligned shapes).
- `triton.linear.nm_sparse`: any N:M pattern over a compressed values + indices format
  (cuSPARSELt only has 2:4), fp32/fp16/bf16.

They are `available()` only with a CUDA device (so a CPU registry never picks them); the tests
call them directly on CPU tensors, which run in Triton's interpreter. The config the autotuner
chose for a spec is `kernel.describe_config(spec)`, for the profiler to store with the
measurement. A fused token merge is not here: without a GPU profile showing the unfused one
matters, it would be a kernel nobody asked for.

Importing this package does not import triton: the kernel modules are loaded on first use, so
the registry still loads where triton is not installed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any, ClassVar

import torch

from hwsearch.kernels.inputs import TORCH_DTYPES
from hwsearch.kernels.quant import apply_nm, quantize_int4_groups
from hwsearch.kernels.registry import Kernel, State, capabilities, register
from hwsearch.kernels.specs import LinearSpec, OpSpec

# Triton compiles for Turing (sm75) and newer; bf16 tensor-core dots need Ampere (Orin is sm87).
TRITON_MIN_SM = 75
BF16_DOT_SM = 80
FP16_DOT_SM = 75


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


class TritonLinear(Kernel):
    """Shared plumbing: CUDA-only availability, tensor-core capability, the recorded config."""

    op = "linear"
    backend = "cuda"
    kernel_module: ClassVar[str] = ""  # the module holding the kernel body and its LAUNCHER

    def __init__(self) -> None:
        self._launched: dict[OpSpec, Any] = {}

    def available(self) -> bool:
        if not (triton_installed() and torch.cuda.is_available()):
            return False
        return int(capabilities("cuda").get("sm", 0)) >= TRITON_MIN_SM

    def _dot_native(self, dtype: str, caps: dict[str, Any]) -> bool:
        need = BF16_DOT_SM if dtype == "bf16" else FP16_DOT_SM
        return bool(caps.get("available")) and int(caps.get("sm", 0)) >= need

    def _launcher(self) -> Any:
        return importlib.import_module(self.kernel_module).LAUNCHER

    def describe_config(self, spec: OpSpec) -> dict[str, Any]:
        """The config of the last run of `spec` (autotuned on a GPU, fixed under the interpreter); {} before."""
        launched = self._launched.get(spec)
        return {} if launched is None else self._launcher().describe(launched)


@register
class TritonW4A16(TritonLinear):
    """W4A16 GEMM with in-kernel dequantisation (asymmetric groups, any shape)."""

    name = "triton.linear.w4a16"
    kernel_module = "hwsearch.kernels.triton.w4a16"

    def supports(self, spec: OpSpec) -> bool:
        return isinstance(spec, LinearSpec) and spec.rank is None and spec.format == "int4"

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        # N:M on int4 runs as a dense int4 GEMM of masked weights: no sparse speed-up.
        return spec.nm is None and self._dot_native("bf16", caps)  # type: ignore[attr-defined]

    def prepare(self, spec: LinearSpec, params: State) -> State:
        from hwsearch.kernels.triton.w4a16 import pack_int4

        q, scale, lo = quantize_int4_groups(apply_nm(params["weight"], spec.nm), spec.group_size)
        act = torch.bfloat16
        state = {
            "packed": pack_int4(q),
            "scale": scale.t().to(act).contiguous(),
            "lo": lo.t().to(act).contiguous(),
        }
        if params.get("bias") is not None:
            state["bias"] = params["bias"].to(act)
        return state

    def run(self, spec: LinearSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        from hwsearch.kernels.triton.w4a16 import w4a16_matmul

        y, self._launched[spec] = w4a16_matmul(
            x, state["packed"], state["scale"], state["lo"], spec.group_size, spec.K, state.get("bias")
        )
        return y


@register
class TritonNMSparse(TritonLinear):
    """General N:M sparse GEMM reading only the kept weights and their in-group indices."""

    name = "triton.linear.nm_sparse"
    kernel_module = "hwsearch.kernels.triton.nm_sparse"
    priority = 1  # below cuSPARSELt's 2:4 where both apply
    formats = ("fp32", "fp16", "bf16")

    def supports(self, spec: OpSpec) -> bool:
        return (
            isinstance(spec, LinearSpec) and spec.rank is None and spec.format in self.formats and spec.nm is not None
        )

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return self._dot_native(spec.format, caps)  # type: ignore[attr-defined]

    def prepare(self, spec: LinearSpec, params: State) -> State:
        from hwsearch.kernels.triton.nm_sparse import pack_nm

        dtype = TORCH_DTYPES[spec.format]
        values, indices = pack_nm(params["weight"], *spec.nm)  # type: ignore[misc]
        state = {"values_t": values.to(dtype).t().contiguous(), "indices_t": indices.t().contiguous()}
        if params.get("bias") is not None:
            state["bias"] = params["bias"].to(dtype)
        return state

    def run(self, spec: LinearSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        from hwsearch.kernels.triton.nm_sparse import nm_matmul

        n, m = spec.nm  # type: ignore[misc]
        y, self._launched[spec] = nm_matmul(x, state["values_t"], state["indices_t"], n, m, spec.K, state.get("bias"))
        return y
