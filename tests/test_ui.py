"""The UIs this project ships, in a real browser: Debian's chromium driven by Playwright
(no browser download; offline). A small comparison runs through ``dae compare`` against
a Prefect server and an MLflow server (SQLite stores), then the pages a user opens are
checked and photographed.

Screenshots go to ``DAE_UI_SCREENSHOTS`` (docs/images/ when the README's pictures are
remade) or to the test's temporary folder. ``DAE_UI_DATA_DIR`` runs the smoke preset on
that data instead of the tiny generated set (the README's pictures use real MNIST).
Skipped where chromium or Playwright is missing, except under CI, which must run it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests import stack
from tests.conftest import TINY

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
BIN = Path(sys.executable).parent
TINY_OVERRIDES = [f"--set=data.batch_size={TINY['data']['batch_size']}", "--set=data.train_limit=null",
                  "--set=data.test_limit=null", "--set=pretrain.epochs=4", "--set=pretrain.hidden_units=32",
                  "--set=classifier.epochs=3"]


@dataclass
class UiStack:
    prefect_ui: str
    mlflow_ui: str
    experiment_id: str
    parent: object  # mlflow Run
    children: list
    shots: Path


def _need_browser() -> None:
    missing = [what for what, ok in (("/usr/bin/chromium", CHROMIUM.exists()),
                                     ("playwright", _importable("playwright"))) if not ok]
    if missing:
        reason = f"{' and '.join(missing)} not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the browser test (.ci/run installs them)")
        pytest.skip(reason)


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory, data_root):
    _need_browser()
    root = tmp_path_factory.mktemp("ui")
    shots = Path(os.environ.get("DAE_UI_SCREENSHOTS") or root / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    prefect_port, mlflow_port = stack.free_port(), stack.free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DAE_"))}
    env = {**inherited, "PATH": f"{BIN}:{inherited.get('PATH', '')}", "PREFECT_HOME": str(root / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with contextlib.ExitStack() as started:
        # The UI asks the API at PREFECT_UI_API_URL, which otherwise names the default port 4200.
        started.enter_context(stack.background(
            stack.prefect_server_command(prefect_port), {**env, "PREFECT_UI_API_URL": api},
            root / "prefect-server.log", ready_url=f"{api}/health", timeout=180))
        started.enter_context(stack.background(
            stack.mlflow_server_command(mlflow_port, str(root / "artifacts"), login=False),
            {**env, "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'mlflow.db'}"}, root / "mlflow-server.log",
            ready_url=f"http://127.0.0.1:{mlflow_port}/health", timeout=120))
        tracking = f"http://127.0.0.1:{mlflow_port}"
        data_dir = os.environ.get("DAE_UI_DATA_DIR")
        overrides = [] if data_dir else TINY_OVERRIDES
        done = subprocess.run(
            [str(BIN / "dae"), "compare", "--preset", "smoke", *overrides, "--seeds", "2",
             "--cells", "adam-noise", "no-pretraining", "--no-download", "--data-dir", data_dir or str(data_root)],
            env={**env, "PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": tracking}, cwd=root,
            capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        client = MlflowClient(tracking_uri=tracking)
        experiment_id = client.get_experiment_by_name("dae-mnist").experiment_id
        (parent,) = client.search_runs([experiment_id], "tags.`dae.role` = 'comparison'")
        children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        yield UiStack(f"http://127.0.0.1:{prefect_port}", tracking, experiment_id, parent, children, shots)


@pytest.fixture(scope="module")
def browser(ui_stack):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    yield context.new_page()
    context.close()


def _close_mlflow_assistant(page) -> None:
    """MLflow 3.17 opens an assistant panel beside every page; close it for the pictures."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def test_mlflow_opens_the_experiment_on_its_runs_and_children_carry_their_cell_names(ui_stack, page):
    from adapters.mlflow_links import experiment_link

    page.goto(experiment_link(ui_stack.mlflow_ui, ui_stack.experiment_id))
    parent_name = ui_stack.parent.info.run_name
    page.get_by_text(parent_name).first.wait_for(timeout=60_000)
    assert page.get_by_role("heading", name="Runs").count() >= 1
    assert page.get_by_text("Traces", exact=True).count() <= 1, "the GenAI overview would show trace panels"
    _close_mlflow_assistant(page)
    page.locator("[role=row]", has_text=parent_name).first.locator("button").first.click()  # expand the parent
    for child in ui_stack.children:
        page.get_by_text(child.info.run_name, exact=True).wait_for(timeout=30_000)
    assert sorted(c.info.run_name for c in ui_stack.children) == [
        "adam-noise-seed0", "adam-noise-seed1", "no-pretraining-seed0", "no-pretraining-seed1"]
    page.screenshot(path=ui_stack.shots / "mlflow-runs.png")


def test_mlflow_group_by_cell_draws_one_mean_curve_per_cell(ui_stack, page):
    from adapters.mlflow_links import experiment_link

    page.goto(experiment_link(ui_stack.mlflow_ui, ui_stack.experiment_id))
    page.get_by_text(ui_stack.parent.info.run_name).first.wait_for(timeout=60_000)
    _close_mlflow_assistant(page)
    page.get_by_role("button", name="Group by").click()
    # .last: the menu opens at the end of the page; the experiment description also names `dae.cell`.
    page.get_by_text("dae.cell", exact=True).last.click()
    page.keyboard.press("Escape")
    page.get_by_text("Group: adam-noise").first.wait_for(timeout=30_000)
    page.locator("input[value=CHART]").locator("xpath=..").click(force=True)  # the charts view
    page.get_by_text("classifier/test_accuracy", exact=True).first.wait_for(timeout=30_000)
    page.wait_for_timeout(2000)
    page.screenshot(path=ui_stack.shots / "mlflow-group-by-cell.png")
    # Each chart is a Plotly figure: a curve with its points is a "lines+markers" trace (a
    # band is a filled one). Ungrouped, each of the 4 child runs would draw its own.
    curves = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(plot =>
        (plot.data || []).filter(trace => trace.mode === 'lines+markers').length)""")
    assert curves[0] == 2, f"curves per chart: {curves} (2 cells of 2 seeds each: one mean curve per cell)"
    page.get_by_placeholder("Search metric charts").fill("pretrain/mse")  # charts below the fold render lazily
    page.get_by_text("pretrain/mse", exact=True).first.wait_for(timeout=30_000)


def test_mlflow_run_page_shows_the_description_and_the_figures(ui_stack, page):
    from adapters.mlflow_links import run_link

    child = next(c for c in ui_stack.children if c.info.run_name == "adam-noise-seed0")
    page.goto(run_link(ui_stack.mlflow_ui, ui_stack.experiment_id, child.info.run_id))
    page.get_by_text("cell adam-noise of a comparison").first.wait_for(timeout=60_000)
    _close_mlflow_assistant(page)
    page.screenshot(path=ui_stack.shots / "mlflow-run.png")
    for figure in ("encoder_weights_after.png", "per_class_accuracy.png"):
        page = page.context.new_page()  # a hash change alone does not reload the artifact view
        page.goto(run_link(ui_stack.mlflow_ui, ui_stack.experiment_id, child.info.run_id,
                           f"artifacts/figures/{figure}"))
        page.get_by_text(f"figures/{figure}").first.wait_for(timeout=60_000)
        # The preview is a blob: image; the figures are 800 pixels wide or more, the UI's icons far less.
        page.wait_for_function("Array.from(document.images).some(i => i.complete && i.naturalWidth >= 800)",
                               timeout=60_000)
        _close_mlflow_assistant(page)
        page.screenshot(path=ui_stack.shots / f"mlflow-{figure}")


def test_prefect_flow_run_page_shows_the_task_graph_and_the_logs(ui_stack, page):
    from playwright.sync_api import TimeoutError as PageTimeout

    child = next(c for c in ui_stack.children if c.info.run_name == "adam-noise-seed0")
    flow_run_id = child.data.tags["prefect.flow_run_id"]
    log_line = f"MLflow run {child.info.run_id}"
    logged = httpx.post(f"{ui_stack.prefect_ui}/api/logs/filter", timeout=30,
                        json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}).json()
    assert any(log["message"].startswith(log_line) for log in logged), "the run's log line reached Prefect's API"
    # The page asks for the logs once as it loads, and a machine busy enough (CI builds
    # images beside this test) can see that one request fail: a person would reload.
    for attempt in range(3):
        page.goto(f"{ui_stack.prefect_ui}/runs/flow-run/{flow_run_id}")
        page.get_by_text("adam-noise-seed0").first.wait_for(timeout=60_000)
        try:
            page.get_by_text(log_line).first.wait_for(timeout=30_000)
            break
        except PageTimeout:
            if attempt == 2:
                raise
    assert page.locator("canvas").count() >= 1, "the task graph is drawn on a canvas"
    page.get_by_text("compare-lecture-2cells-2seeds").or_(page.get_by_text("compare-smoke-2cells-2seeds")).first \
        .wait_for(timeout=30_000)  # the parent flow run, linked
    page.wait_for_timeout(2000)
    page.screenshot(path=ui_stack.shots / "prefect-flow-run.png")
