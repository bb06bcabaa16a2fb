"""The registry of predictor kinds: what a stored `predictors` row of each kind is and how it is made.

Each kind joins from its own module with `register_kind` (XGBoost in `xgb`, the meta-learned
predictor and its adapted form in `meta`, the whole-model overhead term in `model_latency`);
the modules named in `KIND_MODULES` are imported on the first look-up, so this module imports
none of them and none of them imports back anything but this registry. Loading a stored
artefact, training (`hwsearch train --kind`), listing the kinds and the one-line error for an
unknown kind all go through here: a new kind is a new module plus its entry in `KIND_MODULES`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hwsearch.errors import HwsearchError, unknown

# Modules that register predictor kinds on import (the one list of them).
KIND_MODULES: tuple[str, ...] = ("hwsearch.predictors.xgb", "hwsearch.predictors.meta",
                                 "hwsearch.predictors.model_latency")
ALL = "all"  # `hwsearch train --kind all`: every trainable kind the device has enough data for

# (engine, device, *, params, seed, progress) -> the stored row's description
Trainer = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class PredictorKind:
    """One kind of stored predictor.

    `load` turns a stored artefact back into the object (never unpickling); `artefact_format`
    names the stored form. A trainable kind has `train` and says with `in_all` whether
    ``--kind all`` trains it for a device with that many measured kernels.
    """

    name: str
    load: Callable[[bytes], Any]
    artefact_format: str
    train: Trainer | None = None
    in_all: Callable[[int], bool] = lambda rows: True
    help: str = ""
    order: int = 0


_KINDS: dict[str, PredictorKind] = {}


def register_kind(kind: PredictorKind) -> PredictorKind:
    """Add a kind (its module calls this on import); a name registered twice is an error."""
    if kind.name in _KINDS or kind.name == ALL:
        raise HwsearchError(f"predictor kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    """Remove a kind (for tests that register a toy one)."""
    _KINDS.pop(name, None)


@functools.cache
def _load_kind_modules() -> None:
    for module in KIND_MODULES:
        importlib.import_module(module)


def kinds() -> dict[str, PredictorKind]:
    """Every registered kind by name."""
    _load_kind_modules()
    return {k.name: k for k in sorted(_KINDS.values(), key=lambda k: k.order)}


def get_kind(name: str) -> PredictorKind:
    """A kind by name; an unknown one is one line listing the registered kinds."""
    found = kinds().get(name)
    if found is None:
        raise unknown("stored predictor kind", name, list(_KINDS))
    return found


def trainable() -> list[str]:
    """Names of the kinds `hwsearch train --kind` accepts (besides "all"), in `order`."""
    return [k.name for k in kinds().values() if k.train is not None]


def train_choices() -> list[str]:
    """What `--kind` accepts: each trainable kind, then "all"."""
    return [*trainable(), ALL]


def trainer(name: str) -> PredictorKind:
    """A trainable kind by name; anything else is one line listing what `--kind` accepts."""
    kind = kinds().get(name)
    if kind is None or kind.train is None:
        raise unknown("predictor kind", name, train_choices())
    return kind
