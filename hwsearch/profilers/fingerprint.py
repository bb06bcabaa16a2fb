"""Device fingerprint: what the measurements were taken on, read from the machine itself.

Stored with the device so a profile can be told apart from one taken on other hardware, other
software versions or another thread count.
"""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from hwsearch.kernels.cpu import CAPABILITY_FLAGS, cpu_flags
from hwsearch.profilers.gpu_specs import gpu_spec_from_properties

# Recorded for people reading the fingerprint, and every flag the CPU capabilities read (so a
# device's capabilities can be read from its stored fingerprint on another host).
INTERESTING_FLAGS = tuple(dict.fromkeys((
    "avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile",
    "fma", "neon", "asimd", "sve", *CAPABILITY_FLAGS)))
LIBRARIES = ("torch", "triton", "numpy", "hwsearch")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cache_bytes() -> int:
    """Last-level cache size (bytes), used to size weight rotation; 32 MiB when unknown."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    best = 0
    for index in sorted(base.glob("index*")):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * unit)
    return best or 32 << 20


def _versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def fingerprint(backend: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Hardware and software facts of this machine for `backend`."""
    flags = cpu_flags()
    doc: dict[str, Any] = {
        "backend": backend,
        "host": socket.gethostname(),
        "os": platform.platform(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": sorted(f for f in INTERESTING_FLAGS if f in flags),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "llc_bytes": cache_bytes(),
        "memory_bytes": _memory_bytes(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "versions": _versions(),
    }
    if backend == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        doc.update(
            gpu_name=props.name,
            sm=props.major * 10 + props.minor,
            sm_count=props.multi_processor_count,
            gpu_memory_bytes=props.total_memory,
            cuda=torch.version.cuda,
            l2_bytes=getattr(props, "L2_cache_size", None),
        )
        # peak FLOP/s and bandwidth are not reported by the driver: the spec sheet's (None if not tabled)
        spec = gpu_spec_from_properties(props)
        doc["gpu_spec"] = spec.as_dict() if spec is not None else None
    return doc


def device_kind(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"
