"""hwsearch: hardware-aware compression search for transformer models.

The public API, each loaded on first use so `import hwsearch` (and the CLI's --help) stays fast:

- `Client`, `SearchSpec`: submit a search for a model on a device, read its Pareto front and plans;
- `get_model`, `from_torch`: a catalogue model, or a description traced from any torch module;
- `Plan`, `LayerChoice`, `MergePlan`, `SearchSpace`, `Knobs`: plans and the spaces they come from;
- `apply_plan`: a torch model compressed as a plan says; `export`: a plan in another tool's format;
- `default_device_name`: the name `hwsearch profile --local` stores this machine under.

Each one's docstring carries an example that runs as written (`tests/test_public_api.py`).
"""

from __future__ import annotations

from typing import Any

from hwsearch.errors import HwsearchError

__version__ = "0.1.0"

_LAZY = {
    "Client": ("hwsearch.search.client", "Client"),
    "SearchSpec": ("hwsearch.search.spec", "SearchSpec"),
    "get_model": ("hwsearch.spaces.catalog", "get_model"),
    "from_torch": ("hwsearch.spaces.trace", "from_torch"),
    "Plan": ("hwsearch.spaces.plan", "Plan"),
    "LayerChoice": ("hwsearch.spaces.plan", "LayerChoice"),
    "MergePlan": ("hwsearch.spaces.plan", "MergePlan"),
    "KVCacheChoice": ("hwsearch.spaces.plan", "KVCacheChoice"),
    "SearchSpace": ("hwsearch.spaces.knobs", "SearchSpace"),
    "Knobs": ("hwsearch.spaces.knobs", "Knobs"),
    "apply_plan": ("hwsearch.kernels.apply", "apply_plan"),
    "export": ("hwsearch.export", "export"),
    "default_device_name": ("hwsearch.profilers.runner", "default_device_name"),
}
__all__ = ["HwsearchError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hwsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

