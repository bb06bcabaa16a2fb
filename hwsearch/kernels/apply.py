"""`apply_plan(model, plan)`: a torch module that really runs a compression plan.

Every layer the plan compresses becomes a `CompressedLinear` running its registered kernel
(real int8/int4 CPU kernels where torch has them, exact emulation elsewhere), the one the
device's `Dispatch` measured fastest when one is given; blocks from the
first merging block on become `TomeBlock`s; each decoder block the plan's `kv_cache` names reads
its KV cache in that format. Layers the plan leaves uncompressed are the original
modules, so the identity plan gives back a copy of the model that computes exactly the same.

AWQ int4 layers need calibration: `calibration=` the model's calibration inputs (a tensor, a
tuple of positional inputs or a dict of keyword inputs); each AWQ layer's input activations
are collected with forward hooks on the uncompressed model (`layer_inputs`), each layer's alpha
is chosen by what it does to the model's output on the same inputs (`awq.model_alphas`: by the
quality task's own divergence when `divergence=` gives it), then the layer is built from them (`hwsearch.kernels.awq`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hwsearch.errors import HwsearchError
from hwsearch.kernels.awq import MAX_TOKENS, keep_rows, model_alphas
from hwsearch.kernels.dispatch import Dispatch
from hwsearch.kernels.kvcache import DecodeStep
from hwsearch.kernels.modules import CompressedLinear, TomeBlock, TomeState
from hwsearch.spaces.catalog import CATALOG, get_model
from hwsearch.spaces.model import Block, ModelSpec
from hwsearch.spaces.plan import Plan, validate_plan


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _vit_blocks(model: nn.Module) -> nn.Module:
    blocks = getattr(model, "blocks", None)
    ok = isinstance(blocks, nn.Sequential | nn.ModuleList) and all(
        all(hasattr(b, a) for a in ("norm1", "attn", "norm2", "mlp")) and hasattr(b.attn, "qkv") for b in blocks
    )
    if not ok or not hasattr(model, "cls_token"):
        raise HwsearchError(
            f"{type(model).__name__} has no timm-style ViT blocks with a class token; accepted: token merging only on such models"
        )
    return blocks


def cache_reader(model: nn.Module, prefix: str) -> nn.Module:
    """The attention module of block `prefix` that reads a KV cache (it has `kv_choice`)."""
    modules = dict(model.named_modules())
    found = [m for n, m in modules.items() if (n == prefix or n.startswith(prefix + ".")) and hasattr(m, "kv_choice")]
    if not found:
        raise HwsearchError(
            f"plan sets the KV cache of {prefix!r}, which has no attention reading a KV cache in {type(model).__name__}; "
            "accepted: decoder blocks of a model whose attention has kv_choice (LlamaLM, LlamaDecoder)"
        )
    return found[0]


def set_kv_caches(model: nn.Module, plan: Plan) -> None:
    """Each decoder block `plan.kv_cache` names reads its KV cache in that format (through
    `kvcache.make_cache`); the others keep theirs (the compute dtype unless set before)."""
    for prefix, choice in (plan.kv_cache or {}).items():
        cache_reader(model, prefix).kv_choice = choice


def merge_schedule(model: nn.Module, plan: Plan, spec: ModelSpec | None) -> tuple[int, ...]:
    if spec is not None:
        return spec.merge_schedule(plan.merge)
    if plan.merge is None:
        return ()
    blocks = _vit_blocks(model)
    tokens = int(model.pos_embed.shape[1]) if hasattr(model, "pos_embed") else None
    if tokens is None:
        raise HwsearchError("token merging needs the model's token count; accepted: pass spec= or a model with pos_embed")
    dim = blocks[0].norm1.normalized_shape[0]
    heads = blocks[0].attn.num_heads
    described = tuple(Block(i, f"blocks.{i}", "vit", dim, heads, dim // heads, dim, tokens) for i in range(len(blocks)))
    return ModelSpec(type(model).__name__, (), described, tokens=tokens, class_token=True).merge_schedule(plan.merge)


def forward(module: nn.Module, inputs: Any) -> Any:
    """One forward pass on `inputs`: a tensor, a tuple of positional inputs, a dict of keyword ones
    (a Hugging Face model's tokenised batch) or a `kvcache.DecodeStep` (a decoder's step over its cache)."""
    if isinstance(inputs, DecodeStep):
        return inputs.run(module)
    if isinstance(inputs, dict):
        return module(**inputs)
    return module(*inputs) if isinstance(inputs, tuple) else module(inputs)


def layer_inputs(model: nn.Module, names: Sequence[str], inputs: Any, max_rows: int = MAX_TOKENS) -> dict[str, torch.Tensor]:
    """Each named linear's input activations (tokens, K) when `model` runs on `inputs` (one
    forward pass, no gradients; at most `max_rows` rows a layer, an even stride over them)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        hook = lambda _m, args, _out, n=name: seen[n].append(args[0].detach().float().reshape(-1, args[0].shape[-1]))  # noqa: E731
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n, xs in seen.items() if not xs]
    if missing:
        raise HwsearchError(f"layer(s) {', '.join(missing[:3])} did not run on the calibration inputs; accepted: "
                            f"inputs {type(model).__name__} runs every AWQ layer on")
    return {n: keep_rows(torch.cat(xs), max_rows) for n, xs in seen.items()}


def apply_plan(
    model: nn.Module, plan: Plan, spec: ModelSpec | None = None, backend: str = "cpu", inplace: bool = False,
    validate: bool = True, dispatch: Dispatch | None = None, calibration: Any = None,
    divergence: Callable[[nn.Module], float] | None = None,
) -> nn.Module:
    """The model compressed as `plan` says (a copy unless `inplace`).

    `spec` (default: the catalogue entry named by the plan, if any) validates the plan and gives
    each layer its rows; without it, layer names are checked against the module itself.
    `validate=False` skips the group constraints (sensitivity measurements change one layer
    of a group on purpose). `calibration`: the model's calibration inputs, needed (only) when
    the plan has AWQ layers; `divergence(model)`: how far a model's output moved on them, which
    each AWQ layer's alpha minimises (default: the output's relative squared error; a quality
    task passes its own, `QualityTask.calib_divergence`).

    >>> import torch
    >>> import hwsearch as hw
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    >>> spec = hw.from_torch(net, torch.randn(1, 16, 64), name="mlp")
    >>> plan = hw.Plan(model="mlp", layers={"0": hw.LayerChoice(format="int8"), "2": hw.LayerChoice(rank=32)})
    >>> small = hw.apply_plan(net, plan, spec)
    >>> type(small[0]).__name__, small(torch.randn(1, 16, 64)).shape
    ('CompressedLinear', torch.Size([1, 16, 64]))
    """
    if spec is None and plan.model.partition(":")[0] in CATALOG:
        spec = get_model(plan.model)
    if spec is not None and validate:
        validate_plan(plan, spec)
    modules = dict(model.named_modules())
    for name in plan.layers:
        target = modules.get(name)
        if not isinstance(target, nn.Linear):
            what = "no module" if target is None else f"a {type(target).__name__}, not an nn.Linear"
            raise HwsearchError(f"plan layer {name!r} is {what} in {type(model).__name__}; accepted: names of nn.Linear modules")
    scaled = [n for n, c in plan.layers.items() if c.scaling == "awq"]
    if scaled and calibration is None:
        more = f", ... ({len(scaled)} layers)" if len(scaled) > 3 else ""
        raise HwsearchError(f"plan has AWQ int4 layers ({', '.join(scaled[:3])}{more}) and no calibration data; accepted: "
                            "apply_plan(..., calibration=<the model's calibration inputs: a tensor, tuple or dict of keyword inputs>)")
    activations = layer_inputs(model, scaled, calibration) if scaled else {}
    alphas = model_alphas(model, {n: plan.layers[n] for n in scaled}, activations, lambda: forward(model, calibration),
                          divergence=divergence)
    out = model if inplace else copy.deepcopy(model)
    modules = dict(out.named_modules())
    dtype = spec.dtype if spec is not None else "fp32"
    for name, choice in plan.layers.items():
        if choice.is_identity(dtype) and choice.format == "fp32":
            continue
        rows = spec.layer(name).tokens if spec is not None else 1
        _set_module(out, name, CompressedLinear(modules[name], choice, rows=rows, backend=backend, dispatch=dispatch,
                                                calibration=activations.get(name), awq_alpha=alphas.get(name)))
    set_kv_caches(out, plan)
    schedule = merge_schedule(out, plan, spec)
    if any(schedule):
        blocks = _vit_blocks(out)
        state = TomeState()
        first = next(i for i, r in enumerate(schedule) if r)
        for i in range(first, len(blocks)):
            blocks[i] = TomeBlock(blocks[i], schedule[i], state)
        out.tome = state  # type: ignore[assignment]
        out.register_forward_pre_hook(lambda *_: state.reset())
    return out
