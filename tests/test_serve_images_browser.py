"""The chat page's Image tab in a real browser: Debian's headless Chromium driven by Playwright.

Loads `/` from a `seed serve` of a tiny image pipeline (tests/helpers/images.py) with a key, sees
the tab chosen from the model card, sends a prompt with a seed, waits for the streamed image, and
checks it is the image the API gives for the same prompt and seed; saves a screenshot.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import httpx
import pytest

from helpers.images import tiny_image_pipeline
from helpers.serve import running_server

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install playwright)")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which("chromium") is None,
    reason="Debian's chromium is not installed: apt-get install -y chromium")]

PROMPT = "red circle left of blue square"


def test_image_tab_draws_the_api_image(tmp_path):
    pipeline = tiny_image_pipeline(tmp_path / "tiny-image")
    with running_server(pipeline, "--api-key", "sk-page", "--threads", "1") as url, \
            playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 760})
        page.goto(url + "/")
        page.click("summary")
        page.fill("#key", "sk-page")
        page.dispatch_event("#key", "change")
        page.reload()  # the key is kept in the browser; the model card now loads with it
        page.wait_for_selector("#tab-image[aria-selected='true']", timeout=30_000)
        assert page.locator("#model").inner_text() == "tiny-image"
        page.click("summary")
        page.fill("#seed", "7")
        page.fill("#input", PROMPT)
        page.click("#send")
        page.wait_for_selector(".msg.assistant[data-done='true']", timeout=60_000)
        assert page.locator(".msg.error").count() == 0
        assert page.locator(".msg.assistant").get_attribute("data-stage") == "image"
        src = page.locator(".msg.assistant img.drawn").get_attribute("src")
        width = page.evaluate("document.querySelector('img.drawn').naturalWidth")
        shot = tmp_path / "image.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
        api = httpx.post(url + "/v1/images/generations",
                         headers={"Authorization": "Bearer sk-page"},
                         json={"model": "tiny-image", "prompt": PROMPT, "seed": 7},
                         timeout=60).json()
    assert src.startswith("data:image/png;base64,") and width == 16
    assert base64.b64decode(src.split(",", 1)[1]) == base64.b64decode(api["data"][0]["b64_json"])
    assert shot.stat().st_size > 3000
