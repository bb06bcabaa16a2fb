"""Everything hwsearch uses of Optuna that is not Optuna's public API, in one module.

Why: Optuna may change its private modules in any release. Every such use goes through here, so
an upgrade is checked in one place (`check`, which `tests/test_optuna_compat.py` runs and which
names each internal that moved), and `pyproject.toml` pins the major release this was written
against (`OPTUNA_MAJOR`). What hwsearch reaches:

- `optuna._hypervolume.compute_hypervolume`: the exact hypervolume (WFG);
- `optuna.study._multi_objective._is_pareto_front`: the non-dominated mask;
- NSGA-II's generation key (`_get_generation_key`) and the study's storage (`Study._storage`),
  to place warm-start trials in the initial population;
- `FrozenTrial._trial_id`: a trial's storage id (`read_trials` reads only newer ids);
- the study system attribute `set_metric_names` stores its names under (`METRIC_NAMES_ATTR`);
- the RDB storage's ORM tables (`optuna.storages._rdb.models`, re-exported as `models`), which
  `search.trials` reads and writes in bulk and the dashboard reads.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from hwsearch.errors import HwsearchError

OPTUNA_MAJOR = 5  # the release line the internals below were read from (pyproject pins it)

METRIC_NAMES_ATTR = "study:metric_names"  # the study system attribute of `Study.set_metric_names`

_MISSING: list[str] = []
try:
    from optuna._hypervolume import compute_hypervolume as _compute_hypervolume
except ImportError as err:  # pragma: no cover - only on an Optuna that moved it
    _MISSING.append(f"optuna._hypervolume.compute_hypervolume ({err})")
try:
    from optuna.study._multi_objective import _is_pareto_front
except ImportError as err:  # pragma: no cover
    _MISSING.append(f"optuna.study._multi_objective._is_pareto_front ({err})")
try:
    from optuna.storages._rdb import models
except ImportError as err:  # pragma: no cover
    models = None  # type: ignore[assignment]
    _MISSING.append(f"optuna.storages._rdb.models ({err})")

# The ORM attributes of Optuna's tables that `search.trials` uses, table by table.
SCHEMA: dict[str, tuple[str, ...]] = {
    "StudyModel": ("study_id", "study_name"),
    "StudyDirectionModel": ("study_id", "objective", "direction"),
    "StudySystemAttributeModel": ("study_id", "key", "value_json"),
    "TrialModel": ("trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete",
                   "_datetime_start_utc", "_datetime_complete_utc"),
    "TrialParamModel": ("param_id", "trial_id", "param_name", "param_value", "distribution_json"),
    "TrialValueModel": ("trial_id", "objective", "value", "value_type", "value_to_stored_repr",
                        "stored_repr_to_value"),
    "TrialUserAttributeModel": ("trial_id", "key", "value_json"),
    "TrialSystemAttributeModel": ("trial_id", "key", "value_json"),
}


def _changed(what: str) -> HwsearchError:
    return HwsearchError(f"the installed Optuna {optuna.__version__} changed {what}, which hwsearch uses; "
                         f"accepted: Optuna {OPTUNA_MAJOR}.x (pip install 'optuna>={OPTUNA_MAJOR}.1,<{OPTUNA_MAJOR + 1}')")


def _require(name: str) -> None:
    if any(m.startswith(name) for m in _MISSING):
        raise _changed(name)


def is_pareto_front(loss: np.ndarray) -> np.ndarray:
    """Non-dominated rows of `loss` (n, k), every objective minimised; equal rows all stay."""
    _require("optuna.study._multi_objective._is_pareto_front")
    return _is_pareto_front(loss, assume_unique_lexsorted=False)


def hypervolume(loss: np.ndarray, reference: np.ndarray, assume_pareto: bool = False) -> float:
    """Exact hypervolume of `loss` (minimised) up to `reference`."""
    _require("optuna._hypervolume.compute_hypervolume")
    return float(_compute_hypervolume(loss, reference, assume_pareto=assume_pareto))


def trial_id(trial: FrozenTrial) -> int:
    """A trial's id in its storage (Optuna's trial ids only grow in commit order here)."""
    return trial._trial_id


CONSTRAINTS_ATTR = "constraints"  # trial system attributes `set_constraint` writes, as `constraints:KEY`


def rescored_trial(trial: FrozenTrial, values: list[float], user_attrs: dict[str, Any],
                   constraints: dict[str, float]) -> FrozenTrial:
    """A copy of a finished trial with other objective values, user attributes and constraints.

    Why here: `FrozenTrial.set_constraint` keeps the first value a key was given, so the copy is
    built without the old constraint attributes (which key they live under is Optuna's detail)."""
    system = {k: v for k, v in trial.system_attrs.items() if not k.startswith(CONSTRAINTS_ATTR)}
    out = FrozenTrial(number=trial.number, state=trial.state, value=None, values=list(values),
                      datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete,
                      params=dict(trial.params), distributions=dict(trial.distributions),
                      user_attrs={**trial.user_attrs, **user_attrs}, system_attrs=system,
                      intermediate_values=dict(trial.intermediate_values), trial_id=trial_id(trial))
    for key, value in constraints.items():
        out.set_constraint(key, value)
    return out


def start_generation(study: optuna.Study, trials: Iterable[optuna.trial.Trial]) -> None:
    """Put enqueued (warm-start) `trials` of an NSGA-II study in generation 0.

    Why: NSGA-II gives enqueued trials no generation, so it would never select them as parents
    and the warm start would be lost on the evolution; they are the initial population.
    """
    if not isinstance(study.sampler, optuna.samplers.NSGAIISampler):
        return
    key = study.sampler._get_generation_key()
    storage = study._storage
    for trial in trials:
        attrs = storage.get_trial_system_attrs(trial._trial_id)
        if "fixed_params" in attrs and key not in attrs:
            storage.set_trial_system_attr(trial._trial_id, key, 0)


def _params(fn: Any) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)


def check() -> list[str]:
    """What of the internals above the installed Optuna no longer has, one line each (empty: all there).

    Checks that each is still there with the parameters and the behaviour used, so an Optuna
    upgrade that changed one fails a test that names it instead of a search going wrong.
    """
    problems = list(_MISSING)
    version = optuna.__version__
    if int(version.split(".")[0]) != OPTUNA_MAJOR:
        problems.append(f"Optuna {version} is not the {OPTUNA_MAJOR}.x release line these internals were read from")
    if not _MISSING:
        if _params(_compute_hypervolume)[:3] != ("loss_vals", "reference_point", "assume_pareto"):
            problems.append(f"compute_hypervolume's parameters are now {_params(_compute_hypervolume)}")
        elif abs(hypervolume(np.array([[0.5, 0.5]]), np.ones(2)) - 0.25) > 1e-12:
            problems.append("compute_hypervolume no longer gives 0.25 for the point (0.5, 0.5) up to (1, 1)")
        if "assume_unique_lexsorted" not in _params(_is_pareto_front):
            problems.append(f"_is_pareto_front's parameters are now {_params(_is_pareto_front)}")
        elif is_pareto_front(np.array([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [1.0, 2.0]])).tolist() != [True, True,
                                                                                                       False, True]:
            problems.append("_is_pareto_front no longer keeps every non-dominated row (duplicates included)")
        for table, attrs in SCHEMA.items():
            cls = getattr(models, table, None)
            if cls is None:
                problems.append(f"optuna.storages._rdb.models has no {table}")
                continue
            problems += [f"optuna.storages._rdb.models.{table} has no {a}" for a in attrs if not hasattr(cls, a)]
    key = getattr(optuna.samplers.NSGAIISampler, "_get_generation_key", None)
    if not callable(key) or not isinstance(key(), str):
        problems.append("NSGAIISampler has no _get_generation_key() naming the generation's system attribute")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    storage = getattr(study, "_storage", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["loss"])
    if METRIC_NAMES_ATTR not in storage.get_study_system_attrs(study._study_id):
        problems.append(f"Study.set_metric_names no longer stores the names as {METRIC_NAMES_ATTR!r}")
    for method in ("get_trial_system_attrs", "set_trial_system_attr", "get_study_system_attrs"):
        if not callable(getattr(storage, method, None)):
            problems.append(f"Study._storage has no {method}")
    if problems:
        return problems
    trial = study.ask()
    if not isinstance(getattr(trial, "_trial_id", None), int):
        problems.append("Trial has no integer _trial_id")
    study.tell(trial, 0.0)
    if not isinstance(getattr(study.trials[0], "_trial_id", None), int):
        problems.append("FrozenTrial has no integer _trial_id")
    return problems
