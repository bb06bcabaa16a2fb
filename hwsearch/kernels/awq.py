"""AWQ (Lin et al., MLSys 2024): activation-aware per-input-channel scales for int4 weights.

A few input channels of a linear layer carry much larger activations than the rest; rounding
the weights that multiply them costs most of the output error. AWQ scales those weight columns
up before quantising and divides the input by the same scale, so y = (x / s) Q(W diag(s))^T:

- s = mean|x|^alpha per input channel over the calibration tokens, normalised so that
  sqrt(max(s) min(s)) = 1 (llm-awq's normalisation: the scales straddle 1);
- alpha on `ALPHAS` is chosen per layer by what the layer's rounding does to the *model* on
  the calibration inputs (`model_alphas`: the layer alone scaled and quantised, with Q the
  layer's own choice: its N:M mask, rank and int4 groups), measured by the quality task's own
  divergence where there is one (the next-token KL the sensitivity proxy adds up; the
  sensitivity table and `apply_plan` choose alike), else by the output's error relative to the
  uncompressed model's. alpha = 0 is plain int4, so on the calibration data AWQ never moves the
  model more than plain int4 does. On tiny_llama the KL-chosen alphas lowered the one-layer KL of
  19/29 layers at group 128 (17/29 on held-out files) where the output's squared error had
  lowered 14/29, and left the whole model's held-out perplexity no worse than plain int4's
  rounding noise at groups 128 and 32 (256 windows). `awq_search` alone (no model at hand)
  chooses by the layer's own output error, ||x W^T - (x/s) Q(W diag(s))^T||^2, which is what
  llm-awq minimises; on tiny_llama that lowered the layer's error every time but made 16 of 29
  layers *more* harmful to the model's next-token distribution than plain int4 at group 128:
  the channels a layer's error weighs equally are not equally read downstream.

No clipping of the groups' ranges (llm-awq's `auto_clip`): chosen per group by the output error
it lowers, it shrinks the large weights, and on tiny_llama it raised the calibration perplexity
every time it was tried (all layers int4: g128 +0.0262 with it vs +0.0118 without, g32 +0.0199
vs +0.0097; on plain int4 +0.0161 vs +0.0121 and +0.0140 vs +0.0030) while the divergence it
lowered moved by 4-9 % only.

The runtime (`CompressedLinear`) quantises `AwqResult.weight` like any int4 weight and
multiplies its input by `1 / scale` first. The scale is not folded into a preceding norm: a
norm feeds several layers (q, k, v) whose choices the search makes one by one, each with its
own scale, and the sensitivity proxy changes one layer at a time, so the input scale stays
with the layer (ModelOpt's `pre_quant_scale` is the same runtime form).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hwsearch.errors import HwsearchError
from hwsearch.kernels.quant import apply_nm, dequantize_int4_groups, low_rank_factors, quantize_int4_groups
from hwsearch.spaces.formats import parse_sparsity
from hwsearch.spaces.plan import LayerChoice

ALPHAS: tuple[float, ...] = tuple(i / 10 for i in range(11))
MAX_TOKENS = 4096  # calibration rows a layer keeps (an even stride over what the model saw)
_MIN_SCALE = 1e-4


@dataclass(frozen=True)
class AwqResult:
    """One layer's AWQ: the scale s (K,), the weight to quantise W diag(s), the alpha
    chosen, and the relative output error on the calibration rows with AWQ and with plain int4."""

    scale: torch.Tensor
    weight: torch.Tensor
    alpha: float
    error: float
    plain_error: float


def keep_rows(x: torch.Tensor, limit: int = MAX_TOKENS) -> torch.Tensor:
    """At most `limit` rows of (T, K) activations, an even stride over them (deterministic)."""
    x = x.reshape(-1, x.shape[-1])
    if x.shape[0] <= limit:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, limit).round().long()]


def awq_scale(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|x|^alpha, normalised so that sqrt(max(s) min(s)) = 1."""
    s = mean_abs.clamp_min(_MIN_SCALE).pow(alpha)
    return s / (s.max() * s.min()).sqrt()


def _int4(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    q, scale, lo = quantize_int4_groups(weight, group_size)
    return dequantize_int4_groups(q, scale, lo, group_size)


def effective_weight(weight: torch.Tensor, choice: LayerChoice) -> torch.Tensor:
    """The (N, K) weight a compressed layer computes with: N:M mask, low-rank factors and int4
    groups applied as `CompressedLinear` applies them (each factor masked and quantised)."""
    nm, group = parse_sparsity(choice.sparsity), choice.group_size or 128
    if choice.rank is None:
        return _int4(apply_nm(weight, nm), group)
    a, b = low_rank_factors(weight, choice.rank)
    return _int4(apply_nm(b, nm), group) @ _int4(apply_nm(a, nm), group)


def _relative_error(x: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor) -> float:
    return float((x @ weight.T - reference).pow(2).sum() / reference.pow(2).sum().clamp_min(1e-30))


def awq_search(weight: torch.Tensor, x: torch.Tensor, choice: LayerChoice, alphas: tuple[float, ...] = ALPHAS) -> AwqResult:
    """AWQ for one int4 layer: `weight` (N, K) and its calibration inputs `x` (T, K)."""
    if choice.format != "int4":
        raise HwsearchError(f"AWQ scaling is for int4 layers, got {choice.label()}; accepted: format int4")
    w = weight.detach().float()
    x = keep_rows(x.detach().float())
    if x.shape[-1] != w.shape[1] or x.shape[0] == 0:
        raise HwsearchError(
            f"AWQ calibration inputs have shape {tuple(x.shape)} for a layer with {w.shape[1]} inputs; "
            f"accepted: activations (tokens, {w.shape[1]}) with at least one token"
        )
    reference = x @ w.T
    mean_abs = x.abs().mean(0)
    best: tuple[float, float, torch.Tensor] | None = None
    plain = float("nan")
    for alpha in alphas:
        s = awq_scale(mean_abs, alpha)
        err = _relative_error(x / s, reference, effective_weight(w * s, choice))
        plain = err if alpha == 0 else plain
        if best is None or err < best[0]:
            best = (err, alpha, s)
    assert best is not None
    err, alpha, s = best
    if plain != plain:  # alpha 0 not on the grid: measure plain int4 itself
        plain = _relative_error(x, reference, effective_weight(w, choice))
    return AwqResult(s, w * s, float(alpha), float(err), float(plain))


def _fingerprint(*tensors: torch.Tensor) -> tuple[Any, ...]:
    """A cheap content key: shapes and a few moments (enough to tell models and inputs apart)."""
    out: list[Any] = []
    for t in tensors:
        f = t.detach().float()
        out += [tuple(f.shape), round(float(f.sum()), 6), round(float(f.abs().sum()), 6), round(float(f.pow(2).sum()), 6)]
    return tuple(out)


_ALPHA_CACHE: OrderedDict[tuple[Any, ...], float] = OrderedDict()
_ALPHA_CACHE_SIZE = 4096


def _first_tensor(out: Any) -> torch.Tensor:
    """The tensor a model's output leads with (logits, last hidden state, or the output itself)."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise HwsearchError(f"the model's output ({type(out).__name__}) holds no tensor; accepted: a model returning a tensor, "
                        "a tuple or a dict/ModelOutput of tensors")


def model_alphas(model: nn.Module, choices: dict[str, LayerChoice], activations: dict[str, torch.Tensor],
                 run: Callable[[], Any], alphas: tuple[float, ...] = ALPHAS,
                 divergence: Callable[[nn.Module], float] | None = None) -> dict[str, float]:
    """Per AWQ layer, the alpha whose scaled int4 layer, alone in the otherwise uncompressed
    `model`, moves the model least on the calibration inputs: by `divergence(model)` when given
    (a quality task's own output divergence, e.g. the next-token KL the sensitivity proxy adds
    up), else by the relative squared error of `run()`'s output (one forward pass) against the
    uncompressed model's. Each layer is swapped in with a forward hook (no copy of the model);
    answers are cached by the model's and the layer's content and the measure, so rebuilding a
    plan is cheap."""
    if not choices:
        return {}
    whole = _fingerprint(*(p for p in model.parameters()))
    measure = "relative squared output error" if divergence is None else getattr(divergence, "__qualname__", repr(divergence))
    out: dict[str, float] = {}
    reference: torch.Tensor | None = None

    def moved() -> float:
        if divergence is not None:
            return float(divergence(model))
        with torch.no_grad():
            got = _first_tensor(run()).detach().float()
        assert reference is not None
        return float((got - reference).pow(2).sum() / reference.pow(2).sum().clamp_min(1e-30))

    for name, choice in choices.items():
        module = model.get_submodule(name)
        w = module.weight.detach().float()
        bias = None if module.bias is None else module.bias.detach().float()
        x = activations[name]
        key = (whole, name, choice.label(), _fingerprint(x), alphas, measure)
        if key in _ALPHA_CACHE:
            _ALPHA_CACHE.move_to_end(key)
            out[name] = _ALPHA_CACHE[key]
            continue
        if reference is None and divergence is None:
            with torch.no_grad():
                reference = _first_tensor(run()).detach().float()
        mean_abs = x.abs().mean(0)
        best: tuple[float, float] | None = None
        for alpha in alphas:
            s = awq_scale(mean_abs, alpha)
            w_eff = effective_weight(w * s, choice)

            def swap(_m: nn.Module, args: tuple, _out: Any, s: torch.Tensor = s, w_eff: torch.Tensor = w_eff,
                     bias: torch.Tensor | None = bias) -> torch.Tensor:
                y = torch.nn.functional.linear(args[0].float() / s, w_eff, bias)
                return y.to(_out.dtype)

            handle = module.register_forward_hook(swap)
            try:
                err = moved()
            finally:
                handle.remove()
            if best is None or err < best[0]:
                best = (err, alpha)
        assert best is not None
        out[name] = _ALPHA_CACHE[key] = best[1]
        while len(_ALPHA_CACHE) > _ALPHA_CACHE_SIZE:
            _ALPHA_CACHE.popitem(last=False)
    return out


__all__ = ["ALPHAS", "AwqResult", "awq_scale", "awq_search", "effective_weight", "keep_rows", "model_alphas"]
