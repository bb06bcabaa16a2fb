"""hwsearch.spaces: model descriptions, knobs, search spaces and the plan schema (pure description)."""

from hwsearch.spaces.catalog import get_model, model_names
from hwsearch.spaces.knobs import Capabilities, Knobs, LayerSpace, SearchSpace
from hwsearch.spaces.model import Block, Layer, LayerGroup, ModelSpec
from hwsearch.spaces.plan import (
    PLAN_SCHEMA,
    Figure,
    KVCacheChoice,
    LayerChoice,
    MergePlan,
    Plan,
    Provenance,
    validate_plan,
)
from hwsearch.spaces.size import linear_bytes
from hwsearch.spaces.trace import from_torch

__all__ = [
    "PLAN_SCHEMA", "Block", "Capabilities", "Figure", "KVCacheChoice", "Knobs", "Layer", "LayerChoice", "LayerGroup", "LayerSpace",
    "MergePlan", "ModelSpec", "Plan", "Provenance", "SearchSpace", "from_torch", "get_model", "linear_bytes",
    "model_names", "validate_plan",
]
