"""Plan -> NVIDIA ModelOpt quantization config (`mtq.quantize(model, config, forward_loop)`), as YAML.

Format, as documented for nvidia-modelopt 0.47 (module docstring of
`modelopt.torch.quantization.config`, "Quantization Configs", and the guide
https://nvidia.github.io/Model-Optimizer/guides/_quant_cfg.html): a dict with `quant_cfg`, an
ordered list of `QuantizerCfgEntry` dicts `{"quantizer_name": <fnmatch pattern>, "cfg":
<QuantizerAttributeConfig>, "enable": bool}` where later entries override earlier ones, and
`algorithm` (here `"max"`). The legacy flat dict (`{"*weight_quantizer": {...}, "default":
{"enable": False}}`) is still read by 0.47 but deprecated, so it is not written. Entries follow
the built-in presets: a deny-all `{"quantizer_name": "*", "enable": False}` first, then, per
quantised layer, its `weight_quantizer` and (W8A8 formats) `input_quantizer`:
- int8: weights `{"num_bits": 8, "axis": 0}` (preset `INT8_DEFAULT_CFG`, per-channel); inputs
  per-token dynamic as in `FP8_PER_CHANNEL_PER_TOKEN_CFG`: `{"num_bits": 8, "axis": None,
  "type": "dynamic", "block_sizes": {-1: None}}`;
- fp8: `num_bits: (4, 3)` (e4m3), weights `axis: 0`, inputs per-token dynamic as above
  (`FP8_PER_CHANNEL_PER_TOKEN_CFG`);
- int4: weight-only `{"num_bits": 4, "block_sizes": {-1: group, "type": "static"}}`
  (`INT4_BLOCKWISE_WEIGHT_ONLY_CFG`); ModelOpt's integer block quantisation is symmetric, so
  the plan's zero points are dropped (a warning says so).

KV caches: ModelOpt quantises them with the attention module's `k_bmm_quantizer` and
`v_bmm_quantizer` (its presets' pattern `*[kv]_bmm_quantizer`, e.g. `FP8_KV_CFG`), so each block
gets its own entries (`layers.0.self_attn.k_bmm_quantizer`, blocks may differ): keys
`{"num_bits": 4, "block_sizes": {-2: group, "type": "dynamic"}}` (per channel over groups of
tokens, axis -2 of (batch, heads, tokens, head_dim)), values `{-1: group}` (per token over
groups of channels). Symmetric, like the weights (a warning says so), and the residual group
the plan keeps unquantised has no word here (a warning).

AWQ: ModelOpt's calibration algorithm is one per config (`INT4_AWQ_CFG` has `algorithm:
{method: awq_lite, alpha_step: 0.1}`; awq_lite searches its own per-layer alpha on the
`forward_loop` data and keeps 1/s as the input quantizer's `pre_quant_scale`, the runtime form
hwsearch uses). A plan whose quantised layers are all AWQ int4 is written with awq_lite at our
alpha step; a plan mixing AWQ and other quantised layers cannot be expressed (awq_lite would
scale every quantised layer) and is written with `max`, with a warning naming the AWQ layers.
Either way the scales hwsearch calibrated are not carried: ModelOpt computes its own.

Quantizer names are `<module>.weight_quantizer`; each layer gets the exact name and `*.<name>`
(the module under any parent, e.g. Hugging Face's `model.`). The file is YAML because
`block_sizes` keys are integers (-1), which JSON would turn into strings that ModelOpt rejects;
read it with `modelopt.torch.opt.config_loader.load_config(path)` or `yaml.safe_load`.
Sparsity, ranks, the merge schedule and per-layer float dtypes have no place in a quant config:
they are warnings, and the full plan is kept in the plan file. ModelOpt itself is not a
dependency: this module builds plain dicts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from hwsearch.errors import HwsearchError
from hwsearch.export.plan_view import KEPT, PlanView, summarize
from hwsearch.export.targets import Target, register_target
from hwsearch.kernels.awq import ALPHAS
from hwsearch.spaces.plan import KVCacheChoice, LayerChoice

TARGET = "ModelOpt"
HEADER = "# NVIDIA ModelOpt quantization config"  # the first line of every file written here
SUFFIXES = (".yaml", ".yml")
FP8_E4M3 = (4, 3)
PER_TOKEN_DYNAMIC = {"axis": None, "type": "dynamic", "block_sizes": {-1: None}}
AWQ_LITE = {"method": "awq_lite", "alpha_step": round(ALPHAS[1] - ALPHAS[0], 6)}


def quantizer_cfgs(choice: LayerChoice) -> dict[str, dict[str, Any]]:
    """Quantizer suffix -> QuantizerAttributeConfig dict for a quantised layer."""
    if choice.format == "int8":
        return {"weight_quantizer": {"num_bits": 8, "axis": 0},
                "input_quantizer": {"num_bits": 8, **PER_TOKEN_DYNAMIC}}
    if choice.format == "fp8":
        return {"weight_quantizer": {"num_bits": FP8_E4M3, "axis": 0},
                "input_quantizer": {"num_bits": FP8_E4M3, **PER_TOKEN_DYNAMIC}}
    if choice.format == "int4":
        return {"weight_quantizer": {"num_bits": 4, "block_sizes": {-1: choice.group_size, "type": "static"}}}
    raise ValueError(f"format {choice.format!r} is not quantised")


def kv_quantizer_cfgs(choice: KVCacheChoice, head_dim: int | None) -> dict[str, dict[str, Any]]:
    """Quantizer suffix -> config of a block's quantised KV cache: keys per channel over groups of
    tokens, values per token over groups of channels (the head dim when it is smaller)."""
    group = int(choice.group_size or 0)
    channels = min(group, head_dim) if head_dim else group
    return {"k_bmm_quantizer": {"num_bits": choice.bits, "block_sizes": {-2: group, "type": "dynamic"}},
            "v_bmm_quantizer": {"num_bits": choice.bits, "block_sizes": {-1: channels, "type": "dynamic"}}}


def quantizer_patterns(name: str, quantizer: str) -> list[str]:
    """fnmatch patterns for a module's quantizer: the exact name and the name under any parent."""
    exact = _escape(f"{name}.{quantizer}")
    return [exact, f"*.{exact}"]


def _escape(text: str) -> str:
    """Escape fnmatch's special characters, which module names do not normally hold."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def quant_config(view: PlanView, kept_in: str = "the plan file") -> tuple[dict[str, Any], list[str]]:
    """The ModelOpt config dict for the plan, and one warning per knob it cannot express."""
    entries: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    int4: list[str] = []
    for name, choice in view.quantized.items():
        if choice.format == "int4":
            int4.append(name)
        for quantizer, cfg in quantizer_cfgs(choice).items():
            entries += [{"quantizer_name": p, "cfg": cfg} for p in quantizer_patterns(name, quantizer)]
    kv = view.kv_quantized
    for block, choice in kv.items():
        for quantizer, cfg in kv_quantizer_cfgs(choice, view.head_dim(block)).items():
            entries += [{"quantizer_name": p, "cfg": cfg} for p in quantizer_patterns(f"{block}.self_attn", quantizer)]
    warnings = view.warnings(TARGET, kept_in)
    if kv:
        warnings.append(
            f"{TARGET} KV-cache quantizers are symmetric: the plan's asymmetric cache ({summarize(list(kv))}) is exported "
            f"symmetric, and the last, unfilled group of keys it keeps unquantised has no {TARGET} setting; "
            f"{KEPT} {kept_in}"
        )
    if int4:
        warnings.append(
            f"{TARGET} int4 block quantisation is symmetric: the plan's asymmetric zero points ({summarize(int4)}) "
            f"are exported as symmetric int4; {KEPT} {kept_in}"
        )
    if len(entries) == 1:
        warnings.append(f"the plan quantises no layer: the {TARGET} config disables every quantizer")
    awq = view.awq
    algorithm: Any = "max"
    if awq and len(awq) == len(view.quantized):
        algorithm = dict(AWQ_LITE)
        warnings.append(
            f"{TARGET} awq_lite computes its own AWQ scales on the forward_loop data ({summarize(awq)}); the scales "
            f"hwsearch calibrated are not carried; {KEPT} {kept_in}"
        )
    elif awq:
        warnings.append(
            f"{TARGET} has one calibration algorithm per config: AWQ on only some quantised layers ({summarize(awq)}) "
            f"cannot be expressed, so they are exported as plain int4 (algorithm max); {KEPT} {kept_in}"
        )
    return {"quant_cfg": entries, "algorithm": algorithm}, warnings


def to_yaml(config: dict[str, Any], model: str) -> str:
    """YAML with integer keys kept and tuples as lists (which ModelOpt's pydantic models accept)."""
    def plain(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [plain(v) for v in obj]
        return obj

    header = (
        f"{HEADER} for {model}, written by hwsearch (quant_cfg list format of\n"
        "# nvidia-modelopt 0.47). Load: modelopt.torch.opt.config_loader.load_config(path) or yaml.safe_load;\n"
        "# apply: modelopt.torch.quantization.quantize(model, config, forward_loop).\n"
    )
    return header + yaml.safe_dump(plain(config), sort_keys=False, default_flow_style=None)


def check_suffix(path: Path) -> None:
    if path.suffix.lower() not in SUFFIXES:
        raise HwsearchError(
            f"modelopt config {str(path)!r} must be YAML (block_sizes has integer keys JSON cannot keep); "
            f"accepted: --out ending in {' or '.join(SUFFIXES)}"
        )


def render(view: PlanView, path: Path, kept_in: str) -> tuple[str, list[str]]:
    """The YAML text for `path` and the warnings."""
    check_suffix(path)
    config, warnings = quant_config(view, kept_in)
    return to_yaml(config, view.plan.model), warnings


def recognise(text: str) -> bool:
    """A config this module wrote: its header line, or YAML (not JSON) with a `quant_cfg`."""
    if text.lstrip().startswith(HEADER):
        return True
    try:
        json.loads(text)
        return False
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):  # nesting too deep is no export either
        return False
    return isinstance(doc, dict) and "quant_cfg" in doc


register_target(Target("modelopt", render, "modelopt_quant.yaml", "application/x-yaml",
                       what=f"an NVIDIA {TARGET} quantization config (YAML)", recognise=recognise))
