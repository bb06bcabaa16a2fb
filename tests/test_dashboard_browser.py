"""End to end: `hwsearch dashboard` in a real headless Chromium: every page visited, every kind
of point clicked, and any Streamlit exception on the way is a failure.

The server is started the way a user starts it (the CLI, on a free loopback port) over a
seeded SQLite database, and driven with Selenium through Debian's chromium and chromedriver.
Points are clicked with the mouse where Plotly draws them (the dominated and infeasible ones
too: a click on them once replaced the page with a KeyError). Screenshots go to pytest's tmp
folder and are copied to `artifacts/dashboard/` (git-ignored) for a person to look at. Server
and browser are stopped in teardown, also when a test fails.
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


def _number(text: str | None) -> float | None:
    """A number box's shown value as a float (None while it holds no number)."""
    try:
        return float(text or "")
    except ValueError:
        return None


def _no_exception(driver, where: str) -> None:
    """No Streamlit exception, traceback or "Page not found" on the page, and no Deploy button."""
    body = driver.find_element("tag name", "body").text
    boxes = driver.find_elements("css selector", "[data-testid='stException']")
    assert not boxes, f"{where}: {boxes[0].text[:1500]}"
    for bad in ("Traceback", "Page not found", "KeyError"):
        assert bad not in body, f"{where}: {bad!r} on the page: {body[:1500]}"
    assert not driver.find_elements("css selector", "[data-testid='stAppDeployButton']"), f"{where}: Deploy button"


def _heading_trial(driver) -> int:
    from selenium.webdriver.common.by import By

    return int(driver.find_element(By.XPATH, "//h2[starts-with(normalize-space(.), 'Plan of trial')]").text.split()[-1])


def _settle(driver) -> None:
    """Wait until Streamlit has finished the rerun a click started (no running indicator)."""
    time.sleep(0.8)
    _wait(driver, lambda d: not d.find_elements("css selector", "[data-testid='stStatusWidget']"), "the rerun to end")


POINT_JS = """
    // The most isolated visible point of the named trace (so a click there picks it, not a neighbour),
    // skipping the trial shown now: its screen centre and the trial number in its customdata.
    const [name, skip] = arguments;
    const gd = document.querySelector('.js-plotly-plot');
    const svg = gd.data.filter(t => t.type === 'scatter');
    const groups = gd.querySelectorAll('.scatterlayer .trace');
    const area = gd.querySelector('.nsewdrag').getBoundingClientRect();
    const centre = el => { const r = el.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; };
    const all = Array.from(gd.querySelectorAll('.scatterlayer .trace path.point')).map(centre);
    const i = svg.findIndex(t => t.name === name || t.name.startsWith(name));
    if (i < 0) return null;
    let best = null;
    Array.from(groups[i].querySelectorAll('path.point')).forEach((el, k) => {
        const [x, y] = centre(el);
        const trial = Math.round(svg[i].customdata[k][0]);
        if (trial === skip || x < area.left + 4 || x > area.right - 4 || y < area.top + 4 || y > area.bottom - 4) return;
        const gap = Math.min(...all.filter(([a, b]) => a !== x || b !== y).map(([a, b]) => Math.hypot(a - x, b - y)));
        if (!best || gap > best.gap) best = {x: x, y: y, gap: gap, trial: trial};
    });
    return best;
"""


def _click_at(driver, x: float, y: float) -> None:
    """A real mouse click at viewport coordinates (x, y)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(round(x)), int(round(y))).click()
    actions.perform()


def _toggle(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    _wait(driver, lambda d: d.find_elements(By.XPATH, f"//label[.//input[@aria-label='{label}']]"),
          f"the {label!r} toggle")
    box = driver.find_element(By.XPATH, f"//label[.//input[@aria-label='{label}']]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    box.click()
    _settle(driver)


def test_click_pareto_point_shows_its_plan(server, browser, seeded, shots):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{server}/pareto?job={seeded.done_job}")
    _wait(driver, _text_on_page("Plan of trial"), "the Pareto explorer")
    _wait(driver, lambda d: d.execute_script(
        "const g = document.querySelector('.js-plotly-plot'); return !!(g && g.data && g.data.length);"),
        "the Pareto chart")
    # The front trace (SVG points); click its most isolated point other than the one selected by
    # default (a point with a neighbour under the cursor could pick the neighbour).
    trials = driver.execute_script(
        "return document.querySelector('.js-plotly-plot').data.find(t => t.name === 'Pareto front').customdata.map(c => c[0]);")
    default = int(driver.find_element(By.XPATH, "//h2[starts-with(normalize-space(.), 'Plan of trial')]")
                  .text.split()[-1])
    assert sorted(trials) == sorted(seeded.front)
    driver.execute_script("document.querySelector('.js-plotly-plot').scrollIntoView({block: 'center'});")
    time.sleep(0.3)
    point = driver.execute_script(POINT_JS, "Pareto front", default)
    target = int(point["trial"])
    _click_at(driver, point["x"], point["y"])

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


def test_every_page_opens_without_an_exception(server, browser, seeded, shots):
    """Every page, as a link or a typed URL opens it, for a job in every state; screenshots for the note."""
    driver = browser
    for path, expect, name in (
        ("", "Open in Pareto explorer", "jobs"),
        ("jobs", "Open in Pareto explorer", "jobs-by-url"),
        ("devices", "Predictor accuracy", "devices"),
        (f"compare?job={seeded.done_job}", "Compare fronts", "compare"),
        (f"pareto?job={seeded.done_job}", "Plan of trial", "pareto"),
        (f"pareto?job={seeded.other_device_job}", "Plan of trial", "pareto-other-device"),
        (f"pareto?job={seeded.running_job}", "no trial has finished yet", "pareto-running-job"),
        (f"pareto?job={seeded.queued_job}", "This job is queued", "pareto-queued-job"),
        (f"pareto?job={seeded.failed_job}", "This job failed", "pareto-failed-job"),
        ("pareto?job=999&trial=abc", "Job #", "pareto-bad-url"),
    ):
        driver.get(f"{server}/{path}")
        _wait(driver, _text_on_page(expect), f"{path or '/'} to show {expect!r}")
        if name in ("devices", "compare", "pareto"):
            _wait(driver, lambda d: d.execute_script(
                "return document.querySelectorAll('.js-plotly-plot').length > 0;"), f"charts on {path}")
        _settle(driver)
        _no_exception(driver, path or "/")
        _snap(driver, shots, name)


def test_every_kind_of_point_chooses_its_trial(server, browser, seeded, shots):
    """A click on a front, dominated, infeasible or verified point (and on the ring of the chosen
    one) shows that trial's plan; infeasible points are reached with "axes: all trials"."""
    driver = browser
    driver.get(f"{server}/pareto?job={seeded.done_job}")
    _wait(driver, _text_on_page("Plan of trial"), "the Pareto explorer")
    _wait(driver, lambda d: d.execute_script(
        "const g = document.querySelector('.js-plotly-plot'); return !!(g && g.data && g.data.length);"), "the chart")
    clicked = {}
    for kind in ("Pareto front", "dominated", "infeasible", "measured on device", "trial "):
        if kind == "infeasible":
            _toggle(driver, "axes: all trials")
        shown = _heading_trial(driver)
        driver.execute_script("document.querySelector('.js-plotly-plot').scrollIntoView({block: 'center'});")
        time.sleep(0.3)
        point = driver.execute_script(POINT_JS, kind, -1 if kind == "trial " else shown)
        assert point is not None, f"no visible {kind!r} point to click"
        _click_at(driver, point["x"], point["y"])
        _settle(driver)
        _no_exception(driver, f"after clicking a {kind!r} point")
        _wait(driver, _text_on_page(f"Plan of trial {point['trial']}"), f"the plan of the {kind!r} point clicked")
        clicked[kind] = point["trial"]
        assert f"trial={point['trial']}" in driver.current_url
    assert clicked["measured on device"] in seeded.verified
    assert clicked["Pareto front"] in seeded.front and clicked["dominated"] not in seeded.front
    _snap(driver, shots, "pareto-infeasible-point-chosen")


def test_three_d_view_tabs_and_budget(server, browser, seeded, shots):
    """The 3-D view takes clicks and drags without an error; every tab of the plan and of the search
    opens; "best under a budget" chooses the plan `job.best` would, and says so when none fits."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from hwsearch.search.client import Client

    driver = browser
    driver.get(f"{server}/pareto?job={seeded.done_job}")
    _wait(driver, _text_on_page("Plan of trial"), "the Pareto explorer")
    _toggle(driver, "3-D view")
    _wait(driver, lambda d: d.execute_script(
        "return !!document.querySelector('.js-plotly-plot') && "
        "document.querySelector('.js-plotly-plot').data.some(t => t.type === 'scatter3d');"), "the 3-D chart")
    time.sleep(1.0)
    plot = driver.find_element(By.CSS_SELECTOR, ".js-plotly-plot")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", plot)
    # Find a pixel over a point by hovering a grid (centre first), then click there: a real click on a real point.
    driver.execute_script("const g = document.querySelector('.js-plotly-plot'); window.__hovered = null;"
                          "g.on('plotly_hover', e => { window.__hovered = e.points[0].customdata[0]; });")
    rect = plot.rect
    grid = sorted(((fx / 20, fy / 20) for fx in range(2, 19) for fy in range(2, 19)),
                  key=lambda f: abs(f[0] - 0.5) + abs(f[1] - 0.5))
    hit = None
    for fx, fy in grid:
        ActionChains(driver).move_to_element_with_offset(plot, int((fx - 0.5) * rect["width"]),
                                                         int((fy - 0.5) * rect["height"])).perform()
        if driver.execute_script("return window.__hovered;") is not None:
            hit = (fx, fy)
            break
    assert hit is not None, "no 3-D point found under the mouse"
    ActionChains(driver).click().perform()  # where the mouse hovers a point
    ActionChains(driver).click_and_hold().move_by_offset(60, 20).release().perform()  # rotate
    _settle(driver)
    _no_exception(driver, "after clicking and rotating the 3-D view")
    _snap(driver, shots, "pareto-3d")
    _toggle(driver, "3-D view")

    for tab in ("Per-layer table", "Latency by layer", "Merge schedule", "Plan JSON", "Per-layer choices",
                "Knob importance", "Hypervolume over trials"):
        el = next(t for t in driver.find_elements(By.CSS_SELECTOR, "[role='tab']") if t.text.strip() == tab)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", el)
        _settle(driver)
        _no_exception(driver, f"tab {tab!r}")
        if tab == "Per-layer choices":
            _toggle(driver, "all trials")  # the parallel coordinates of every trial
            _no_exception(driver, "parallel coordinates of all trials")

    client = Client(seeded.url)
    try:
        job = client.job(seeded.done_job)
        front = job.pareto()
        budget = float(f'{float(front["latency_ms"].median()):.4g}')  # as the box's %.4g shows and sends it
        expect = job.best_trial(max_latency_ms=budget)  # with the job's latency band, as the dashboard chooses
    finally:
        client.close()
    summary = driver.find_element(By.XPATH, "//summary[.//p[normalize-space(.)='Best plan under a budget']]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", summary)
    box = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "input[aria-label='max latency_ms']"), "budget box")
    for value, outcome in ((f"{budget:.4g}", f"Plan of trial {expect}"), ("0.000001", "no Pareto plan has latency_ms")):
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.TAB)  # leaving the box commits the number before the form is sent
        _wait(driver, lambda d, v=value: _number(box.get_attribute("value")) == float(v), f"the budget box to hold {value}")
        for _ in range(3):  # on a loaded machine a click during a rerun can be lost: choosing again is idempotent
            driver.find_element(By.XPATH, "//button[.//p[normalize-space(.)='Choose']]").click()
            _settle(driver)
            _no_exception(driver, f"budget {value}")
            if _text_on_page(outcome)(driver):
                break
        _wait(driver, _text_on_page(outcome), f"{outcome!r} after a budget of {value}")
    _snap(driver, shots, "pareto-budget")
