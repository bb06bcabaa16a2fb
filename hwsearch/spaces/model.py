"""Model descriptions: named linear layers with shapes, grouped into blocks, tokens per block.

A `ModelSpec` is pure description. It is what a search varies (its layers carry the knobs), what
the latency model composes (shapes and rows per layer), and what a `Plan` is validated against.
Layer names are the fully-qualified module names of the torch model, so a plan made on a spec
applies to the real module by name.

Token merging changes the rows a layer sees: `with_merge(schedule)` returns the spec whose block
and layer token counts follow a per-block merge schedule (ToMe merges between attention and
MLP, so a block's attention layers see its incoming tokens and its MLP layers r fewer).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hwsearch.errors import HwsearchError

BLOCK_KINDS = ("vit", "llama", "bert")
# Which layers of a block sit after the merge point (between attention and MLP).
MLP_ROLES = frozenset({"fc1", "fc2", "gate", "up", "down", "ffn_in", "ffn_out"})
# Which knobs a group constraint can tie together.
KNOB_NAMES = ("format", "group_size", "sparsity", "rank")


@dataclass(frozen=True)
class Layer:
    """One `nn.Linear`: y = x W^T with W (N, K), fed `tokens` rows per sample."""

    name: str
    K: int
    N: int
    tokens: int
    block: int | None = None
    role: str = "other"
    bias: bool = True
    op: str = "linear"

    @property
    def after_merge(self) -> bool:
        return self.block is not None and self.role in MLP_ROLES

    @property
    def params(self) -> int:
        return self.K * self.N + (self.N if self.bias else 0)


@dataclass(frozen=True)
class Block:
    """A transformer block: attention then MLP, as the latency model needs to see it.

    `tokens` enter the block (attention runs on them); `mlp_tokens` leave the merge point
    (equal to `tokens` when the block merges nothing). `kv_tokens` is the attention context
    (decode: the cache length), None when it equals `tokens`.
    """

    index: int
    prefix: str
    kind: str
    dim: int
    heads: int
    head_dim: int
    mlp_dim: int
    tokens: int
    mlp_tokens: int | None = None
    kv_heads: int | None = None
    kv_tokens: int | None = None
    causal: bool = False
    norm: str = "layernorm"
    act: str = "gelu"

    @property
    def merged(self) -> int:
        return self.tokens - (self.mlp_tokens if self.mlp_tokens is not None else self.tokens)


@dataclass(frozen=True)
class LayerGroup:
    """Layers that must agree on some knobs: q/k/v share a format; fused layers move together."""

    name: str
    members: tuple[str, ...]
    shared: tuple[str, ...] = ("format", "group_size")
    reason: str = "share one format"


@dataclass(frozen=True)
class ModelSpec:
    """A model as the search sees it (see module docstring)."""

    name: str
    layers: tuple[Layer, ...]
    blocks: tuple[Block, ...] = ()
    groups: tuple[LayerGroup, ...] = ()
    tokens: int = 1
    class_token: bool = False
    has_weights: bool = False
    dtype: str = "fp32"
    options: dict[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise HwsearchError(f"model {self.name!r} names layer(s) {dup} twice; accepted: unique layer names")
        known = set(names)
        for group in self.groups:
            missing = [m for m in group.members if m not in known]
            if missing:
                raise HwsearchError(f"group {group.name!r} of model {self.name!r} names unknown layer(s) {missing}")

    # -- lookup ------------------------------------------------------------------------------
    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise HwsearchError(
            f"unknown layer {name!r} for model {self.name!r}; accepted: {_sample(self.layer_names)}"
        )

    def groups_of(self, name: str) -> tuple[LayerGroup, ...]:
        return tuple(g for g in self.groups if name in g.members)

    @property
    def params(self) -> int:
        """Parameters of the described linear layers."""
        return sum(layer.params for layer in self.layers)

    @property
    def mergeable(self) -> bool:
        """Token merging needs ViT-style blocks with a protected class token."""
        return bool(self.blocks) and self.class_token and all(b.kind == "vit" for b in self.blocks)

    # -- token merging -------------------------------------------------------------------------
    def merge_schedule(self, merge: object) -> tuple[int, ...]:
        """Per-block tokens merged from `None`, a `{r, start_block}` mapping/object or a list.

        The delayed onset: no merging before `start_block`; from it on, `r` per block.
        """
        n = len(self.blocks)
        if merge is None:
            return (0,) * n
        if isinstance(merge, list | tuple):
            sched = tuple(int(r) for r in merge)
            if len(sched) != n:
                raise HwsearchError(
                    f"merge schedule has {len(sched)} entries for {n} blocks of {self.name!r}; accepted: one r per block"
                )
        else:
            get = merge.get if isinstance(merge, dict) else lambda k, d=None: getattr(merge, k, d)
            per_block = get("per_block", None)
            if per_block is not None:
                return self.merge_schedule(list(per_block))
            r, start = int(get("r", 0) or 0), int(get("start_block", 0) or 0)
            if not 0 <= start <= n:
                raise HwsearchError(
                    f"merge start_block={start} is out of range for {self.name!r}; accepted: 0 to {n}"
                )
            sched = tuple(r if i >= start else 0 for i in range(n))
        if any(sched) and not self.mergeable:
            raise HwsearchError(
                f"model {self.name!r} cannot merge tokens; accepted: merging only on ViT-style models with a class token"
            )
        tokens = self.tokens
        for i, r in enumerate(sched):
            limit = (tokens - 1) // 2
            if not 0 <= r <= limit:
                raise HwsearchError(
                    f"merge r={r} at block {i} is out of range for {tokens} tokens; accepted: 0 to {limit}"
                )
            tokens -= r
        return sched

    def with_merge(self, merge: object) -> ModelSpec:
        """The spec whose block and layer token counts follow the merge schedule."""
        sched = self.merge_schedule(merge)
        blocks, attn_tokens, mlp_tokens = [], {}, {}
        tokens = self.tokens
        for block, r in zip(self.blocks, sched, strict=True):
            blocks.append(replace(block, tokens=tokens, mlp_tokens=tokens - r))
            attn_tokens[block.index], mlp_tokens[block.index] = tokens, tokens - r
            tokens -= r
        layers = []
        for layer in self.layers:
            if layer.block is None or layer.block not in attn_tokens:
                layers.append(layer)
            else:
                rows = mlp_tokens[layer.block] if layer.after_merge else attn_tokens[layer.block]
                layers.append(replace(layer, tokens=rows))
        return replace(self, blocks=tuple(blocks), layers=tuple(layers))

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.layers)} linear layers, {len(self.blocks)} blocks, "
            f"{self.tokens} tokens, {self.params / 1e6:.2f} M linear parameters"
        )


def default_groups(layers: tuple[Layer, ...] | list[Layer]) -> tuple[LayerGroup, ...]:
    """The group constraints of a block family, from layer roles (shared by catalogue and tracer).

    q/k/v (Llama) and query/key/value (BERT) share one format; gate/up are fused into one GEMM in
    every serving stack, so they move together on every knob.
    """
    by_block: dict[int, dict[str, str]] = {}
    for layer in layers:
        if layer.block is not None:
            by_block.setdefault(layer.block, {})[layer.role] = layer.name
    groups = []
    for block, roles in sorted(by_block.items()):
        for members, tag, shared, reason in (
            (("q", "k", "v"), "qkv", ("format", "group_size"), "share one format"),
            (("query", "key", "value"), "qkv", ("format", "group_size"), "share one format"),
            (("gate", "up"), "gate_up", KNOB_NAMES, "are fused and move together"),
        ):
            if all(m in roles for m in members):
                groups.append(LayerGroup(f"block{block}.{tag}", tuple(roles[m] for m in members), shared, reason))
    return tuple(groups)


def _sample(names: tuple[str, ...], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} layers)" if len(names) > limit else "")
