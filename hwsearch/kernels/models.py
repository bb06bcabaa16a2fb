"""Torch model definitions with the upstream module names, for real-weight work and tracing.

`ViT` follows timm's VisionTransformer naming (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2`, `norm`, `head`), so a plan written
against a catalogue ViT names the same modules. `LlamaDecoder` is a stack of Llama-style
decoder blocks named as Hugging Face does (`layers.{i}.self_attn.{q,k,v,o}_proj`,
`mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm`) on hidden states;
`LlamaLM` adds `embed_tokens`, `norm` and `lm_head` and decodes through per-block KV caches.
All take their shapes from the catalogue configs in `hwsearch.spaces.catalog`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hwsearch.errors import HwsearchError
from hwsearch.kernels.kvcache import KVCache, make_cache
from hwsearch.spaces.catalog import LLAMA3_8B, TINY_LLAMA, LlamaConfig, ViTConfig, get_model
from hwsearch.spaces.plan import KVCacheChoice


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.channels, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (batch, heads, tokens, head_dim)."""
        b, t, _ = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.split(x)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm `Block` without layer scale / drop path)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A timm-style Vision Transformer with a class token, classifying from the class token."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.tokens, cfg.dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(cfg.dim, cfg.heads, cfg.mlp_dim) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def rope(x: torch.Tensor, start: int, theta: float) -> torch.Tensor:
    """Rotary position embedding of (batch, heads, tokens, head_dim) at positions start, start+1, ...:
    a decode step continues the positions of the tokens already in the cache."""
    head_dim, t = x.shape[-1], x.shape[-2]
    pos = torch.arange(start, start + t, dtype=torch.float32)
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = torch.outer(pos, inv).repeat(1, 2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin


class LlamaAttention(nn.Module):
    """Grouped-query attention with RoPE that reads its keys and values through a KV cache.

    `kv_choice` (set by `apply_plan` from `plan.kv_cache`) is the cache format; `new_cache`
    makes that cache with `kvcache.make_cache`, so a registered quantised format runs without
    the model knowing it. Without a cache a forward is a causal pass over its own tokens, still
    through a fresh cache, so the cache format shapes every prediction as in decoding.
    """

    kv_choice: KVCacheChoice | None = None

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.rope_theta = cfg.rope_theta
        self.q_proj = nn.Linear(cfg.dim, cfg.heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.heads * cfg.head_dim, cfg.dim, bias=False)

    def new_cache(self, dtype: torch.dtype = torch.float32) -> KVCache:
        return make_cache(self.kv_choice, dtype)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        cache = self.new_cache(x.dtype) if cache is None else cache
        past = len(cache)
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, past, self.rope_theta), rope(k, past, self.rope_theta)
        cache.append(k, v)
        keys, values = cache.keys(), cache.values()
        if t == 1:  # one new token attends to everything cached
            out = F.scaled_dot_product_attention(q, keys, values, enable_gqa=True)
        elif past == 0:
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=True)
        else:  # a chunk appended to a non-empty cache: token i sees the cache and chunk tokens <= i
            mask = torch.arange(past + t)[None, :] <= past + torch.arange(t)[:, None]
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn, bias=False)
        self.down_proj = nn.Linear(cfg.ffn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.dim, eps=1e-5)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = nn.RMSNorm(cfg.dim, eps=1e-5)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def _check_caches(caches: list[KVCache] | None, layers: int) -> list[KVCache | None]:
    if caches is None:
        return [None] * layers
    if len(caches) != layers:
        raise HwsearchError(f"got {len(caches)} KV caches for {layers} decoder blocks; accepted: one per block (new_caches())")
    return list(caches)


class LlamaDecoder(nn.Module):
    """`blocks` Llama-style decoder blocks on hidden states (batch, tokens, dim)."""

    def __init__(self, cfg: LlamaConfig, blocks: int = 1):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList([LlamaBlock(cfg) for _ in range(blocks)])

    def new_caches(self, dtype: torch.dtype = torch.float32) -> list[KVCache]:
        """One empty cache per block, each in the format its attention's `kv_choice` names."""
        return [layer.self_attn.new_cache(dtype) for layer in self.layers]

    def forward(self, x: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        for layer, cache in zip(self.layers, _check_caches(caches, len(self.layers)), strict=True):
            x = layer(x, cache)
        return x


class LlamaLM(LlamaDecoder):
    """A Llama-style causal language model named as the catalogue's `llama_spec` (and Hugging Face's
    `LlamaModel` without the `model.` prefix): `embed_tokens`, `layers.{i}`, `norm`, `lm_head`.

    `forward(ids, caches)` gives next-token logits (batch, tokens, vocab); with `caches` (from
    `new_caches()`) it continues after what they hold and appends to them, so a prefill then
    single-token steps compute what one forward over the whole sequence does.
    """

    def __init__(self, cfg: LlamaConfig, blocks: int | None = None):
        super().__init__(cfg, cfg.layers if blocks is None else blocks)
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.dim)
        self.norm = nn.RMSNorm(cfg.dim, eps=1e-5)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab, bias=False)

    def forward(self, ids: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:  # type: ignore[override]
        return self.lm_head(self.norm(super().forward(self.embed_tokens(ids), caches)))

    def new_caches(self, dtype: torch.dtype | None = None) -> list[KVCache]:
        return super().new_caches(self.embed_tokens.weight.dtype if dtype is None else dtype)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, steps: int) -> torch.Tensor:
        """Greedy decoding: prefill `ids` (batch, tokens), then `steps` single-token steps through the
        KV caches; returns the `steps` new tokens (batch, steps)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise HwsearchError(f"steps={steps!r} is not a token count; accepted: an integer >= 0")
        caches = self.new_caches()
        out = []
        logits = self(ids, caches)
        for _ in range(steps):
            token = logits[:, -1].argmax(-1, keepdim=True)
            out.append(token)
            logits = self(token, caches)
        return torch.cat(out, dim=1) if out else ids.new_zeros((ids.shape[0], 0))


def seeded_llama(cfg: LlamaConfig, blocks: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaLM:
    """A `LlamaLM` of `blocks` blocks with seeded random weights (std 0.02, Llama's init), for timing
    at real shapes. Refused when its weights would not fit in half of this machine's memory:
    deeper stacks are for prediction only."""
    import os

    n_bytes = _llama_params(cfg, blocks) * torch.empty((), dtype=dtype).element_size()
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    if n_bytes > available // 2:
        raise HwsearchError(
            f"{blocks} blocks of this Llama need {n_bytes / 2**30:.1f} GiB of weights, more than half of the "
            f"{available / 2**30:.1f} GiB available; accepted: fewer blocks (deeper stacks are for latency prediction only)"
        )
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):  # no default init: the weights are allocated once, in `dtype`
        model = LlamaLM(cfg, blocks).to(dtype)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
            else:  # RMSNorm scales
                param.fill_(1.0)
    return model.eval()


LLAMA_CONFIGS: dict[str, LlamaConfig] = {"llama3_8b": LLAMA3_8B, "tiny_llama": TINY_LLAMA}


def catalogue_llama(ref: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaLM:
    """A catalogue decoder (`llama3_8b:blocks=2`) as a real `LlamaLM` with seeded random weights and
    the spec's number of blocks, for timing at its real shapes (trained tiny_llama weights come
    from `search.quality_tasks.load_tiny_llama`)."""
    name = ref.partition(":")[0].strip()
    if name not in LLAMA_CONFIGS:
        raise HwsearchError(f"model {name!r} is not a catalogue decoder; accepted: {', '.join(LLAMA_CONFIGS)}")
    return seeded_llama(LLAMA_CONFIGS[name], int(get_model(ref).options["blocks"]), seed, dtype)


def _llama_params(cfg: LlamaConfig, blocks: int) -> int:
    kv = cfg.kv_heads * cfg.head_dim
    block = cfg.dim * (2 * cfg.dim + 2 * kv) + 3 * cfg.dim * cfg.ffn + 2 * cfg.dim
    return blocks * block + 2 * cfg.vocab * cfg.dim + cfg.dim
