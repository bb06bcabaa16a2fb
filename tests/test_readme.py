"""The README's examples, run as written, and the CLI and the dashboard telling the same story.

A small prepared database stands in for what `make demo` leaves: a synthetic device stored under
this machine's default name (`hw.default_device_name()`, as `make demo` names it) with a trained
predictor, and two finished, verified jobs in the demo's order: 1, latency × size, and 2,
`digits_vit` latency × quality (job 1 searches `digits_vit` too, where the demo searches
`vit_base`: timing vit_base plans would take minutes). The ```python and ```bash blocks of the
README's "Searching plans" section then run as they stand, with HWSEARCH_DB naming the database:
the Python in a subprocess of its own, each shell line through bash. Afterwards every job of the
database (and of `HWSEARCH_DEMO_DB`, when set to a database `make demo` filled) is read by
`hwsearch jobs show --json` and by the dashboard's data layer: same front size, same errors.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from searchworld import make_world

pytestmark = [pytest.mark.slow, pytest.mark.ray]

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Searching plans, exporting them, looking at them"


def readme_blocks(language: str) -> list[str]:
    """The fenced `language` blocks of the README's search section, as written."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    section = text[start: text.index("\n## ", start + len(SECTION))]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The prepared database, and the environment the README's commands run in."""
    from hwsearch.profilers.runner import default_device_name
    from hwsearch.search import jobs
    from hwsearch.search.client import Client
    from hwsearch.search.spec import SearchSpec

    home = tmp_path_factory.mktemp("home")
    url = f"sqlite:///{home / 'hwsearch.db'}"
    env = {**os.environ, "HWSEARCH_HOME": str(home), "HWSEARCH_DB": url, "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # the venv's hwsearch
    before = {k: os.environ.get(k) for k in ("HWSEARCH_HOME", "HWSEARCH_DB")}
    os.environ.update(HWSEARCH_HOME=str(home), HWSEARCH_DB=url)
    try:
        make_world(url, device=default_device_name())
        client = Client(url)
        for objectives, verify in ((["latency", "size"], 1), (["latency", "quality"], 2)):
            job = client.create(SearchSpec(model="digits_vit", device=default_device_name(), objectives=objectives,
                                           n_trials=60, n_workers=1, verify_top_k=verify))
            assert jobs.run_job(url, job.id, 1, launch=jobs.inline_launcher) == "done", job.status().error
        client.close()
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"url": url, "env": env, "cwd": tmp_path_factory.mktemp("work")}


def test_readme_examples_run_as_written(demo) -> None:
    (python,) = readme_blocks("python")
    (shell,) = readme_blocks("bash")
    old = os.umask(0o022)
    try:
        run = subprocess.run([sys.executable, "-c", python], cwd=demo["cwd"], env=demo["env"], capture_output=True,
                             text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Started a local Ray instance" not in run.stderr + run.stdout  # Ray's INFO lines only with --verbose
        assert "predicted latency_ms" in run.stdout and "quality" in run.stdout
        outputs = {}
        for line in (raw.split("#")[0].strip() for raw in shell.splitlines()):
            if line:
                done = subprocess.run(["bash", "-c", line], cwd=demo["cwd"], env=demo["env"], capture_output=True,
                                      text=True, timeout=300)
                assert done.returncode == 0, f"{line}: {done.stderr[-2000:]}"
                assert "Started a local Ray instance" not in done.stderr
                outputs[line.split()[1] + " " + line.split()[2]] = done.stdout
    finally:
        os.umask(old)
    assert "Pareto front of job 2" in outputs["jobs show"] and "error %" in outputs["jobs show"]
    assert re.search(r"job 2 trial \d+ \(the best Pareto plan with quality >= 0.95\): predicted latency_ms",
                     outputs["export 2"])
    assert "written by `hwsearch export`, not a plan" in outputs["plan validate"]
    assert "valid plan for digits_vit" in outputs["plan validate"]
    for name in ("plan.ct.json", "demo.ct.json", "demo.ct.plan.json"):
        assert (demo["cwd"] / name).stat().st_mode & 0o777 == 0o644, name


def _databases(demo) -> list[str]:
    urls = [demo["url"]]
    if os.environ.get("HWSEARCH_DEMO_DB"):
        urls.append(os.environ["HWSEARCH_DEMO_DB"])
    return urls


def test_cli_and_dashboard_agree_on_every_job(demo) -> None:
    """Front size and each verified plan's error, as `hwsearch jobs show --json` and the dashboard read them."""
    from hwsearch.dashboard import data
    from hwsearch.search.client import Client

    for url in _databases(demo):
        client = Client(url)
        ids = [st.id for st in client.jobs() if st.status == "done"]
        client.close()
        assert ids, f"no finished job in {url}"
        for job_id in ids:
            shown = subprocess.run([sys.executable, "-m", "hwsearch.cli", "jobs", "show", str(job_id), "--json",
                                    "--db", url], env=demo["env"], capture_output=True, text=True, timeout=300)
            assert shown.returncode == 0, shown.stderr[-2000:]
            doc = json.loads(shown.stdout)
            df, _ = data.study_front(url, job_id)
            assert len(doc["pareto"]) == int(df["pareto"].sum()), (url, job_id)
            assert sorted(r["trial"] for r in doc["pareto"]) == sorted(df.loc[df["pareto"], "number"]), (url, job_id)
            cli_errors = {int(r["trial"]): r["error_pct"] for r in doc["verifications"]}  # the last row per trial
            page = df[df["verified"]].set_index("number")["error_pct"].to_dict()
            assert cli_errors.keys() == page.keys() and cli_errors, (url, job_id)
            for trial, error in cli_errors.items():
                assert error == pytest.approx(page[trial]), (url, job_id, trial)
