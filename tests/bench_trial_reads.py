"""Benchmark: a search job's per-batch cost as its study grows (issue 14: flat, not quadratic).

Runs what a job's runner runs, in this process, on the synthetic device of `searchworld`: the
job row and its study, the heartbeat thread (every 2 s: count, front, hypervolume into the row),
and one worker filling the study batch by batch while checking the job is still its own. Each
batch's wall time (pull what is new, sample, score, write, check) and each heartbeat's are
recorded and summarised around 1k, 10k and 20k finished trials. Not a test (timings are never
asserted); run it on a quiet machine:

    .venv/bin/python tests/bench_trial_reads.py --trials 20000 --json /tmp/trial-reads.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def run(db_url: str, trials: int, sampler: str, model: str, marks: list[int], window: int) -> dict:
    from searchworld import make_world

    from hwsearch.db.engine import open_db
    from hwsearch.search import jobs
    from hwsearch.search.problem import build_problem
    from hwsearch.search.spec import SearchSpec
    from hwsearch.search.study import rdb_storage, run_worker

    make_world(db_url)
    engine = open_db(db_url)
    spec = SearchSpec(model=model, device="syn", n_trials=trials, sampler=sampler, verify_top_k=0,
                      constraints={"latency_ms": 1e9})
    problem = build_problem(engine, spec)
    job_id = jobs.create_job(engine, db_url, spec)
    job = jobs._start(engine, job_id, 1)
    storage = rdb_storage(db_url)
    study_id = storage.get_study_id_from_name(job.study_name)
    storage.remove_session()
    from hwsearch.search import pareto

    beat = jobs._Heartbeat(engine, job_id, 1, study_id, spec.objectives, pareto.bounds(problem.tables, spec.objectives))
    beats: list[tuple[int, float]] = []
    plain_beat = beat.beat

    def timed_beat() -> None:
        started = time.perf_counter()
        plain_beat()
        beats.append((beat.study.count, time.perf_counter() - started))

    beat.beat = timed_beat  # type: ignore[method-assign]
    batches: list[tuple[int, float]] = []
    done = 0
    last = time.perf_counter()

    def on_batch(n: int) -> None:
        nonlocal done, last
        now = time.perf_counter()
        done += n
        batches.append((done, now - last))
        last = now

    beat.start()
    started = time.perf_counter()
    result = run_worker(db_url, job.study_name, problem.tables, spec.objectives, spec.constraints, sampler, 0, trials,
                        warm=True, should_stop=lambda: not jobs._current(engine, job_id, 1), on_batch=on_batch)
    total = time.perf_counter() - started
    beat.done.set()
    beat.join()
    timed_beat()
    engine.dispose()

    def around(series: list[tuple[int, float]], mark: int) -> dict:
        near = [s for n, s in series if mark - window <= n <= mark + window]
        if not near:
            return {"n": 0}
        return {"n": len(near), "median_ms": 1e3 * float(np.median(near)), "p90_ms": 1e3 * float(np.quantile(near, 0.9))}

    return {
        "db": db_url.split(":")[0], "trials": trials, "written": result.written, "sampler": sampler, "model": model,
        "batch": 10, "total_s": total, "threads": threading.active_count(),
        "per_batch": {str(m): around(batches, m) for m in marks},
        "heartbeat": {str(m): around(beats, m) for m in marks},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20000)
    parser.add_argument("--sampler", default="nsga2")
    parser.add_argument("--model", default="vit_base")
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--window", type=int, default=250, help="batches within +-N trials of each mark")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    marks = [m for m in (1000, 10000, 20000) if m <= args.trials] or [args.trials]
    url = args.db or f"sqlite:///{Path(tempfile.mkdtemp(prefix='hwbench')) / 'bench.db'}"
    doc = run(url, args.trials, args.sampler, args.model, marks, args.window)
    text = json.dumps(doc, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
