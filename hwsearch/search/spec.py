"""`SearchSpec`: what a search job is asked to do, checked before anything is stored.

A spec names a catalogue model (``"vit_base"``, ``"llama3_8b:blocks=2"``) or carries a torch
model with example inputs and the user's own evaluation function (module -> quality, higher is
better). Its JSON form (`to_doc`) is what the Job row keeps; a torch model is kept there as its
traced `ModelSpec` (layers and shapes), so any process can read the job's plans, while running
or resuming it needs the process that holds the module and the function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hwsearch.errors import HwsearchError, check_range, unknown
from hwsearch.search.objectives import CONSTRAINTS, OBJECTIVES, objective
from hwsearch.search.samplers import check_sampler
from hwsearch.spaces.knobs import Knobs
from hwsearch.spaces.model import Block, Layer, LayerGroup, ModelSpec

SPEC_VERSION = 1
NAME_MAX = 200  # the jobs table's name column
# (low, high, why the upper bound): every size a spec sets is bounded, so a typo cannot queue a
# job that never ends or exhausts the database's connections.
LIMITS: dict[str, tuple[int, int, str]] = {
    "n_trials": (1, 1_000_000, "a study's trials live in the database"),
    "n_workers": (1, 64, "each worker holds a database connection"),
    "verify_top_k": (0, 50, "each plan is timed end to end on the device"),
    "seed": (0, 2**30, "samplers take 32-bit seeds, and each worker and attempt adds to it"),
}


def knobs_from_doc(doc: dict[str, Any]) -> Knobs:
    """`Knobs` from a spec's JSON knobs (lists become tuples); unknown names: one line."""
    names = {f.name for f in fields(Knobs)}
    extra = sorted(set(doc) - names)
    if extra:
        raise HwsearchError(f"unknown knob(s) {', '.join(extra)}; accepted: {', '.join(sorted(names))}")
    tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()}
    try:
        return Knobs(**tuples)
    except TypeError as err:
        raise HwsearchError(f"bad knobs {doc}: {err}; accepted: {', '.join(sorted(names))}") from None


def spec_to_doc(model: ModelSpec) -> dict[str, Any]:
    """A ModelSpec as plain JSON (for a traced torch model)."""
    return asdict(model)


def spec_from_doc(doc: dict[str, Any]) -> ModelSpec:
    return ModelSpec(
        doc["name"],
        tuple(Layer(**layer) for layer in doc["layers"]),
        tuple(Block(**b) for b in doc["blocks"]),
        tuple(LayerGroup(g["name"], tuple(g["members"]), tuple(g["shared"]), g["reason"]) for g in doc["groups"]),
        tokens=doc["tokens"], class_token=doc["class_token"], has_weights=doc["has_weights"], dtype=doc["dtype"],
        options=doc.get("options", {}),
    )


class SearchSpec(BaseModel):
    """A search: model × device, objectives, constraints, knobs, sampler and budget.

    Checked when built (a bad field is one line naming what is accepted); `Client.submit`
    checks it against the database (device, predictor) before storing the job.

    >>> import hwsearch as hw
    >>> spec = hw.SearchSpec(model="vit_tiny", device="my-cpu", constraints={"latency_ms": 5.0}, n_trials=200)
    >>> spec.objectives, spec.directions, spec.sampler
    (['latency', 'size'], ['minimize', 'minimize'], 'nsga2')
    >>> hw.SearchSpec(model="vit_tiny", device="my-cpu", sampler="annealing")
    Traceback (most recent call last):
    ...
    hwsearch.errors.HwsearchError: bad search spec field sampler: unknown sampler 'annealing'; accepted: nsga2, tpe, gp, random
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: Any
    device: str
    objectives: list[str] = Field(default_factory=lambda: ["latency", "size"])
    constraints: dict[str, float] = Field(default_factory=dict)
    knobs: dict[str, Any] = Field(default_factory=dict)
    sampler: str = "nsga2"
    n_trials: int = 500
    n_workers: int = 1
    seed: int = 0
    verify_top_k: int = 3
    # a verified plan holds only within this % of the estimate the job stands behind (beside its
    # band and the budget); a round that does not hold refits and verifies again (`verify_and_refit`)
    verify_tolerance_pct: float = 10.0
    warm_start: bool = True
    # measure what the search would otherwise predict (the kernels `profile --for` adds), when
    # the device is this machine; off: such estimates are marked extrapolated where shown
    profile_missing: bool = False
    name: str | None = Field(default=None, max_length=NAME_MAX)
    example_inputs: Any = Field(default=None, exclude=True)
    evaluate: Callable[[Any], float] | None = Field(default=None, exclude=True)
    model_spec: dict[str, Any] | None = None  # traced torch model (filled in from `model`)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "spec"
            msg = first["msg"].removeprefix("Value error, ")
            raise HwsearchError(f"bad search spec field {where}: {msg}") from None

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"no objective given; accepted: one or more of {', '.join(OBJECTIVES)}")
        for name in value:
            if name not in OBJECTIVES:
                raise unknown("objective", name, OBJECTIVES)
        if len(set(value)) != len(value):
            raise ValueError(f"objective listed twice in {value}; accepted: each of {', '.join(OBJECTIVES)} once")
        return list(value)

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, value: dict[str, float]) -> dict[str, float]:
        for key, bound in value.items():
            if key not in CONSTRAINTS:
                raise unknown("constraint", key, CONSTRAINTS)
            if not math.isfinite(bound) or bound < 0:
                raise ValueError(f"constraint {key}={bound} is not a finite non-negative number")
        return value

    @field_validator("verify_tolerance_pct")
    @classmethod
    def _tolerance(cls, value: float) -> float:
        if not math.isfinite(value) or not 0 < value <= 100:
            raise ValueError(f"verify_tolerance_pct={value} is out of range; accepted: a number of % in (0, 100]")
        return float(value)

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, value: str) -> str:
        return check_sampler(value)

    @field_validator("n_trials", "n_workers", "verify_top_k", "seed")
    @classmethod
    def _bounded(cls, value: int, info: Any) -> int:
        low, high, why = LIMITS[info.field_name]
        check_range(info.field_name, value, low, high, why)
        return value

    @model_validator(mode="after")
    def _model(self) -> SearchSpec:
        knobs_from_doc(self.knobs)
        if isinstance(self.model, str):
            from hwsearch.spaces.catalog import get_model

            spec = get_model(self.model)
            if "quality" in self.objectives and not spec.has_weights:
                from hwsearch.search.quality_tasks import no_quality

                raise no_quality(spec.name)
            return self
        if self.model is None and self.model_spec is not None:
            return self
        try:
            from torch import nn
        except ImportError:  # pragma: no cover - torch is a dependency
            nn = None
        if nn is None or not isinstance(self.model, nn.Module):
            raise HwsearchError(
                f"model must be a catalogue name or a torch.nn.Module, got {type(self.model).__name__}; "
                "accepted: a name (see `hwsearch models`) or nn.Module with example_inputs"
            )
        if self.example_inputs is None:
            raise HwsearchError("a torch model needs example_inputs (one batch it accepts) to be traced; accepted: a tensor or tuple")
        if "quality" in self.objectives and self.evaluate is None:
            raise HwsearchError("the quality objective on a torch model needs evaluate=fn(module) -> float (higher is better)")
        if self.model_spec is None:
            from hwsearch.spaces.trace import from_torch

            traced = from_torch(self.model, self.example_inputs, name=self.name or type(self.model).__name__)
            object.__setattr__(self, "model_spec", spec_to_doc(traced))
        return self

    # -- derived ---------------------------------------------------------------------------------
    @property
    def custom(self) -> bool:
        """Whether the model is a torch module given in-process (not a catalogue name)."""
        return not isinstance(self.model, str)

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model_spec["name"]  # type: ignore[index]

    def model_description(self) -> ModelSpec:
        if isinstance(self.model, str):
            from hwsearch.spaces.catalog import get_model

            return get_model(self.model)
        return spec_from_doc(self.model_spec)  # type: ignore[arg-type]

    def knob_values(self) -> Knobs:
        """The knobs, with AWQ int4 offered (where left open) when quality is scored on a catalogue
        model's quality task: each of those calibrates on its calib split; a user's own
        evaluation function comes with no calibration data."""
        scored = "quality" in self.objectives or any(CONSTRAINTS[k][0] == "quality" for k in self.constraints)
        return knobs_from_doc(self.knobs).with_calibration(scored and not self.custom)

    @property
    def quality_metric(self) -> str:
        """The metric quality is measured in (its direction is the quality objective's)."""
        from hwsearch.search.quality_metrics import model_metric

        return model_metric(self.model if isinstance(self.model, str) else None).name

    @property
    def directions(self) -> list[str]:
        return [objective(o, self.quality_metric).direction for o in self.objectives]

    def job_name(self) -> str:
        return (self.name or f"{self.model_name}@{self.device} {'x'.join(self.objectives)}")[:NAME_MAX]

    def to_doc(self) -> dict[str, Any]:
        """JSON for the Job row (a torch model is kept as its traced layers)."""
        doc = self.model_dump(exclude={"example_inputs", "evaluate", "model"})
        doc["model"] = self.model if isinstance(self.model, str) else None
        doc["version"] = SPEC_VERSION
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any], model: Any = None, example_inputs: Any = None,
                 evaluate: Callable[[Any], float] | None = None) -> SearchSpec:
        """Back from a Job row; a torch-model job gets its module and function passed in again."""
        data = {k: v for k, v in doc.items() if k != "version"}
        if data.get("model") is None:
            data["model"] = model
            data["example_inputs"] = example_inputs
            data["evaluate"] = evaluate
            if model is None:
                return cls.model_construct(**data)
        return cls(**data)
