"""End to end: `hwsearch dashboard` in a real headless Chromium, a Pareto point clicked, its plan found.

The server is started the way a user starts it (the CLI, on a free loopback port) over a
seeded SQLite database, and driven with Selenium through Debian's chromium and chromedriver.
Screenshots go to pytest's tmp folder and are copied to `artifacts/dashboard/` (git-ignored)
for a person to look at. Server and browser are stopped in teardown, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_seed import seed

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "dashboard"
START_TIMEOUT_S = 90
WAIT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dashboard exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"dashboard did not answer on port {port} within {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("dash-browser") / "hwsearch.db"
    return seed(f"sqlite:///{path}", trials=30, profile=False)


@pytest.fixture(scope="module")
def server(seeded, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`hwsearch dashboard --port P --db URL` in its own process group; killed in teardown."""
    port = _free_port()
    log = tmp_path_factory.mktemp("dash-log") / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hwsearch.cli", "dashboard", "--port", str(port), "--db", seeded.url],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        _wait_healthy(port, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
                    "apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for png in folder.glob("*.png"):
        shutil.copy2(png, ARTIFACTS / png.name)


def _snap(driver, folder: Path, name: str, height: int | None = None) -> Path:
    """Screenshot of the whole app: the window is grown to the page's height first (Streamlit
    scrolls inside its own container, so a viewport-sized shot would cut the page off)."""
    full = height or driver.execute_script(
        "const m = document.querySelector('[data-testid=\"stMain\"]') || document.body; return m.scrollHeight;")
    driver.set_window_size(1400, max(900, min(int(full) + 120, 5000)))
    time.sleep(1.0)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.3).until(condition)
    except TimeoutException:
        pytest.fail(f"timed out waiting for {what}; page text: {driver.find_element('tag name', 'body').text[:1500]}")


def _text_on_page(text: str):
    return lambda d: text in d.find_element("tag name", "body").text


def test_click_pareto_point_shows_its_plan(server, browser, seeded, shots):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{server}/pareto?job={seeded.done_job}")
    _wait(driver, _text_on_page("Plan of trial"), "the Pareto explorer")
    _wait(driver, lambda d: d.execute_script(
        "const g = document.querySelector('.js-plotly-plot'); return !!(g && g.data && g.data.length);"),
        "the Pareto chart")
    # The front trace (SVG points); pick a point other than the one selected by default.
    info = driver.execute_script("""
        const gd = document.querySelector('.js-plotly-plot');
        const svgTraces = gd.data.filter(t => t.type === 'scatter');
        const i = svgTraces.findIndex(t => t.name === 'Pareto front');
        return {i: i, trials: gd.data.find(t => t.name === 'Pareto front').customdata.map(c => c[0])};
    """)
    default = int(driver.find_element(By.XPATH, "//h2[starts-with(normalize-space(.), 'Plan of trial')]")
                  .text.split()[-1])
    assert sorted(info["trials"]) == sorted(seeded.front)
    k = next(j for j, n in enumerate(info["trials"]) if int(n) != default and j > len(info["trials"]) // 2)
    target = int(info["trials"][k])
    traces = driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .trace")
    point = traces[info["i"]].find_elements(By.CSS_SELECTOR, "path.point")[k]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", point)
    ActionChains(driver).move_to_element(point).click().perform()

    heading = f"Plan of trial {target}"
    _wait(driver, _text_on_page(heading), f"'{heading}' after clicking the point")
    assert f"trial={target}" in driver.current_url
    _snap(driver, shots, "pareto-point-selected")

    # The plan shown is that trial's plan, as the search package rebuilds it from the trial.
    from hwsearch.dashboard.plans import layer_table
    from hwsearch.search.client import Client

    client = Client(seeded.url)
    try:
        stored = json.loads(client.job(seeded.done_job).plan(target).to_json())
    finally:
        client.close()
    tab = next(t for t in driver.find_elements(By.CSS_SELECTOR, "[role='tab']") if t.text.strip() == "Plan JSON")
    driver.execute_script("arguments[0].click();", tab)
    code = _wait(driver, lambda d: next((c for c in d.find_elements(By.CSS_SELECTOR, "[data-testid='stCode'] code")
                                         if c.text.strip()), None), "the plan JSON")
    shown = json.loads(code.get_attribute("textContent"))
    assert (shown["model"], shown["layers"], shown.get("merge")) == (stored["model"], stored["layers"], stored.get("merge"))
    # The heat-map labels every compressed layer's choice.
    table = layer_table(stored)
    heat = driver.execute_script(
        "return Array.from(document.querySelectorAll('.js-plotly-plot')).map(g => g.data && g.data[0] && g.data[0].type);")
    assert "heatmap" in heat
    assert set(table["choice"]) <= set(driver.execute_script(
        "const g = Array.from(document.querySelectorAll('.js-plotly-plot')).find(g => g.data[0].type === 'heatmap');"
        "return g.data[0].text.flat();"))
    header = driver.find_element(By.XPATH, f"//h2[normalize-space(.)='{heading}']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", header)
    time.sleep(0.5)
    driver.save_screenshot(str(shots / "plan-json.png"))


def test_pages_render_for_a_person(server, browser, seeded, shots):
    """The other pages load in the browser without an error; screenshots for the closing note."""
    driver = browser
    for path, expect, name in (
        ("", "Open in Pareto explorer", "jobs"),
        ("devices", "Predictor accuracy", "devices"),
        (f"compare?job={seeded.done_job}", "Compare fronts", "compare"),
        (f"pareto?job={seeded.running_job}", "no trial has finished yet", "pareto-running-job"),
    ):
        driver.get(f"{server}/{path}")
        _wait(driver, _text_on_page(expect), f"{path} to show {expect!r}")
        if name in ("devices", "compare"):
            _wait(driver, lambda d: d.execute_script(
                "return document.querySelectorAll('.js-plotly-plot').length > 0;"), f"charts on {path}")
        assert "Traceback" not in driver.find_element("tag name", "body").text
        assert not driver.find_elements("css selector", "[data-testid='stException']")
        _snap(driver, shots, name)
