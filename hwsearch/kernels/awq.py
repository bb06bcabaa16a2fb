"""AWQ (Lin et al., MLSys 2024): activation-aware per-input-channel scales for int4 weights.

A few input channels of a linear layer carry much larger activations than the rest; rounding
the weights that multiply them costs most of the output error. AWQ scales those weight columns
up before quantising and divides the input by the same scale, so y = (x / s) Q(W diag(s))^T:

- s = mean|x|^alpha per input channel over the calibration tokens, normalised so that
  sqrt(max(s) min(s)) = 1 (llm-awq's normalisation: the scales straddle 1);
- alpha on `ALPHAS` is chosen per layer by the output error on the calibration tokens,
  ||x W^T - (x/s) Q(W diag(s))^T||^2, with Q the layer's own choice (its N:M mask, rank and
  int4 groups). alpha = 0 is plain int4, so on the calibration data AWQ is never worse;
- then (dense full-rank layers) a clipping ratio per output row and group, on `CLIP_RATIOS`, shrinks
  the group's range before quantising where that lowers the group's share of the output error
  (llm-awq's `auto_clip`, here with the asymmetric range shrunk at both ends).

The runtime (`CompressedLinear`) quantises `AwqResult.weight` like any int4 weight and
multiplies its input by `1 / scale` first. The scale is not folded into a preceding norm: a
norm feeds several layers (q, k, v) whose choices the search makes one by one, each with its
own scale, and the sensitivity proxy changes one layer at a time, so the input scale stays
with the layer (ModelOpt's `pre_quant_scale` is the same runtime form).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hwsearch.errors import HwsearchError
from hwsearch.kernels.quant import apply_nm, dequantize_int4_groups, low_rank_factors, quantize_int4_groups
from hwsearch.spaces.formats import parse_sparsity
from hwsearch.spaces.plan import LayerChoice

ALPHAS: tuple[float, ...] = tuple(i / 10 for i in range(11))
CLIP_RATIOS: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
MAX_TOKENS = 4096  # calibration rows a layer keeps (an even stride over what the model saw)
CLIP_TOKENS = 512  # rows the clipping search uses (llm-awq: 512 tokens)
_MIN_SCALE = 1e-4


@dataclass(frozen=True)
class AwqResult:
    """One layer's AWQ: the scale s (K,), the weight to quantise W diag(s) (clipped), the alpha
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


def clip_groups(weight: torch.Tensor, x: torch.Tensor, group_size: int, ratios: tuple[float, ...] = CLIP_RATIOS) -> torch.Tensor:
    """`weight` with each (row, group) clamped to [lo·r, hi·r], r on `ratios` minimising that
    group's output error over the rows of `x` (ratio 1 keeps the group as it is)."""
    rows, k = weight.shape
    if k % group_size:
        return weight
    groups = k // group_size
    w = weight.view(rows, groups, group_size)
    xg = x.T.reshape(groups, group_size, -1)  # (G, g, T)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    best_err = torch.full((rows, groups), float("inf"), device=weight.device)
    best = w
    for r in ratios:
        clipped = torch.maximum(torch.minimum(w, hi * r), lo * r)
        deq = _int4(clipped.reshape(rows, k), group_size).view(rows, groups, group_size)
        # (N, G, T): each group's contribution to the output error, for every calibration row
        err = torch.einsum("ngk,gkt->ngt", w - deq, xg).pow(2).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], clipped, best)
    return best.reshape(rows, k)


def awq_search(weight: torch.Tensor, x: torch.Tensor, choice: LayerChoice, alphas: tuple[float, ...] = ALPHAS,
               clip: bool = True) -> AwqResult:
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
    scaled = w * s
    if clip and choice.rank is None and choice.sparsity == "dense":
        clipped = clip_groups(scaled, keep_rows(x / s, CLIP_TOKENS), choice.group_size or 128)
        clipped_err = _relative_error(x / s, reference, effective_weight(clipped, choice))
        if clipped_err < err:  # kept only where it helps on all the calibration rows
            scaled, err = clipped, clipped_err
    if plain != plain:  # alpha 0 not on the grid: measure plain int4 itself
        plain = _relative_error(x, reference, effective_weight(w, choice))
    return AwqResult(s, scaled, float(alpha), float(err), float(plain))


__all__ = ["ALPHAS", "CLIP_RATIOS", "AwqResult", "awq_scale", "awq_search", "clip_groups", "effective_weight", "keep_rows"]
