"""The KV cache a decoder's attention reads: one `KVCache` per block, chosen by the plan.

A cache holds the keys and values of every token seen so far, (batch, kv_heads, tokens,
head_dim) each. `append` stores a step's keys and values in the cache's format; `keys()` and
`values()` give them back in the compute dtype for attention. `make_cache(choice, dtype)` is
the one way a model gets its cache, so the format the plan names is the format that runs.
Quantised formats register in `CACHES` by format name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hwsearch.errors import unknown
from hwsearch.spaces.formats import DTYPE_BYTES
from hwsearch.spaces.plan import KVCacheChoice

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class KVCache:
    """A cache stored in a float dtype (fp32/bf16/fp16): append concatenates, reads cast."""

    def __init__(self, choice: KVCacheChoice, dtype: torch.dtype = torch.float32):
        self.choice, self.dtype = choice, dtype
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self._k is None else int(self._k.shape[2])

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        store = TORCH_DTYPES[self.choice.format]
        k, v = k.to(store), v.to(store)
        self._k = k if self._k is None else torch.cat([self._k, k], dim=2)
        self._v = v if self._v is None else torch.cat([self._v, v], dim=2)

    def keys(self) -> torch.Tensor:
        assert self._k is not None, "read of an empty KV cache"
        return self._k.to(self.dtype)

    def values(self) -> torch.Tensor:
        assert self._v is not None, "read of an empty KV cache"
        return self._v.to(self.dtype)

    def nbytes(self) -> int:
        """Bytes the cache holds (payload and scales): what decode attention streams per step."""
        if self._k is None:
            return 0
        return 2 * self._k.numel() * DTYPE_BYTES[self.choice.format]


CACHES: dict[str, Callable[[KVCacheChoice, torch.dtype], KVCache]] = {fmt: KVCache for fmt in TORCH_DTYPES}


def make_cache(choice: KVCacheChoice | None = None, dtype: torch.dtype = torch.float32) -> KVCache:
    """The cache for `choice` (default: the compute dtype itself)."""
    if choice is None:
        choice = KVCacheChoice(format={v: k for k, v in TORCH_DTYPES.items()}[dtype])
    if choice.format not in CACHES:
        raise unknown("KV-cache format with a kernel", choice.format, CACHES)
    return CACHES[choice.format](choice, dtype)
