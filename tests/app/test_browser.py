"""The explorer in a real browser: Debian's Chromium driven by Playwright (no browser download).

Starts `workbench app` on a free localhost port, visits every page through the sidebar (one
browser session, so the chosen pair carries over), runs one action per page, asserts that no
error or exception element appears, and saves a full-page screenshot per page under
tests/artifacts/ (not committed; `docs/screenshots/` holds a curated copy).

The pair is the demo pair unless WORKBENCH_APP_PAIR names another choice of the sidebar
(e.g. "zoo: entity-tuned"); the Experts page switches to WORKBENCH_APP_MOE_PAIR (default the
demo MoE pair) since it needs a mixture-of-experts model. WORKBENCH_APP_PAIRS (JSON, page ->
pair) overrides single pages, e.g. '{"novelty": "zoo: novel-tuned"}' for the docs screenshots.
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
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ROOT = Path(__file__).resolve().parents[2]
PAIR = os.environ.get("WORKBENCH_APP_PAIR", "demo: tiny random pair")
MOE_PAIR = os.environ.get("WORKBENCH_APP_MOE_PAIR", "demo-moe: tiny random MoE pair")
PER_PAGE = json.loads(os.environ.get("WORKBENCH_APP_PAIRS", "{}"))
LONG = 600_000  # ms: generous for a loaded 2-core CI machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does this)")
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "app", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read().strip() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"the app did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # Streamlit's clean shutdown (Ctrl-C); SIGTERM can hang on a busy run
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser_page(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=ARGS, headless=True,
                                                   viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        page.set_default_timeout(LONG)
        yield page
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def settle(page) -> None:
    """Wait until the script run is over: the status widget ("Running...") shows up, then goes."""
    from playwright.sync_api import TimeoutError as PwTimeout

    status = page.locator('[data-testid="stStatusWidget"]')
    try:
        status.wait_for(state="visible", timeout=5000)
    except PwTimeout:
        pass  # a fast run can be over before we look
    status.wait_for(state="hidden", timeout=LONG)
    page.wait_for_timeout(500)


def no_errors(page, name: str) -> None:
    exc = page.locator('[data-testid="stException"]')
    err = page.locator('[data-testid="stAlertContentError"]')
    msgs = [exc.nth(i).inner_text() for i in range(exc.count())] + [err.nth(i).inner_text() for i in range(err.count())]
    assert not msgs, f"{name}: error elements on the page: {msgs}"


def choose(page, label: str, option: str) -> None:
    box = page.get_by_role("combobox", name=label, exact=True)
    if box.input_value() == option:
        return
    box.click()
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def click(page, text: str) -> None:
    page.get_by_role("button", name=text, exact=True).click()
    settle(page)


def goto(page, title: str, key: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
    settle(page)
    choose(page, "pair", PER_PAGE.get(key, MOE_PAIR if key == "experts" else PAIR))
    no_errors(page, f"{key} (pair loaded)")


def shoot(page, name: str) -> None:
    """Screenshot the whole page: Streamlit scrolls inside its main block, not the document, so
    the viewport is grown to the content's height for the shot."""
    ARTIFACTS.mkdir(exist_ok=True)
    js = ("() => { const m = document.querySelector('[data-testid=\"stMain\"]') || document.body;"
          " m.scrollTo(0, 0); return m.scrollHeight; }")
    height = 0
    for _ in range(4):  # charts below the fold draw late and grow the page: measure until it settles
        page.wait_for_timeout(1500)
        h = int(min(max(1000, page.evaluate(js) + 40), 8000))
        if h == height:
            break
        height = h
        page.set_viewport_size({"width": 1400, "height": height})
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def wait_charts(page, n: int) -> None:
    """Wait until at least n plotly charts are drawn (a loaded machine can take minutes)."""
    page.wait_for_function(f"document.querySelectorAll('[data-testid=\"stPlotlyChart\"]').length >= {n}",
                           timeout=LONG)
    settle(page)


def test_every_page_in_chromium(server, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    page.goto(server)
    page.get_by_role("combobox", name="pair", exact=True).wait_for()  # the first run imports torch: slow
    settle(page)
    choose(page, "pair", PAIR)
    no_errors(page, "start")

    # 1 Overview: the weight diff renders; run DARE and Graft.
    goto(page, "Overview", "overview")
    wait_charts(page, 3)
    click(page, "Run DARE and Graft")
    no_errors(page, "overview")
    wait_charts(page, 5)
    shoot(page, "1_overview")

    # 2 Activations: type a prompt, the KL strip and the lens follow it.
    goto(page, "Activations", "activations")
    box = page.get_by_label("prompt", exact=True)
    box.fill("jack screamed at the guard and said")
    box.press("Enter")
    settle(page)
    expect(page.locator(".kl-tokens")).to_contain_text("guard", timeout=LONG)
    no_errors(page, "activations")
    wait_charts(page, 5)
    shoot(page, "2_activations")

    # 3 Probes & knob: probe both models.
    goto(page, "Probes & knob", "probes")
    click(page, "Probe both models")
    no_errors(page, "probes")
    wait_charts(page, 1)
    shoot(page, "3_probes")

    # 4 Circuits: patching heatmaps and the CMAP table.
    goto(page, "Circuits", "circuits")
    click(page, "Patch")
    no_errors(page, "circuits")
    wait_charts(page, 3)
    shoot(page, "4_circuits")

    # 5 Novelty: contrastive generations, tokens coloured by score.
    goto(page, "Novelty", "novelty")
    click(page, "Generate")
    no_errors(page, "novelty")
    expect(page.locator(".cge-row").first).to_be_visible(timeout=LONG)
    shoot(page, "5_novelty")

    # 6 Edits: fit Model Surgery and apply it to the private copy.
    goto(page, "Edits", "edits")
    click(page, "Fit Model Surgery on the tuned model")
    click(page, "Apply to my copy")
    no_errors(page, "edits")
    expect(page.get_by_text("edit applied")).to_be_visible(timeout=LONG)
    shoot(page, "6_edits")

    # 7 Experts: needs a mixture-of-experts pair.
    goto(page, "Experts", "experts")
    click(page, "Run fTRI")
    click(page, "Generate")
    no_errors(page, "experts")
    wait_charts(page, 1)
    shoot(page, "7_experts")
