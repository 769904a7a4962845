"""The web page at `/` in headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): type a prompt, generate, watch streamed text appear, press stop."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from test_serve import Server, slow_model  # noqa: F401 (fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        msg = "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("LLAMA_RS_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page_server(slow_model):  # noqa: F811
    s = Server("-m", str(slow_model), "-w", "1", "-t", "1", "-c", "2048")
    yield s
    s.stop()


def wait_for(cond, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("condition not reached in the page")


def test_generate_streams_and_stop_stops(browser, page_server: Server) -> None:
    from selenium.webdriver.common.by import By

    browser.get(page_server.url + "/")
    assert "llama-rs" in browser.title
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("t5 t6")
    for field, value in (("max_tokens", "1500"), ("temperature", "0"), ("repeat_penalty", "1")):
        el = browser.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    generated = lambda: browser.find_element(By.ID, "generated").text  # noqa: E731
    first = wait_for(lambda: len(generated()) > 0 and generated())
    later = wait_for(lambda: len(generated()) > len(first) + 20 and generated())
    assert later.startswith(first)  # text grows as it streams
    assert "tok/s" in browser.find_element(By.ID, "stats").text
    browser.find_element(By.ID, "stop").click()
    wait_for(lambda: "(stopped)" in browser.find_element(By.ID, "stats").text)
    stopped_at = generated()
    time.sleep(0.5)
    assert generated() == stopped_at
    assert browser.find_element(By.ID, "generate").is_enabled()
    # The server let go of the worker: a new generation runs to its end.
    wait_for(lambda: not any(w["busy"] for w in page_server.health()["workers"]))
    el = browser.find_element(By.ID, "max_tokens")
    el.clear()
    el.send_keys("8")
    browser.find_element(By.ID, "generate").click()
    wait_for(lambda: "finished: length" in browser.find_element(By.ID, "stats").text)
    assert "8 tokens" in browser.find_element(By.ID, "stats").text
