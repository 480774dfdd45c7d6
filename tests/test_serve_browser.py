"""The chat page in a real browser: Debian's headless Chromium driven by Playwright (one launch).

Loads `/` from a running `seed serve`, sends a message, waits for the streamed reply, checks the
reply equals what the API gives for the same conversation, and saves a screenshot (phone width).
Then, in front of a scripted thinking, tool-calling server (`seed serve --upstream`), the page
shows the reasoning collapsed above the content, and a tool call's name and arguments.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from helpers import scripted_chat
from helpers.models import tiny_model
from helpers.serve import running_server

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install playwright)")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which("chromium") is None,
    reason="Debian's chromium is not installed: apt-get install -y chromium")]


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


def test_chat_page_streams_a_reply(tmp_path, browser):
    model = tiny_model(tmp_path / "tiny")
    with running_server(str(model), "--api-key", "sk-page") as url:
        page = browser.new_page(viewport={"width": 390, "height": 760})
        page.goto(url + "/")
        page.click("summary")
        page.fill("#key", "sk-page")
        page.dispatch_event("#key", "change")
        page.fill("#system", "You are brief.")
        page.fill("#temperature", "0")
        page.dispatch_event("#temperature", "input")
        page.fill("#input", "Hello! How can I help you today?")
        page.click("#send")
        page.wait_for_selector(".msg.assistant[data-done='true']", timeout=60_000)
        assert page.locator("#model").inner_text() == "tiny"
        assert page.locator(".msg.user").inner_text() == "Hello! How can I help you today?"
        reply = page.locator(".msg.assistant").inner_text()
        assert page.locator(".msg.error").count() == 0
        assert page.locator(".msg.assistant details.reasoning").count() == 0
        assert page.locator(".msg.assistant .tool-call").count() == 0
        shot = tmp_path / "chat.png"
        page.screenshot(path=str(shot), full_page=True)
        page.close()
        api = httpx.post(url + "/v1/chat/completions", headers={"Authorization": "Bearer sk-page"},
                         json={"model": "tiny", "temperature": 0, "messages": [
                             {"role": "system", "content": "You are brief."},
                             {"role": "user", "content": "Hello! How can I help you today?"}]},
                         timeout=60).json()
    assert shot.stat().st_size > 5000
    expected = api["choices"][0]["message"]["content"]
    # innerText drops trailing whitespace and turns control characters into nothing visible
    assert reply.strip() == expected.strip() or reply.strip() in expected
    assert reply.strip()


def test_chat_page_shows_reasoning_collapsed_and_tool_calls(tmp_path, browser):
    with scripted_chat.scripted_chat() as upstream, \
            running_server("--upstream", upstream) as url:
        page = browser.new_page(viewport={"width": 390, "height": 760})
        page.goto(url + "/")
        page.fill("#input", "Hi there")
        page.click("#send")
        page.wait_for_selector(".msg.assistant[data-done='true']", timeout=30_000)
        first = page.locator(".msg.assistant").nth(0)
        thinking = first.locator("details.reasoning")
        assert thinking.count() == 1
        assert thinking.get_attribute("open") is None  # collapsed
        assert not thinking.locator("div").is_visible()
        assert first.locator(".content").inner_text() == scripted_chat.CONTENT
        thinking.locator("summary").click()
        assert thinking.locator("div").inner_text() == scripted_chat.REASONING
        page.fill("#input", "What is the weather in Paris?")
        page.click("#send")
        page.wait_for_selector(".msg.assistant:nth-of-type(4)[data-done='true']",
                               timeout=30_000)
        second = page.locator(".msg.assistant").nth(1)
        assert second.locator("details.reasoning").count() == 0
        assert second.locator(".tool-name").inner_text() == (
            f"Tool call: {scripted_chat.TOOL_NAME}")
        arguments = second.locator(".tool-args").inner_text()
        assert json.loads(arguments) == json.loads(scripted_chat.TOOL_ARGUMENTS)
        assert page.locator(".msg.error").count() == 0
        page.screenshot(path=str(tmp_path / "reasoning-and-tools.png"), full_page=True)
        page.close()
