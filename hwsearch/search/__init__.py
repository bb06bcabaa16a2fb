"""hwsearch.search: search specs, Optuna studies, objectives, jobs on Ray, Pareto/hypervolume, verification."""
