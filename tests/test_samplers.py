"""The sampler registry: a new sampler is one registered factory, and every entry point takes it."""

from __future__ import annotations

import warnings

import pytest

from hwsearch.errors import HwsearchError
from hwsearch.search import samplers
from hwsearch.search.objectives import build_tables
from hwsearch.search.spec import SearchSpec
from hwsearch.search.study import optimize_in_memory
from hwsearch.spaces import Knobs, SearchSpace, get_model


@pytest.fixture
def registry():
    """The registry; what a test registers is gone after it."""
    before = set(samplers.SAMPLERS)
    yield samplers.SAMPLERS
    for name in set(samplers.SAMPLERS) - before:
        samplers.unregister_sampler(name)


def test_built_in_samplers_in_order() -> None:
    assert samplers.sampler_names() == ("nsga2", "tpe", "gp", "random")
    assert SearchSpec(model="vit_tiny", device="d").sampler == samplers.sampler_names()[0]


def test_a_new_sampler_is_one_registration(registry: dict) -> None:
    import optuna

    @samplers.register_sampler("qmc")
    def qmc(seed: int, n_startup: int | None) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)

    assert SearchSpec(model="vit_tiny", device="d", sampler="qmc").sampler == "qmc"
    assert isinstance(samplers.make_sampler("qmc", 0), optuna.samplers.QMCSampler)
    space = SearchSpace(get_model("vit_tiny"), knobs=Knobs(formats=("fp32", "int8"), sparsities=("dense",), low_rank=False,
                                                            merge_r=(0,), allow_emulated=True))
    tables = build_tables(space, ["size"], "d")
    trials = optimize_in_memory(tables, ["size"], {}, "qmc", seed=0, n_trials=12, warm=False)
    assert len(trials) == 12 and all(t.values is not None for t in trials)
    with pytest.raises(HwsearchError, match="registered twice"):
        samplers.register_sampler("qmc")(qmc)


def test_an_unknown_sampler_lists_the_registered_ones(registry: dict) -> None:
    registry["mine"] = registry["random"]
    with pytest.raises(HwsearchError, match="accepted: nsga2, tpe, gp, random, mine"):
        SearchSpec(model="vit_tiny", device="d", sampler="annealing")
