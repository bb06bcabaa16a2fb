"""Compressed torch modules: a linear layer run by a registered kernel, and a ToMe block.

`CompressedLinear` keeps two things:
- the kernel's prepared state (packed int4, int8 weights with scales, masked dense weights for
  emulated N:M ...) as non-persistent buffers: the hot path, whatever layout the kernel wants;
- the layer's stored form as persistent buffers: kept values at the format's width, packed N:M
  indices, scales/zero points, bias. This is what a checkpoint of the compressed model holds,
  so `state_dict()` bytes equal `hwsearch.spaces.size.linear_bytes` exactly.
Both are derived from the same quantisers (`hwsearch.kernels.quant`), so they agree value for
value. An AWQ int4 layer (`hwsearch.kernels.awq`) stores and runs the scaled weight
W diag(s) and keeps `input_scale` = 1/s (bf16, K values), which multiplies its input first.

`TomeBlock` runs a timm-style block with ToMe (Bolya et al., ICLR 2023): proportional
attention (log token sizes added to the logits) and bipartite soft matching of `r` tokens
between attention and MLP, the class token protected. Blocks of one model share a
`TomeState` that carries token sizes from block to block and is reset per forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hwsearch.errors import HwsearchError
from hwsearch.kernels import registry
from hwsearch.kernels.awq import ALPHAS, AwqResult, awq_search
from hwsearch.kernels.dispatch import Dispatch
from hwsearch.kernels.expand import linear_spec
from hwsearch.kernels.inputs import TORCH_DTYPES
from hwsearch.kernels.quant import (
    low_rank_factors,
    nm_mask,
    quantize_fp8_rows,
    quantize_int4_groups,
    quantize_int8_rows,
)
from hwsearch.kernels.tome import bipartite_merge
from hwsearch.spaces.formats import ACT_DTYPE
from hwsearch.spaces.plan import LayerChoice
from hwsearch.spaces.size import BIAS_BYTES, index_bits

BIAS_DTYPES = {1: None, 2: torch.bfloat16, 4: torch.float32}


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers (rows, L) < 2**bits into (rows, ceil(L*bits/8)) uint8, per row."""
    rows, length = values.shape
    shifts = torch.arange(bits, dtype=torch.int64)
    bitmat = ((values.to(torch.int64)[..., None] >> shifts) & 1).reshape(rows, length * bits)
    bitmat = F.pad(bitmat, (0, (-length * bits) % 8)).view(rows, -1, 8)
    return (bitmat << torch.arange(8, dtype=torch.int64)).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of `pack_bits`."""
    rows = packed.shape[0]
    bitmat = (packed.to(torch.int64)[..., None] >> torch.arange(8, dtype=torch.int64)) & 1
    bitmat = bitmat.reshape(rows, -1)[:, : length * bits].view(rows, length, bits)
    return (bitmat << torch.arange(bits, dtype=torch.int64)).sum(-1)


def stored_form(weight: torch.Tensor, fmt: str, group_size: int | None, sparsity: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    """The compact stored tensors of one (N, K) weight (see module docstring)."""
    rows, k = weight.shape
    w = weight.detach().float()
    mask = nm_mask(w, *sparsity) if sparsity else torch.ones_like(w, dtype=torch.bool)
    w = w * mask
    kept = int(mask[0].sum())
    out: dict[str, torch.Tensor] = {}
    if fmt == "int8":
        q, scale = quantize_int8_rows(w)
        out["values"], out["scale"] = q[mask].view(rows, kept), scale.reshape(rows)
    elif fmt == "fp8":
        q, scale = quantize_fp8_rows(w)
        out["values"], out["scale"] = q.view(torch.uint8)[mask].view(rows, kept).view(torch.float8_e4m3fn), scale.reshape(rows)
    elif fmt == "int4":
        q, scale, lo = quantize_int4_groups(w, group_size or 128)
        out["values"] = pack_bits(q[mask].view(rows, kept), 4)
        out["scales_zeros"] = torch.stack([scale, lo], dim=-1).to(torch.bfloat16)
    else:
        out["values"] = w.to(TORCH_DTYPES[fmt])[mask].view(rows, kept)
    if sparsity:
        positions = torch.arange(k).expand(rows, k)[mask].view(rows, kept) % sparsity[1]
        out["indices"] = pack_bits(positions, index_bits(f"{sparsity[0]}:{sparsity[1]}"))
    return out


class CompressedLinear(nn.Module):
    """`nn.Linear` replacement that runs one `LinearSpec` on the backend's selected kernel.

    An AWQ choice needs `calibration`: the layer's input activations (tokens, K) from the
    uncompressed model on calibration data (`hwsearch.kernels.apply.layer_inputs`); `awq_alpha`
    is the alpha chosen on the whole model (`awq.model_alphas`), else the layer's own error chooses."""

    def __init__(self, linear: nn.Linear, choice: LayerChoice, rows: int = 1, backend: str = "cpu",
                 dispatch: Dispatch | None = None, calibration: torch.Tensor | None = None,
                 awq_alpha: float | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.choice = choice
        self.spec = linear_spec(max(1, rows), linear.in_features, linear.out_features, choice)
        self.kernel = dispatch.choose(self.spec) if dispatch is not None else registry.select(self.spec, backend)
        self.act_dtype = TORCH_DTYPES[ACT_DTYPE[choice.format]]
        weight = linear.weight.detach().float()
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.awq: dict[str, float] | None = None  # alpha and calibration output errors, for reports
        if choice.scaling == "awq":
            if calibration is None:
                raise HwsearchError(f"layer choice {choice.label()} needs calibration inputs; accepted: "
                                    "CompressedLinear(..., calibration=<the layer's input activations (tokens, K)>)")
            found: AwqResult = awq_search(weight, calibration, choice, ALPHAS if awq_alpha is None else (awq_alpha,))
            self.awq = {"alpha": found.alpha, "error": found.error, "plain_error": found.plain_error}
            weight = found.weight
            self.register_buffer("input_scale", (1.0 / found.scale).to(TORCH_DTYPES[ACT_DTYPE["int4"]]))
        nm = self.spec.nm
        if choice.rank is None:
            params = {"weight": weight}
            stored = {"": stored_form(weight, choice.format, choice.group_size, nm)}
        else:
            a, b = low_rank_factors(weight, choice.rank)
            params = {"weight_a": a, "weight_b": b}
            stored = {"a_": stored_form(a, choice.format, choice.group_size, nm), "b_": stored_form(b, choice.format, choice.group_size, nm)}
        if bias is not None:
            params["bias"] = bias
        for prefix, tensors in stored.items():
            for key, value in tensors.items():
                self.register_buffer(f"{prefix}{key}", value.contiguous())
        if bias is not None:
            self.register_buffer("bias", bias.to(BIAS_DTYPES[BIAS_BYTES[choice.format]] or torch.float32))
        self._state = self.kernel.prepare(self.spec, params)
        for key, value in self._state.items():
            if isinstance(value, torch.Tensor):
                self.register_buffer(f"kernel_{key.replace('.', '_')}", value, persistent=False)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """Keep the kernel's state pointing at the buffers after `.to()` / `.cuda()`."""
        super()._apply(fn, recurse)
        for key in list(self._state):
            buffer = self._buffers.get(f"kernel_{key.replace('.', '_')}")
            if buffer is not None:
                self._state[key] = buffer
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(self.act_dtype).contiguous()
        if self.awq is not None:
            x2 = x2 * self.input_scale
        y = self.kernel.run(self.spec, self._state, x2)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def extra_repr(self) -> str:
        return f"{self.in_features}→{self.out_features}, {self.choice.label()}, kernel={self.kernel.name}"


class TomeState:
    """Token sizes shared by the ToMe blocks of one model during one forward pass."""

    def __init__(self) -> None:
        self.size: torch.Tensor | None = None
        self.tokens: list[int] = []  # tokens entering each MLP, for inspection

    def reset(self, *_: object) -> None:
        self.size, self.tokens = None, []


class TokenMerge(nn.Module):
    """One block's token merge: the matching metric (the keys averaged over heads), then the shared
    matcher sample by sample, exactly the `tome_merge` kernel the profiler times (torch.vmap over
    it cost 175-300 us more per block on a 2-core Xeon). A module of its own so that it is timed in
    place like a layer (`profilers.inmodel`): its name, `{block}.tome_merge`, is the owner of the
    merge kernel in `model_kernels`."""

    def __init__(self, r: int):
        super().__init__()
        self.r = r

    def forward(self, x: torch.Tensor, k: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        metric = k.mean(1)
        merged = [bipartite_merge(x[i], metric[i], size[i], self.r) for i in range(x.shape[0])]
        return torch.stack([m[0] for m in merged]), torch.stack([m[1] for m in merged])

    def extra_repr(self) -> str:
        return f"r={self.r}"


class TomeBlock(nn.Module):
    """A timm-style block (norm1, attn.qkv/proj, norm2, mlp) with proportional attention and
    `r` tokens merged between attention and MLP (`tome_merge`). Children keep their names."""

    def __init__(self, block: nn.Module, r: int, state: TomeState):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.r = r
        self.tome = state
        if r > 0:
            self.tome_merge = TokenMerge(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        heads = self.attn.num_heads
        size = self.tome.size
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, t, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        bias = None if size is None else size.log()[:, None, None, :, 0].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + self.attn.proj(out.transpose(1, 2).reshape(b, t, c))
        if self.r > 0:
            if size is None:
                size = torch.ones(b, t, 1, dtype=x.dtype, device=x.device)
            x, size = self.tome_merge(x, k, size)
            self.tome.size = size
        self.tome.tokens.append(x.shape[1])
        return x + self.mlp(self.norm2(x))


def storage_bytes(module: nn.Module) -> int:
    """Bytes of a module's state_dict tensors (what a checkpoint of it stores)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


__all__ = ["CompressedLinear", "TokenMerge", "TomeBlock", "TomeState", "low_rank_factors", "pack_bits", "storage_bytes", "stored_form"]
