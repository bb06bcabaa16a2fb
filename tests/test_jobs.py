"""Search jobs on a real Ray cluster (head + a second node) with PostgreSQL.

Submitted from one process (a subprocess that exits right after submitting: the runner is a
detached actor), watched from another (this one); the runner is killed mid-run, the job turns
stale, is resumed and finishes with every trial stored exactly once; two jobs run at once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from raycluster import ray_cluster
from searchworld import make_world

from hwsearch.search import jobs
from hwsearch.search.client import Client
from hwsearch.search.study import rdb_storage

pytestmark = [pytest.mark.ray, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with ray_cluster(head_cpus=2, node_cpus=2, home=tmp_path_factory.mktemp("home")) as c:
        yield c


@pytest.fixture
def world(pg_url):
    make_world(pg_url)
    return pg_url


SUBMIT = textwrap.dedent("""
    import sys
    import hwsearch as hw
    client = hw.Client(sys.argv[1], ray_address=sys.argv[2])
    job = client.submit(hw.SearchSpec(model="digits_vit", device="syn", n_trials=int(sys.argv[3]), n_workers=2,
                                      seed=int(sys.argv[4]), verify_top_k=1, constraints={"latency_ms": 10.0}))
    print(job.id)
""")


def _submit(cluster, url: str, n: int, seed: int = 0) -> int:
    proc = subprocess.run([sys.executable, "-c", SUBMIT, url, cluster.address, str(n), str(seed)],
                          capture_output=True, text=True, env=cluster.env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.strip().splitlines()[-1])


def _numbers(url: str, job_id: int) -> list[int]:
    client = Client(url)
    row = jobs.get_job(client.engine, job_id)
    storage = rdb_storage(url)
    trials = optuna.load_study(study_name=row.study_name, storage=storage).get_trials(deepcopy=False)
    return sorted(t.number for t in trials if t.state == optuna.trial.TrialState.COMPLETE)


def test_submit_watch_kill_resume_keeps_every_trial_once(cluster, world, monkeypatch):
    import ray

    monkeypatch.setattr(jobs, "STALE_AFTER_S", 6.0)
    n = 1500
    job_id = _submit(cluster, world, n)
    client = Client(world, ray_address=cluster.address)  # another process than the submitter
    job = client.job(job_id)
    deadline = time.time() + 240
    while time.time() < deadline and job.status().n_trials_done < 100:
        time.sleep(0.5)
    st = job.status()
    assert st.status == "running" and 0 < st.n_trials_done < n, st
    ray.kill(ray.get_actor(jobs.runner_name(job_id, 1), namespace=jobs.NAMESPACE), no_restart=True)
    deadline = time.time() + 60
    while time.time() < deadline and not job.status().stale:
        time.sleep(0.5)
    st = job.status()
    assert st.stale and st.status == "running", st
    kept = _numbers(world, job_id)
    job.resume()
    final = job.wait(timeout=400)
    assert final.status == "done", final.error
    numbers = _numbers(world, job_id)
    assert numbers == list(range(n))  # every trial stored once, none past the budget
    assert set(kept) <= set(numbers)
    assert final.attempt == 2 and final.n_trials_done == n
    rounds = final.result["rounds"]  # verify-and-refit: one plan a round, more rounds only while plans missed their band
    verified = job.verifications()
    assert 1 <= len(rounds) <= 3 and len(verified) == sum(r["plans"] for r in rounds) and verified.trial.is_unique


def test_two_jobs_at_once(cluster, world):
    a, b = _submit(cluster, world, 200, seed=1), _submit(cluster, world, 200, seed=2)
    client = Client(world, ray_address=cluster.address)
    done = [client.job(j).wait(timeout=400) for j in (a, b)]
    assert [d.status for d in done] == ["done", "done"], [d.error for d in done]
    assert _numbers(world, a) == _numbers(world, b) == list(range(200))
    listed = {j.id: j.status for j in client.jobs()}
    assert listed[a] == listed[b] == "done"
