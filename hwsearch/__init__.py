"""hwsearch: hardware-aware compression search for transformer models.

`Client`, `SearchSpec` and `export` are loaded on first use, so `import hwsearch` (and the
CLI's --help) stays fast.
"""

from __future__ import annotations

from typing import Any

from hwsearch.errors import HwsearchError

__version__ = "0.1.0"
__all__ = ["Client", "HwsearchError", "SearchSpec", "__version__", "default_device_name", "export"]

_LAZY = {
    "Client": ("hwsearch.search.client", "Client"),
    "SearchSpec": ("hwsearch.search.spec", "SearchSpec"),
    "export": ("hwsearch.export", "export"),
    # the name `hwsearch profile --local` (and `make demo`) stores this machine under
    "default_device_name": ("hwsearch.profilers.runner", "default_device_name"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hwsearch' has no attribute {name!r}")
