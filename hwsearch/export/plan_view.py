"""A plan as an export target sees it: quantised layers, the rest, and what a target would lose.

Every target needs the same facts: which layers are quantised and how, which stay in floating
point (a target's ignore list), the model's dtype (a per-layer float dtype other than the
model's is itself a knob most targets cannot express), and the knobs no quantisation config
has a word for (low-rank ranks, a token-merge schedule, N:M patterns). The model is looked up
in the catalogue so that the plan is checked against it and unlisted layers are known; a plan
for a model outside the catalogue (a traced one) is exported from its own layers, with a
warning saying that its layer names were not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hwsearch.errors import HwsearchError
from hwsearch.spaces.catalog import get_model
from hwsearch.spaces.formats import FLOAT_DTYPES, KV_QUANT_FORMATS
from hwsearch.spaces.model import ModelSpec
from hwsearch.spaces.plan import KVCacheChoice, LayerChoice, Plan, validate_plan

QUANT_FORMATS = ("int8", "int4", "fp8")
KEPT = "the full plan is kept in"


def summarize(names: list[str] | tuple[str, ...], limit: int = 3) -> str:
    """`a, b, c, ... (12 layers)`: enough names to find them, never a wall of text."""
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names)} layers)" if len(names) > limit else ""
    return shown + more


def module_regex(name: str) -> str:
    """A regex matching module `name` under any parent prefix (`model.` in Hugging Face wrappers).

    Catalogue names are relative to the transformer stack (`layers.0.self_attn.q_proj`) while a
    causal-LM checkpoint nests it (`model.layers.0.self_attn.q_proj`); the optional prefix must
    end at a dot, so `layers.1` never matches `layers.11` or `sublayers.1`.
    """
    return r"(?:.*\.)?" + re.escape(name) + "$"


@dataclass(frozen=True)
class PlanView:
    """A plan with its catalogue model (None when the model is not catalogued)."""

    plan: Plan
    spec: ModelSpec | None

    @classmethod
    def of(cls, plan: Plan) -> PlanView:
        """Look the plan's model up and validate the plan against it (one-line error if it does not fit)."""
        try:
            spec = get_model(plan.model)
        except HwsearchError:
            return cls(plan, None)
        validate_plan(plan, spec)
        return cls(plan, spec)

    @property
    def dtype(self) -> str | None:
        return self.spec.dtype if self.spec is not None else None

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The model's linear layers in order; the plan's own layers when the model is not catalogued."""
        return self.spec.layer_names if self.spec is not None else tuple(self.plan.layers)

    def choice(self, name: str) -> LayerChoice:
        return self.plan.choice(name, self.dtype or "fp32")

    @property
    def quantized(self) -> dict[str, LayerChoice]:
        """Layers whose format is int8, int4 or fp8, in model order."""
        picked = {n: self.choice(n) for n in self.layer_names}
        return {n: c for n, c in picked.items() if c.format in QUANT_FORMATS}

    @property
    def unquantized(self) -> list[str]:
        """Layers left in floating point: what a target's ignore list names."""
        return [n for n in self.layer_names if self.choice(n).format not in QUANT_FORMATS]

    @property
    def kv_quantized(self) -> dict[str, KVCacheChoice]:
        """Decoder blocks whose KV cache the plan stores in int8 or int4, by block prefix."""
        return {b: c for b, c in (self.plan.kv_cache or {}).items() if c.format in KV_QUANT_FORMATS}

    def head_dim(self, block: str) -> int | None:
        """A decoder block's head dim (None when the model is not catalogued)."""
        found = [b.head_dim for b in self.spec.blocks if b.prefix == block] if self.spec is not None else []
        return found[0] if found else None

    def kv_float(self) -> list[str]:
        """`layers.3 fp32`: blocks whose cache the plan keeps in a float dtype other than the model's."""
        dtype = self.dtype
        return [f"{b} {c.format}" for b, c in (self.plan.kv_cache or {}).items()
                if c.format in FLOAT_DTYPES and c.format != dtype]

    @property
    def awq(self) -> list[str]:
        """Layers with AWQ-scaled int4 weights, in model order."""
        return [n for n, c in self.quantized.items() if c.scaling == "awq"]

    def with_sparsity(self) -> dict[str, list[str]]:
        """Non-dense N:M pattern -> layers using it."""
        out: dict[str, list[str]] = {}
        for name in self.layer_names:
            pattern = self.choice(name).sparsity
            if pattern != "dense":
                out.setdefault(pattern, []).append(name)
        return out

    def warnings(self, target: str, kept_in: str, sparsity_ok: tuple[str, ...] = ()) -> list[str]:
        """One line per knob `target` cannot express (sparsity patterns in `sparsity_ok` it can)."""
        out: list[str] = []
        if self.spec is None:
            out.append(
                f"model {self.plan.model!r} is not in the catalogue: layer names were not checked and only the plan's "
                f"own layers are listed in the {target} config"
            )
        for pattern, names in self.with_sparsity().items():
            if pattern not in sparsity_ok:
                out.append(
                    f"{target} cannot express {pattern} sparsity ({summarize(names)}); those layers are exported "
                    f"dense; {KEPT} {kept_in}"
                )
        ranked = [f"{n} r{self.choice(n).rank}" for n in self.layer_names if self.choice(n).rank is not None]
        if ranked:
            out.append(f"{target} cannot express low-rank ranks ({summarize(ranked)}); {KEPT} {kept_in}")
        schedule = self.merge_schedule()
        if schedule is not None:
            out.append(
                f"{target} cannot express the token-merge schedule ({schedule}); {KEPT} {kept_in}"
            )
        dtype = self.dtype
        floats = [
            f"{n} {c.format}" for n in self.plan.layers
            if (c := self.choice(n)).format in FLOAT_DTYPES and c.format != dtype
        ]
        if floats:
            model_dtype = f"the model's {dtype}" if dtype else "the checkpoint's dtype"
            out.append(
                f"{target} cannot express a per-layer float dtype ({summarize(floats)}); those layers keep "
                f"{model_dtype}; {KEPT} {kept_in}"
            )
        kv_floats = self.kv_float()
        if kv_floats:
            out.append(f"{target} cannot express a KV cache in a float dtype other than the model's "
                       f"({summarize(kv_floats)}); those caches keep the model's dtype; {KEPT} {kept_in}")
        return out

    def merge_schedule(self) -> str | None:
        """The token-merge schedule in words, or None when the plan merges nothing."""
        merge = self.plan.merge
        if merge is None:
            return None
        if self.spec is not None:
            per_block = self.spec.merge_schedule(merge)
        elif isinstance(merge, list):
            per_block = tuple(merge)
        else:
            return f"r={merge.r} from block {merge.start_block}" if merge.r else None
        if not any(per_block):
            return None
        return "tokens merged per block " + ",".join(str(r) for r in per_block)
