"""The KV cache a decoder's attention reads: one `KVCache` per block, chosen by the plan.

A cache holds the keys and values of every token seen so far, (batch, kv_heads, tokens,
head_dim) each. `append` stores a step's keys and values in the cache's format; `keys()` and
`values()` give them back in the compute dtype; `attend(q)` is decode attention over the cache
as the format's kernel runs it. `make_cache(choice, dtype)` is the one way a model gets its
cache, so the format the plan names is the format that runs. Formats register in `CACHES`.

Quantised formats (int8, int4; KIVI, Liu et al. 2024): keys per channel, one fp16 scale and
minimum per channel per group of `group_size` tokens, the group not yet full kept in the compute
dtype (the residual) until it fills; values per token, one scale and minimum per token per
group of `group_size` channels (the head dim when it is smaller). Codes are asymmetric uint8;
int4 packs two per byte (`quant.pack_int4_halves`). `attend` never builds a full-precision copy
of the cache: the scales fold into the query (keys) and into the attention weights (values), and
the codes are widened a cache-sized chunk at a time, so what streams from memory per step is the
quantised bytes plus scales (`nbytes()`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hwsearch.errors import HwsearchError, unknown
from hwsearch.kernels.quant import pack_int4_halves, quantize_kv, unpack_int4_halves
from hwsearch.spaces.plan import KVCacheChoice

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KV_BITS = {"int8": 8, "int4": 4}
# fp32 working set of one chunk of widened codes: small enough to stay in a core's L2 cache.
CHUNK_BYTES = 1 << 20


def causal_mask(q_tokens: int, kv_tokens: int, rep: int = 1, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """Bottom-right causal mask for `q_tokens` new queries over `kv_tokens` (rows repeated per
    query head of a kv head); None for one query, which attends to the whole cache."""
    if q_tokens == 1:
        return None
    mask = torch.ones(q_tokens, kv_tokens, dtype=torch.bool, device=device).tril(kv_tokens - q_tokens)
    return mask.repeat(rep, 1)


class KVCache:
    """A cache stored in a float dtype (fp32/bf16/fp16): append concatenates, reads cast."""

    quantised = False
    NAMES: tuple[str, ...] = ("k", "v")  # what it stores (`tensors`, `from_tensors`)

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

    def attend(self, q: torch.Tensor, causal: bool = True) -> torch.Tensor:
        """Attention of `q` (batch, heads, tokens, head_dim), the newest tokens, over the cache
        (bottom-right causal unless `causal` is False; heads a multiple of the cache's kv heads),
        in q's dtype."""
        keys, values = self.keys().to(q.dtype), self.values().to(q.dtype)
        mask = causal_mask(q.shape[2], len(self), device=q.device) if causal else None
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=q.shape[1] != keys.shape[1])

    def nbytes(self) -> int:
        """Bytes the cache holds (payload and scales): what decode attention streams per step."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything the cache stores, by name (a kernel's prepared state; `from_tensors` reads it back)."""
        return {} if self._k is None else {"k": self._k, "v": self._v}  # type: ignore[dict-item]

    @classmethod
    def from_tensors(cls, choice: KVCacheChoice, dtype: torch.dtype, tensors: dict[str, torch.Tensor]) -> KVCache:
        """A cache over stored tensors (no copy): what a profiled kernel rebuilds from its state
        (its `NAMES` taken from `tensors`, anything else there left alone)."""
        cache = cls(choice, dtype)
        for name in cls.NAMES:
            if name in tensors:
                setattr(cache, f"_{name}", tensors[name])
        return cache


class QuantKVCache(KVCache):
    """int8/int4 cache: per-channel keys (residual group in the compute dtype), per-token values."""

    quantised = True
    NAMES = ("kq", "ks", "kl", "kres", "vq", "vs", "vl")

    def __init__(self, choice: KVCacheChoice, dtype: torch.dtype = torch.float32):
        super().__init__(choice, dtype)
        self.bits = KV_BITS[choice.format]
        self.group = int(choice.group_size)  # type: ignore[arg-type]
        self._kq = self._ks = self._kl = self._kres = None
        self._vq = self._vs = self._vl = None

    def __len__(self) -> int:
        full = 0 if self._kq is None else self._kq.shape[2] * self._kq.shape[3]
        return int(full + (0 if self._kres is None else self._kres.shape[2]))

    def _value_group(self, head_dim: int) -> int:
        group = min(self.group, head_dim)
        if head_dim % group or (self.bits == 4 and head_dim % 2):
            raise HwsearchError(
                f"head_dim={head_dim} does not fit KV-cache format {self.choice.label()}; accepted: a head dim that is "
                f"a multiple of {group}" + (" and even" if self.bits == 4 else "")
            )
        return group

    def _pack(self, q: torch.Tensor) -> torch.Tensor:
        return pack_int4_halves(q) if self.bits == 4 else q

    def _codes(self, packed: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 codes (or `out` filled with them), unpacking int4."""
        if self.bits == 4:
            return unpack_int4_halves(packed, out)
        return packed if out is None else out.copy_(packed)

    @staticmethod
    def _cat(old: torch.Tensor | None, new: torch.Tensor, dim: int) -> torch.Tensor:
        return new if old is None else torch.cat([old, new], dim=dim)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        b, h, t, d = v.shape
        gv = self._value_group(d)
        vq, vs, vl = quantize_kv(v.reshape(b, h, t, d // gv, gv), -1, self.bits)
        self._vq = self._cat(self._vq, self._pack(vq.reshape(b, h, t, d)), 2)
        self._vs, self._vl = self._cat(self._vs, vs, 2), self._cat(self._vl, vl, 2)
        res = self._cat(self._kres, k.to(self.dtype), 2)
        full = res.shape[2] // self.group
        if full:
            block = res[:, :, : full * self.group].reshape(b, h, full, self.group, d)
            kq, ks, kl = quantize_kv(block, 3, self.bits)
            self._kq = self._cat(self._kq, self._pack(kq), 2)
            self._ks, self._kl = self._cat(self._ks, ks, 2), self._cat(self._kl, kl, 2)
            res = res[:, :, full * self.group :].contiguous()
        self._kres = res

    def keys(self) -> torch.Tensor:
        assert self._kres is not None, "read of an empty KV cache"
        parts = []
        if self._kq is not None:
            b, h, groups, g, _ = self._kq.shape
            k = self._codes(self._kq).float() * self._ks.float() + self._kl.float()  # type: ignore[union-attr]
            parts.append(k.reshape(b, h, groups * g, -1).to(self.dtype))
        return torch.cat([*parts, self._kres], dim=2)

    def values(self) -> torch.Tensor:
        assert self._vq is not None, "read of an empty KV cache"
        codes = self._codes(self._vq)
        b, h, t, d = codes.shape
        groups = self._vs.shape[3]  # type: ignore[union-attr]
        v = codes.reshape(b, h, t, groups, d // groups).float() * self._vs.float() + self._vl.float()  # type: ignore[union-attr]
        return v.reshape(b, h, t, d).to(self.dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {n: t for n in self.NAMES if (t := getattr(self, f"_{n}")) is not None}

    def attend(self, q: torch.Tensor, causal: bool = True) -> torch.Tensor:
        """Attention over the quantised codes (see the module docstring), in q's dtype."""
        assert self._vq is not None, "attention over an empty KV cache"
        b, hq, tq, d = q.shape
        h = self._vq.shape[1]
        rep, total = hq // h, len(self)
        qf = q.float().reshape(b, h, rep * tq, d)
        scores = [self._key_scores(qf)] if self._kq is not None else []
        scores.append(torch.matmul(qf, self._kres.float().transpose(-1, -2)))  # type: ignore[union-attr]
        logits = torch.cat(scores, dim=-1) * (1.0 / math.sqrt(d))
        mask = causal_mask(tq, total, rep, q.device) if causal else None
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        out = self._weighted_values(logits.softmax(-1))
        return out.reshape(b, hq, tq, d).to(q.dtype)

    def _chunk(self, rows_per_token: int) -> int:
        """Tokens per chunk whose widened fp32 codes fit `CHUNK_BYTES`, a whole number of groups."""
        tokens = max(self.group, CHUNK_BYTES // (4 * rows_per_token))
        return tokens // self.group * self.group

    def _key_scores(self, qf: torch.Tensor) -> torch.Tensor:
        """q·k over the quantised groups: (q·scale)·codes + q·min, per group of tokens."""
        kq, ks, kl = self._kq, self._ks.float(), self._kl.float()  # type: ignore[union-attr]
        b, h, groups, g, _ = kq.shape  # type: ignore[union-attr]
        d = qf.shape[-1]
        qs = qf[:, :, None] * ks  # (b, h, groups, rows, d): the per-channel scales folded into q
        bias = torch.matmul(kl.squeeze(3), qf.transpose(-1, -2))  # (b, h, groups, rows)
        step = self._chunk(b * h * d) // g
        buf = torch.empty(b, h, min(step, groups), g, d, device=qf.device)
        parts = []
        for g0 in range(0, groups, step):
            n = min(step, groups - g0)
            codes = self._codes(kq[:, :, g0 : g0 + n], buf[:, :, :n])  # type: ignore[index]
            parts.append(torch.matmul(qs[:, :, g0 : g0 + n], codes.transpose(-1, -2)))
        s = torch.cat(parts, dim=2) + bias[..., None]  # (b, h, groups, rows, g)
        return s.permute(0, 1, 3, 2, 4).reshape(b, h, -1, groups * g)

    def _weighted_values(self, p: torch.Tensor) -> torch.Tensor:
        """p·v with per-token scales folded into p: Σ_t (p_t·scale_t)·codes_t + Σ_t p_t·min_t."""
        vq, vs, vl = self._vq, self._vs, self._vl
        b, h, t, _ = vq.shape  # type: ignore[union-attr]
        groups = vs.shape[3]  # type: ignore[union-attr]
        d = self._vq.shape[-1] * (2 if self.bits == 4 else 1)  # type: ignore[union-attr]
        gv = d // groups
        rows = p.shape[2]
        out = torch.matmul(p, vl.float().reshape(b, h, t, groups)).repeat_interleave(gv, -1)  # type: ignore[union-attr]
        step = self._chunk(b * h * d)
        buf = torch.empty(b, h, min(step, t), d, device=p.device)
        scales = vs.float().reshape(b, h, t, groups).transpose(-1, -2)  # type: ignore[union-attr]  # (b, h, groups, t)
        for t0 in range(0, t, step):
            n = min(step, t - t0)
            codes = self._codes(vq[:, :, t0 : t0 + n], buf[:, :, :n])  # type: ignore[index]
            weights = p[..., t0 : t0 + n]
            for j in range(groups):  # p·scale of this channel group, contiguous, times its codes
                scaled = weights * scales[:, :, j, None, t0 : t0 + n]
                out[..., j * gv : (j + 1) * gv] += torch.matmul(scaled, codes[..., j * gv : (j + 1) * gv])
        return out.reshape(b, h, rows, d)


CACHES: dict[str, Callable[[KVCacheChoice, torch.dtype], KVCache]] = {
    **{fmt: KVCache for fmt in TORCH_DTYPES},
    **{fmt: QuantKVCache for fmt in KV_BITS},
}


def cache_class(choice: KVCacheChoice) -> type[KVCache]:
    """The cache class of a choice; an unregistered format is one line listing those with a kernel."""
    if choice.format not in CACHES:
        raise unknown("KV-cache format with a kernel", choice.format, CACHES)
    return CACHES[choice.format]  # type: ignore[return-value]


def make_cache(choice: KVCacheChoice | None = None, dtype: torch.dtype = torch.float32) -> KVCache:
    """The cache for `choice` (default: the compute dtype itself)."""
    if choice is None:
        choice = KVCacheChoice(format={v: k for k, v in TORCH_DTYPES.items()}[dtype])
    return cache_class(choice)(choice, dtype)


@dataclass
class DecodeStep:
    """A decoder's inputs for one decode step at a fixed context: `inputs` (the new tokens) attend
    to `context` cached tokens.

    Each module gets its own KV caches (`module.new_caches()`, in the formats its plan chose),
    filled once with seeded random keys and values (a step costs what the cache's length and
    format make it cost, whatever the values) and entered through shallow copies on every call:
    caches append by building new tensors, so the filled ones stay as they are and every timed
    step runs at exactly `context` tokens, however many steps the harness takes.
    """

    inputs: torch.Tensor
    context: int
    seed: int = 0
    _filled: dict[int, tuple[nn.Module, list[Any]]] = field(default_factory=dict, repr=False)

    def caches(self, module: nn.Module) -> list[Any]:
        if id(module) not in self._filled:
            caches = module.new_caches()
            attention = [m for m in module.modules() if hasattr(m, "new_cache") and hasattr(m, "num_key_value_heads")]
            gen = torch.Generator().manual_seed(self.seed)
            dtype = next(module.parameters()).dtype
            for attn, cache in zip(attention, caches, strict=True):
                shape = (self.inputs.shape[0], attn.num_key_value_heads, self.context, attn.head_dim)
                if self.context:
                    cache.append(torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype))
            self._filled[id(module)] = (module, caches)  # the module kept: its id is not reused meanwhile
        return self._filled[id(module)][1]

    def run(self, module: nn.Module) -> Any:
        return module(self.inputs, [copy.copy(c) for c in self.caches(module)])
