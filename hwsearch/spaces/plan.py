"""The plan: a versioned JSON document saying how each layer of a model is compressed.

`hwsearch.plan/v2` carries the model (catalogue reference), the device it was searched for, one
choice per layer (layers left out stay uncompressed; int4 layers may carry AWQ scaling), the
token-merge schedule, a KV-cache format per decoder block (blocks left out keep the model's
dtype), and optional predicted / measured figures, each with its provenance. A `v1` document
(no KV cache, no scaling) is read as the v2 plan that means the same; plans are written as v2. `Plan.model_json_schema()` is the
published schema; `validate_plan` checks a plan against a ModelSpec (and a SearchSpace) and
fails with one line naming the first problem.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hwsearch.errors import HwsearchError
from hwsearch.spaces.formats import (
    SCALINGS,
    canonical_sparsity,
    check_format,
    check_kv_format,
    int4_group,
    kv_group,
)
from hwsearch.spaces.model import ModelSpec

PLAN_SCHEMA = "hwsearch.plan/v2"
READABLE_SCHEMAS = ("hwsearch.plan/v1", PLAN_SCHEMA)
SOURCES = ("predictor", "measurement", "sensitivity", "eval", "analytic")
MAX_PLAN_BYTES = 16 << 20  # a plan of the largest catalogue model is well under 1 MB


def read_plan_text(path: str | Path) -> str:
    """A plan file's text (or an export's): one line when it is missing, a folder, too big or not UTF-8."""
    file, accepted = Path(path), f"accepted: a path to a {PLAN_SCHEMA} JSON file"
    if file.is_dir():
        raise HwsearchError(f"{str(path)!r} is a folder; {accepted}")
    if not file.is_file():
        raise HwsearchError(f"no plan file at {str(path)!r}; {accepted}")
    try:
        with file.open("rb") as fh:
            data = fh.read(MAX_PLAN_BYTES + 1)
    except OSError as err:
        raise HwsearchError(f"cannot read {str(path)!r} ({err.strerror or err}); {accepted}") from None
    if len(data) > MAX_PLAN_BYTES:
        raise HwsearchError(f"{str(path)!r} is larger than {MAX_PLAN_BYTES >> 20} MiB; {accepted}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HwsearchError(f"{str(path)!r} is not UTF-8 text (byte {err.start}); {accepted}") from None


class LayerChoice(BaseModel):
    """One layer's compression: format (int4 with a group size), N:M sparsity, low-rank rank."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = "fp32"
    group_size: int | None = None
    sparsity: str = "dense"
    rank: int | None = Field(default=None, ge=1)
    scaling: Literal["awq"] | None = None

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        return check_format(value)

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, value: str) -> str:
        return canonical_sparsity(value)

    @model_validator(mode="after")
    def _group(self) -> LayerChoice:
        try:
            object.__setattr__(self, "group_size", int4_group(self.format, self.group_size))
        except HwsearchError as err:
            raise ValueError(str(err)) from None  # pydantic reports it as this field's error
        if self.scaling is not None and self.format != "int4":
            raise ValueError(f"scaling={self.scaling!r} given for format {self.format!r}; accepted: {', '.join(SCALINGS)} only with int4")
        return self

    def is_identity(self, dtype: str = "fp32") -> bool:
        return self.format == dtype and self.sparsity == "dense" and self.rank is None

    def label(self) -> str:
        fmt = f"int4g{self.group_size}" if self.format == "int4" else self.format
        fmt += "-awq" if self.scaling == "awq" else ""
        parts = [fmt] + ([self.sparsity] if self.sparsity != "dense" else []) + ([f"r{self.rank}"] if self.rank else [])
        return "/".join(parts)


class KVCacheChoice(BaseModel):
    """One decoder block's KV cache: a float dtype, or int8/int4 (per-channel keys, per-token
    values, `group_size` elements per scale)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = "bf16"
    group_size: int | None = None

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        return check_kv_format(value)

    @model_validator(mode="after")
    def _group(self) -> KVCacheChoice:
        try:
            object.__setattr__(self, "group_size", kv_group(self.format, self.group_size))
        except HwsearchError as err:
            raise ValueError(str(err)) from None
        return self

    @property
    def bits(self) -> int:
        return {"fp32": 32, "bf16": 16, "fp16": 16, "int8": 8, "int4": 4}[self.format]

    def is_identity(self, dtype: str = "fp32") -> bool:
        return self.format == dtype

    def label(self) -> str:
        return f"{self.format}g{self.group_size}" if self.group_size else self.format


class MergePlan(BaseModel):
    """ToMe schedule with a delayed onset: `r` tokens merged per block from `start_block` on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(default=0, ge=0)
    start_block: int = Field(default=0, ge=0)

    def label(self) -> str:
        """The schedule's name: the search's choice label and the sensitivity table's key ("none", "r8@2")."""
        return "none" if not self.r else f"r{self.r}@{self.start_block}"


class Provenance(BaseModel):
    """Where a figure comes from: a predictor (id, kind), a measurement, an evaluation ..."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["predictor", "measurement", "sensitivity", "eval", "analytic"]
    device: str | None = None
    predictor_id: str | None = None
    kind: str | None = None
    detail: str | None = None
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Figure(BaseModel):
    """A predicted figure; `upper`, where set, is its calibrated upper bound (a latency's band)."""

    model_config = ConfigDict(extra="forbid")

    value: float
    unit: str
    provenance: Provenance
    upper: float | None = None


class Plan(BaseModel):
    """A compression plan (`hwsearch.plan/v2`): a choice per layer, a token-merge schedule, a
    KV-cache format per decoder block, and the figures predicted (and measured) for it. Layers
    and blocks left out stay uncompressed.

    >>> import hwsearch as hw
    >>> plan = hw.Plan(model="vit_tiny", layers={"blocks.0.mlp.fc1": hw.LayerChoice(format="int4", sparsity="2:4")})
    >>> plan.choice("blocks.0.mlp.fc1").label(), plan.choice("blocks.0.mlp.fc2").label()
    ('int4g128/2:4', 'fp32')
    >>> hw.Plan.from_json(plan.to_json()) == plan
    True
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["hwsearch.plan/v2"] = Field(default=PLAN_SCHEMA, alias="schema")
    model: str
    device: str | None = None
    layers: dict[str, LayerChoice] = Field(default_factory=dict)
    merge: MergePlan | list[int] | None = None
    kv_cache: dict[str, KVCacheChoice] | None = None
    predicted: dict[str, Figure] = Field(default_factory=dict)
    measured: dict[str, Figure] = Field(default_factory=dict)

    def choice(self, layer: str, dtype: str = "fp32") -> LayerChoice:
        """The choice for a layer; a layer left out stays uncompressed in the model's dtype."""
        return self.layers.get(layer) or LayerChoice(format=dtype)

    def kv_choice(self, block: str, dtype: str = "bf16") -> KVCacheChoice:
        """The KV-cache choice for a decoder block (its prefix, e.g. `layers.0`); default: the model's dtype."""
        return (self.kv_cache or {}).get(block) or KVCacheChoice(format=dtype)

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise HwsearchError(f"plan is not JSON ({err.msg} at line {err.lineno}); accepted: a {PLAN_SCHEMA} document") from None
        except UnicodeDecodeError as err:
            raise HwsearchError(f"plan is not UTF-8 text (byte {err.start}); accepted: a {PLAN_SCHEMA} document") from None
        except RecursionError:
            raise HwsearchError(f"plan nests too deep to be a plan; accepted: a {PLAN_SCHEMA} document") from None
        return cls.parse(data)

    @classmethod
    def from_file(cls, path: str | Path) -> Plan:
        """A plan file, read with `read_plan_text` (size, encoding) and validated."""
        return cls.from_json(read_plan_text(path))

    @classmethod
    def parse(cls, data: Any) -> Plan:
        """Validate a decoded document (v1 read as v2); a malformed one fails with one line."""
        if isinstance(data, dict):
            schema = data.get("schema", PLAN_SCHEMA)
            if schema not in READABLE_SCHEMAS:
                raise HwsearchError(f"unknown plan schema {schema!r}; accepted: {', '.join(READABLE_SCHEMAS)}")
            if schema != PLAN_SCHEMA:
                data = upgrade_v1(data)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            msg = first["msg"].removeprefix("Value error, ")
            raise HwsearchError(f"bad plan field {where}: {msg}") from None

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        schema = cls.model_json_schema(by_alias=True)
        schema["$id"] = PLAN_SCHEMA
        return schema


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A v1 document as v2: the same fields, which v2 reads unchanged; v1 had neither a KV cache
    nor weight scaling, so a v1 document naming them is malformed."""
    for key in ("kv_cache",):
        if key in data:
            raise HwsearchError(f"bad plan field {key}: not part of hwsearch.plan/v1; accepted: schema hwsearch.plan/v2 for it")
    layers = data.get("layers")
    if isinstance(layers, dict) and any(isinstance(c, dict) and "scaling" in c for c in layers.values()):
        raise HwsearchError("bad plan field layers.*.scaling: not part of hwsearch.plan/v1; accepted: schema hwsearch.plan/v2 for it")
    return {**data, "schema": PLAN_SCHEMA}


class ChoiceChecker(Protocol):
    def check_choice(self, layer: str, choice: LayerChoice) -> None: ...


def validate_plan(plan: Plan, spec: ModelSpec, space: ChoiceChecker | None = None) -> None:
    """Raise a one-line HwsearchError for the first problem of `plan` on `spec`.

    Problems: a layer the model does not have, a choice outside the space (shape limits without a
    space; the space's knobs with one), a broken group constraint, a merge schedule that does
    not fit the model.
    """
    for name, choice in plan.layers.items():
        layer = spec.layer(name) if name in spec.layer_names else None
        if layer is None:
            raise HwsearchError(
                f"plan names unknown layer {name!r} for model {spec.name!r}; accepted: the model's layer names "
                f"(e.g. {', '.join(spec.layer_names[:3])})"
            )
        if choice.rank is not None and choice.rank >= min(layer.K, layer.N):
            raise HwsearchError(
                f"plan layer {name!r}: rank {choice.rank} is not in the space; accepted: below min(K, N) = {min(layer.K, layer.N)}"
            )
        if space is not None:
            space.check_choice(name, choice)
    for group in spec.groups:
        picked = {m: plan.choice(m, spec.dtype) for m in group.members}
        for knob in group.shared:
            values = {m: getattr(c, knob) for m, c in picked.items()}
            if len(set(values.values())) > 1:
                shown = ", ".join(f"{m.rsplit('.', 1)[-1]}={v}" for m, v in values.items())
                raise HwsearchError(
                    f"group constraint broken: {group.name} ({', '.join(group.members)}) must {group.reason} "
                    f"on {knob}; got {shown}"
                )
    cached = {b.prefix for b in spec.blocks if b.kind == "llama"}
    for block in plan.kv_cache or {}:
        if block not in cached:
            shown = ", ".join(sorted(cached)[:3]) or "none: the model has no decoder blocks"
            raise HwsearchError(
                f"plan names KV cache of {block!r}, not a decoder block of model {spec.name!r}; accepted: decoder block prefixes ({shown})"
            )
    spec.merge_schedule(plan.merge)
