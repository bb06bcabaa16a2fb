"""GPU spec sheets: the hardware facts a latency model needs and the driver does not report.

Why a table: ``torch.cuda.get_device_properties`` gives the SM count, memory size and (recent
torch) the L2 size, but not the peak tensor-core FLOP/s nor the memory bandwidth, and those two
set every kernel's roofline. A GPU nobody has measured yet can be predicted from its spec sheet
(see :mod:`hwsearch.predictors.gemm_tiles`), so the same facts are needed for GPUs known only
from published measurements (Vidur's ``a100``, ``a40``, ``h100``) and for the GPU in this
machine; both read this table, and the driver's own numbers win where it reports them.

Peaks are dense (no 2:4 sparsity) FP16/BF16 tensor-core FLOP/s with FP32 accumulation, as
printed on NVIDIA's datasheets.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any

from hwsearch.errors import HwsearchError


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model's spec sheet (``source`` says where each number comes from)."""

    name: str
    arch: str
    sm_count: int
    boost_clock_mhz: float
    fp16_tflops: float  # dense tensor-core FP16/BF16, FP32 accumulate
    memory_gbs: float
    l2_mb: float
    source: str

    @property
    def peak_flops(self) -> float:
        return self.fp16_tflops * 1e12

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.memory_gbs * 1e9

    @property
    def l2_bytes(self) -> float:
        return self.l2_mb * (1 << 20)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> GpuSpec:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__})


SPECS: dict[str, GpuSpec] = {s.name: s for s in (
    # NVIDIA A100 Tensor Core GPU datasheet (2021, SXM4 80GB column): 312 TFLOPS FP16 tensor
    # (624 with sparsity), 2,039 GB/s HBM2e; NVIDIA A100 Tensor Core GPU Architecture whitepaper
    # (2020): 108 SMs, 1410 MHz boost, 40 MB L2.
    GpuSpec("a100-sxm4-80gb", "ampere", 108, 1410, 312.0, 2039.0, 40.0,
            "NVIDIA A100 datasheet (SXM4 80GB) + A100 architecture whitepaper"),
    # Same datasheet, PCIe 80GB column: 1,935 GB/s; same GA100 (108 SMs, 40 MB L2).
    GpuSpec("a100-pcie-80gb", "ampere", 108, 1410, 312.0, 1935.0, 40.0,
            "NVIDIA A100 datasheet (PCIe 80GB) + A100 architecture whitepaper"),
    # A100 datasheet, 40GB columns: 1,555 GB/s HBM2.
    GpuSpec("a100-40gb", "ampere", 108, 1410, 312.0, 1555.0, 40.0,
            "NVIDIA A100 datasheet (40GB) + A100 architecture whitepaper"),
    # NVIDIA A40 datasheet: 149.7 TFLOPS FP16 tensor (299.4 with sparsity), 696 GB/s GDDR6,
    # 10,752 CUDA cores (84 SMs of GA102); NVIDIA Ampere GA102 GPU Architecture whitepaper:
    # 6,144 KB L2, 1740 MHz boost for A40.
    GpuSpec("a40", "ampere", 84, 1740, 149.7, 696.0, 6.0,
            "NVIDIA A40 datasheet + NVIDIA Ampere GA102 architecture whitepaper"),
    # NVIDIA A10 datasheet: 125 TFLOPS FP16 tensor (250 with sparsity), 600 GB/s, 72 SMs of GA102.
    GpuSpec("a10", "ampere", 72, 1695, 125.0, 600.0, 6.0,
            "NVIDIA A10 datasheet + NVIDIA Ampere GA102 architecture whitepaper"),
    # NVIDIA H100 Tensor Core GPU datasheet (SXM column): 1,979 TFLOPS FP16 tensor with
    # sparsity (989.4 dense), 3.35 TB/s HBM3; NVIDIA H100 Tensor Core GPU Architecture
    # whitepaper: 132 SMs (SXM5), 50 MB L2.
    GpuSpec("h100-sxm", "hopper", 132, 1980, 989.4, 3350.0, 50.0,
            "NVIDIA H100 datasheet (SXM) + H100 architecture whitepaper"),
    # H100 datasheet (PCIe column): 1,513 TFLOPS FP16 with sparsity (756 dense), 2 TB/s;
    # whitepaper: 114 SMs (PCIe), 50 MB L2.
    GpuSpec("h100-pcie", "hopper", 114, 1755, 756.0, 2000.0, 50.0,
            "NVIDIA H100 datasheet (PCIe) + H100 architecture whitepaper"),
    # NVIDIA H200 datasheet (SXM): 1,979 TFLOPS FP16 with sparsity (989.4 dense), 4.8 TB/s
    # HBM3e; same GH100 as the H100 SXM (132 SMs, 50 MB L2).
    GpuSpec("h200-sxm", "hopper", 132, 1980, 989.4, 4800.0, 50.0,
            "NVIDIA H200 datasheet + H100 architecture whitepaper"),
    # NVIDIA L4 datasheet: 242 TFLOPS FP16 tensor with sparsity (121 dense), 300 GB/s;
    # NVIDIA Ada GPU Architecture whitepaper: 58 SMs, 48 MB L2 (AD104 in L4).
    GpuSpec("l4", "ada", 58, 2040, 121.0, 300.0, 48.0,
            "NVIDIA L4 datasheet + NVIDIA Ada GPU architecture whitepaper"),
    # NVIDIA L40S datasheet: 733 TFLOPS FP16 tensor with sparsity (362.05 dense), 864 GB/s;
    # 142 SMs of AD102, 96 MB L2 (Ada whitepaper).
    GpuSpec("l40s", "ada", 142, 2520, 362.05, 864.0, 96.0,
            "NVIDIA L40S datasheet + NVIDIA Ada GPU architecture whitepaper"),
    # NVIDIA V100 datasheet (SXM2): 125 TFLOPS tensor, 900 GB/s; Volta whitepaper: 80 SMs,
    # 1530 MHz boost, 6 MB L2.
    GpuSpec("v100-sxm2", "volta", 80, 1530, 125.0, 900.0, 6.0,
            "NVIDIA V100 datasheet (SXM2) + Volta architecture whitepaper"),
)}

# Names other sources use for the same models: Vidur's profiling folders and torch device names.
ALIASES: dict[str, str] = {
    "a100": "a100-sxm4-80gb", "a100-sxm4-80gb": "a100-sxm4-80gb", "a100-80gb-pcie": "a100-pcie-80gb",
    "a100-pcie-80gb": "a100-pcie-80gb", "a100-sxm4-40gb": "a100-40gb", "a100-pcie-40gb": "a100-40gb",
    "h100": "h100-sxm", "h100-80gb-hbm3": "h100-sxm", "h100-sxm5-80gb": "h100-sxm", "h100-pcie": "h100-pcie",
    "h100-80gb-pcie": "h100-pcie", "h200": "h200-sxm", "h200-141gb-hbm3e": "h200-sxm",
    "v100": "v100-sxm2", "v100-sxm2-32gb": "v100-sxm2", "v100-sxm2-16gb": "v100-sxm2",
}


def _key(name: str) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'a100-sxm4-80gb'."""
    s = re.sub(r"^(nvidia|tesla)\s+", "", name.strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")


def gpu_spec(name: str) -> GpuSpec:
    """The spec sheet of a GPU named as Vidur, torch or this table names it."""
    key = _key(name)
    found = SPECS.get(key) or SPECS.get(ALIASES.get(key, ""))
    if found is None:
        raise HwsearchError(f"no spec sheet for GPU {name!r}; accepted: {', '.join(sorted(SPECS))} "
                            "(or their torch or Vidur names, e.g. 'NVIDIA H100 80GB HBM3', 'h100')")
    return found


def gpu_spec_from_properties(props: Any) -> GpuSpec | None:
    """This machine's GPU: the table's entry for its name, with the driver's SM count and L2 size.

    ``props`` is what ``torch.cuda.get_device_properties`` returns. None when the model is not
    in the table (the driver does not report peak FLOP/s nor bandwidth).
    """
    try:
        spec = gpu_spec(str(props.name))
    except HwsearchError:
        return None
    sms = int(getattr(props, "multi_processor_count", 0) or 0) or spec.sm_count
    l2 = getattr(props, "L2_cache_size", None)
    return replace(spec, sm_count=sms, l2_mb=float(l2) / (1 << 20) if l2 else spec.l2_mb)
