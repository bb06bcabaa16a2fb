"""`from_torch`: a ModelSpec from any torch model, by running it once and watching its linears.

Forward hooks on every `nn.Linear` record the rows each one really sees; the block a layer
belongs to is the first `name.<index>` step of its path (timm `blocks.3`, Hugging Face
`layers.3` / `encoder.layer.3`); roles come from the layer's name so the group constraints are
the catalogue's. Attention geometry (heads, kv heads, head dim) is read from the attributes the
common implementations keep on their attention modules. An attention that reads a KV cache (it
has `kv_choice`, as `LlamaLM`'s does) is watched too: the tokens already cached when it runs make
the block a decode step over that context (the catalogue's rule: at most 16 new tokens) or a
causal prefill. Torch is imported lazily: `spaces` is pure description otherwise.
"""

from __future__ import annotations

import re
from typing import Any

from hwsearch.errors import HwsearchError
from hwsearch.spaces.catalog import DECODE_MAX_TOKENS
from hwsearch.spaces.model import Block, Layer, ModelSpec, default_groups

_BLOCK = re.compile(r"^(.*?\.\d+)\.")
# (suffix of the module path, role); first match wins.
_ROLES: tuple[tuple[str, str], ...] = (
    ("attn.qkv", "qkv"), ("attn.proj", "proj"), ("mlp.fc1", "fc1"), ("mlp.fc2", "fc2"),
    ("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("o_proj", "o"),
    ("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down"),
    ("attention.self.query", "query"), ("attention.self.key", "key"), ("attention.self.value", "value"),
    ("attention.output.dense", "attn_out"), ("intermediate.dense", "ffn_in"), ("output.dense", "ffn_out"),
)
_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_heads")
_HEAD_DIM = ("head_dim", "attention_head_size")


def _role(name: str, block: int | None) -> str:
    if block is None:
        return "head" if name.split(".")[-1] in ("head", "classifier", "lm_head") else "other"
    for suffix, role in _ROLES:
        if name.endswith(suffix):
            return role
    return "other"


def _first_attr(modules: list[Any], names: tuple[str, ...]) -> int | None:
    for module in modules:
        for attr in names:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        config = getattr(module, "config", None)
        for attr in names:
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def from_torch(module: Any, example_inputs: Any, name: str | None = None, has_weights: bool = True) -> ModelSpec:
    """Trace `module(*example_inputs)` once (no grad) and describe its linears and blocks.

    Rows per layer are per sample: the second-to-last dimension of a layer's input when it has
    three or more dimensions (batch, tokens, features), else 1.

    >>> import torch
    >>> import hwsearch as hw
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    >>> spec = hw.from_torch(net, torch.randn(1, 16, 64), name="mlp")
    >>> [(layer.name, layer.K, layer.N, layer.tokens) for layer in spec.layers]
    [('0', 64, 256, 16), ('2', 256, 64, 16)]
    """
    import torch
    from torch import nn

    if not isinstance(module, nn.Module):
        raise HwsearchError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}; accepted: nn.Module")
    args = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
    seen: dict[str, tuple[int, int, int, bool]] = {}
    cached: dict[str, int] = {}  # attention module -> tokens in its KV cache before the first call
    handles = []

    def pre_hook(mod_name: str):
        def record(mod: nn.Module, inputs: tuple) -> None:
            cache = inputs[1] if len(inputs) > 1 else None
            cached.setdefault(mod_name, len(cache) if cache is not None else 0)

        return record

    def hook(mod_name: str):
        def record(mod: nn.Linear, inputs: tuple, output: Any) -> None:
            x = inputs[0]
            rows = int(x.shape[-2]) if x.dim() >= 3 else 1
            seen.setdefault(mod_name, (mod.in_features, mod.out_features, rows, mod.bias is not None))

        return record

    for mod_name, mod in module.named_modules():
        if isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(hook(mod_name)))
        elif hasattr(mod, "kv_choice"):
            handles.append(mod.register_forward_pre_hook(pre_hook(mod_name)))
    try:
        with torch.no_grad():
            module(*args)
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise HwsearchError("from_torch found no nn.Linear that runs on the example inputs; accepted: a model with linear layers")

    prefixes: list[str] = []
    layers = []
    for mod_name, (k, n, rows, bias) in seen.items():
        match = _BLOCK.match(mod_name)
        block = None
        if match:
            if match.group(1) not in prefixes:
                prefixes.append(match.group(1))
            block = prefixes.index(match.group(1))
        layers.append(Layer(mod_name, k, n, rows, block, _role(mod_name, block), bias))

    modules = dict(module.named_modules())
    blocks = []
    for index, prefix in enumerate(prefixes):
        members = [layer for layer in layers if layer.block == index]
        roles = {layer.role for layer in members}
        kind = "vit" if "qkv" in roles else "llama" if "q" in roles else "bert" if "query" in roles else "other"
        inner = [m for n_, m in modules.items() if n_ == prefix or n_.startswith(prefix + ".")]
        first = members[0]
        dim = first.K
        heads = _first_attr(inner, _HEADS) or 1
        head_dim = _first_attr(inner, _HEAD_DIM) or dim // heads
        kv_heads = _first_attr(inner, _KV_HEADS)
        mlp_in = next((m for m in members if m.role in ("fc1", "gate", "ffn_in")), None)
        past = next((v for n_, v in cached.items() if n_.startswith(prefix + ".")), None)
        kv_tokens, causal = None, False
        if kind == "llama" and past is not None:
            decode = first.tokens <= DECODE_MAX_TOKENS
            kv_tokens, causal = (past + first.tokens if decode or past else None), not decode
        blocks.append(
            Block(
                index, prefix, kind, dim, heads, head_dim, mlp_in.N if mlp_in else dim, first.tokens,
                kv_heads=kv_heads, kv_tokens=kv_tokens, causal=causal,
                norm="rmsnorm" if kind == "llama" else "layernorm",
                act="silu_mul" if kind == "llama" else "gelu",
            )
        )
    class_token = any(p_name.endswith("cls_token") for p_name, _ in module.named_parameters())
    tokens = blocks[0].tokens if blocks else max(layer.tokens for layer in layers)
    return ModelSpec(
        name or type(module).__name__, tuple(layers), tuple(blocks), default_groups(layers),
        tokens=tokens, class_token=class_token, has_weights=has_weights,
    )
