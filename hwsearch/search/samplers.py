"""The sampler registry: each Optuna sampler a search can use joins it by name.

Why a module of its own: the names are listed and checked where Optuna should not be imported yet
(`SearchSpec` validation, the CLI's help), so each factory imports Optuna when it is called.
A new sampler is one function here (or in any module imported before the search) decorated with
`@register_sampler("name")`; `SearchSpec(sampler=...)`, `hwsearch search --sampler` and
`hwsearch bench search --samplers` accept it from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from hwsearch.errors import HwsearchError, unknown

# (seed, n_startup_trials or None) -> an optuna.samplers.BaseSampler
SamplerFactory = Callable[[int, "int | None"], Any]
SAMPLERS: dict[str, SamplerFactory] = {}
BASELINE = "random"  # what `bench search` compares every other sampler with


def register_sampler(name: str) -> Callable[[SamplerFactory], SamplerFactory]:
    """Add a sampler factory under `name` (a name already taken is an error: one meaning per name)."""

    def add(factory: SamplerFactory) -> SamplerFactory:
        if name in SAMPLERS:
            raise HwsearchError(f"sampler {name!r} is registered twice")
        SAMPLERS[name] = factory
        return factory

    return add


def unregister_sampler(name: str) -> None:
    """Remove a sampler (for tests that register a toy one)."""
    SAMPLERS.pop(name, None)


def sampler_names() -> tuple[str, ...]:
    """The registered samplers, in registration order (the default first)."""
    return tuple(SAMPLERS)


def check_sampler(name: str) -> str:
    """`name` if a sampler is registered under it; else a one-line error listing those that are."""
    if name not in SAMPLERS:
        raise unknown("sampler", name, sampler_names())
    return name


def make_sampler(name: str, seed: int, n_startup: int | None = None) -> Any:
    """A sampler by name; `seed` makes a worker's proposals reproducible."""
    return SAMPLERS[check_sampler(name)](seed, n_startup)


@register_sampler("nsga2")
def _nsga2(seed: int, n_startup: int | None) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


@register_sampler("tpe")
def _tpe(seed: int, n_startup: int | None) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup or 10)


@register_sampler("gp")
def _gp(seed: int, n_startup: int | None) -> Any:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.GPSampler(seed=seed, deterministic_objective=True, n_startup_trials=n_startup or 10,
                                         warn_independent_sampling=False)


@register_sampler(BASELINE)
def _random(seed: int, n_startup: int | None) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)
