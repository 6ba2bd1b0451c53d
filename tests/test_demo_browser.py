"""The demo in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium) on
`demo/app.py` served offline on the embedded default, as `make demo` serves it.

The page's screenshot after the run is the README's `docs/demo.png`: set `SYNFER_DEMO_SCREENSHOT=docs/demo.png` to
write it there (default: the test's temporary folder). Without Chromium the tests skip, except under CI (`$CI` set),
where `.ci/run` installs it and a missing browser fails.
"""

import io
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

pytest.importorskip("gradio", reason="the demo extra (`pip install -e .[demo]`) is not installed")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import fork_server  # noqa: E402

pytestmark = pytest.mark.slow  # a browser and an app process with the embedded default, about 30 s

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
"""Denoising steps of the served app: few, to keep CI short."""
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip
"""The closed network refuses Chromium's background connections: turn them off."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """`python demo/app.py` on the embedded default, offline, on a free port."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SYNFER_DEMO_MODEL", "SYNFER_DEFAULT_MODEL")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", GRADIO_ANALYTICS_ENABLED="False")
    log_path = tmp_path_factory.mktemp("demo_app") / "app.log"
    with open(log_path, "w") as log:
        process = fork_server.Popen(
            [sys.executable, str(ROOT / "demo" / "app.py"), "--port", str(port), "--steps", str(STEPS)],
            env=env, stdout=log, stderr=fork_server.STDOUT,
        )  # fmt: skip  (a fork of the pre-imported server: no 8-12 s interpreter start-up)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"demo/app.py exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"demo/app.py did not serve {url}:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        reason = "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False}
    )
    yield driver
    driver.quit()


def _value(driver, selector: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, selector).get_attribute("value")


def _image_sources(driver) -> list[str]:
    return [image.get_attribute("src") for image in driver.find_elements(By.CSS_SELECTOR, "#gallery img")]


def _fetch_pixels(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=10) as response:
        return np.asarray(PIL.Image.open(io.BytesIO(response.read())).convert("RGB"), dtype=np.int16)


def _bars(driver, labeller: str) -> int:
    """Bars drawn in a labeller's chart (Vega's SVG marks)."""
    return len(driver.find_elements(By.CSS_SELECTOR, f"#labels-{labeller} svg g.mark-rect path"))


def _generate(driver, previous: list[str]) -> tuple[list[str], bool]:
    """Presses generate and waits for 4 new images (none of `previous`) and both charts; returns the images' URLs and whether a step
    progress message appeared meanwhile."""
    driver.find_element(By.ID, "generate-button").click()
    saw_progress = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        saw_progress |= "Generating 4 images" in driver.find_element(By.TAG_NAME, "body").text
        sources = _image_sources(driver)
        fresh = not set(sources) & set(previous)  # Gradio names files by content hash, and swaps them one by one
        if len(sources) == 4 and fresh and _bars(driver, "FERAnno") and _bars(driver, "guide"):
            return sources, saw_progress
        time.sleep(0.05)
    pytest.fail(f"no new images within 120 s; the page says: {driver.find_element(By.TAG_NAME, 'body').text[:2000]}")


def test_preset_slider_and_generate(app_url, browser, tmp_path):
    wait = WebDriverWait(browser, 60)
    browser.get(app_url)
    wait.until(lambda d: d.find_elements(By.ID, "generate-button"))

    browser.find_element(By.CSS_SELECTOR, "#expression-preset label[data-testid='happy-radio-label']").click()
    wait.until(lambda d: _value(d, "#au-AU12 input[type=number]") == "3" and _value(d, "#au-AU6 input[type=number]") == "3")
    assert _value(browser, "#au-AU4 input[type=number]") == "0"  # the EMFACS prototype of happy: AU6 + AU12

    first, saw_progress = _generate(browser, previous=[])
    assert saw_progress, "no per-step progress was shown while generating"
    assert _bars(browser, "FERAnno") == _bars(browser, "guide") == 7
    assert "with a happy expression, cheek raiser and lip corner puller" in _value(browser, "#prompt textarea")

    browser.find_element(By.CSS_SELECTOR, "#au-AU12 input[type=range]").send_keys(Keys.END)  # slide AU12 to 5
    wait.until(lambda d: _value(d, "#au-AU12 input[type=number]") == "5")
    second, _ = _generate(browser, previous=first)
    before, after = _fetch_pixels(first[0]), _fetch_pixels(second[0])
    assert before.shape == after.shape == (64, 64, 3)
    changed = (np.abs(before - after).max(-1) > 16).mean()  # share of pixels that moved visibly
    assert changed > 0.01, f"the image did not change when the AU12 slider moved ({changed:.2%} of pixels changed)"

    screenshot = Path(os.environ.get("SYNFER_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    assert browser.save_screenshot(str(screenshot))
    assert PIL.Image.open(screenshot).size == (1400, 1000)

    requested = {json.loads(entry["message"])["message"].get("params", {}).get("request", {}).get("url", "")
                 for entry in browser.get_log("performance")}  # fmt: skip
    outside = sorted(u for u in requested if u.startswith(("http:", "https:")) and not u.startswith(app_url))
    assert not outside, f"the page asked for resources outside the app: {outside[:5]}"


def test_errors_appear_as_messages_in_the_page(app_url, browser):
    browser.get(app_url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.ID, "generate-button"))
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Edit')]").click()
    wait.until(lambda d: d.find_elements(By.ID, "edit-button"))  # a tab is laid out when first shown
    browser.find_element(By.ID, "edit-button").click()  # no face uploaded
    wait.until(lambda d: "Upload a face to edit" in d.find_element(By.TAG_NAME, "body").text)
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
