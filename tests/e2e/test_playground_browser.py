"""The playground (GET /) in a real browser against ``loraplex up`` over the demo models.

Headless Chromium from Debian's packages (``chromium``, ``chromium-driver``; ``.ci/run``
installs them) driven by selenium at the system binaries: Selenium Manager, which would
download a browser or a driver, is never run (it is patched to fail here), and Chromium's own
background traffic is switched off by flags. A missing browser or driver fails the test with
the command that installs them: skipping would let CI pass without ever opening the page.

The page must show a decoded image for a LoRA whose pixels differ from the base's at the same
seed (read through a canvas from the page's own <img>), the timings from the answer's headers,
and the API's own ``{"error"}`` message for a bad request; Cancel must stop a running
generation on the worker (its ``cancelled_total``, read from the metrics URL the banner
lists); with no Content-Security-Policy violation in the browser's log. Screenshots go to
the test's tmp_path (paths printed).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from e2e.test_embedded_stack import PARAMS, Stack, pixels, running_stack, wait_until
from fixtures.models import DemoModels
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.selenium_manager import SeleniumManager
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from loraplex.demo.models import TINY_SD
from loraplex.shared.contract import Limits

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
    "--disable-gpu",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1000",
)
ANSWER_TIMEOUT_S = 120.0
# The page's own <img>, drawn on a canvas: RGBA bytes as the browser decoded them.
READ_PIXELS = """
const image = document.getElementById("image");
const canvas = document.createElement("canvas");
canvas.width = image.naturalWidth;
canvas.height = image.naturalHeight;
const context = canvas.getContext("2d");
context.drawImage(image, 0, 0);
return Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data);
"""


def require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: this test drives Debian's headless Chromium. "
            f"Install them as root with `{INSTALL}` (.ci/run does this before make test).",
            pytrace=False,
        )


def test_system_chromium_and_driver_are_installed() -> None:
    """Its own test, so a machine without them shows one FAILED line with the fix."""
    require_browser()


def test_a_missing_browser_fails_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMEDRIVER", Path("/nonexistent/chromedriver"))
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium chromium-driver"):
        require_browser()


@pytest.fixture(scope="module")
def stack(demo_models: DemoModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_browser()  # before the slow start: fail fast with the install hint
    args = ["--models", str(demo_models.root), "--base-model", TINY_SD, "--replicas", "1"]
    args += ["--cache-dir", str(tmp_path_factory.mktemp("hf-cache"))]
    with running_stack(args, {}) as running:
        yield running


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[WebDriver]:
    require_browser()
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as profile:
        patch.setattr(SeleniumManager, "binary_paths", _never_download)
        patch.setenv("SE_OFFLINE", "true")  # and were it run anyway: no network
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=options
        )
        try:
            yield driver
        finally:
            driver.quit()


def _never_download(*_: object) -> dict[str, str]:
    raise AssertionError("Selenium Manager ran: it may download a browser or driver")


class Page:
    """The playground in the browser, by the element ids of router/static/playground.html."""

    def __init__(self, driver: WebDriver, url: str) -> None:
        self.driver = driver
        self.wait = WebDriverWait(driver, ANSWER_TIMEOUT_S)
        driver.get(url + "/")
        self.wait.until(lambda d: self.js("return document.getElementById('base').value") != "")

    def js(self, script: str, *args: object) -> object:
        return self.driver.execute_script(script, *args)

    def element(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def adapters(self) -> list[str]:
        return self.js("return [...document.getElementById('adapter').options].map(o => o.value)")

    def choose(self, adapter: str) -> None:
        Select(self.element("adapter")).select_by_value(adapter)

    def fill(self, **fields: object) -> None:
        for field_id, value in fields.items():
            box = self.element(field_id.replace("_", "-"))
            box.clear()
            box.send_keys(str(value))

    def finished(self) -> int:
        """How many generations the page has finished (it counts them for scripts)."""
        return int(self.js("return Number(document.body.dataset.finished || 0)"))

    def generate(self) -> str:
        """Press Generate and wait for the answer; its outcome, ``image`` or ``error``."""
        finished = int(self.js("return Number(document.body.dataset.finished || 0)"))
        self.element("generate").click()
        self.wait.until(
            lambda d: int(self.js("return Number(document.body.dataset.finished || 0)")) > finished
        )
        return str(self.js("return document.body.dataset.outcome"))

    def image_pixels(self) -> np.ndarray:
        width, height = self.js(
            "const i = document.getElementById('image'); return [i.naturalWidth, i.naturalHeight]"
        )
        assert width > 0 and height > 0, "the <img> holds no decoded image"
        rgba = np.array(self.js(READ_PIXELS), dtype=np.int16).reshape(height, width, 4)
        return rgba[:, :, :3]

    def facts(self) -> dict[str, str]:
        return self.js(
            "const f = {}; document.querySelectorAll('#facts dt').forEach(dt => "
            "{ f[dt.textContent] = dt.nextElementSibling.textContent; }); return f"
        )

    def visible_text(self, element_id: str) -> str:
        return self.element(element_id).text if self.element(element_id).is_displayed() else ""

    def screenshot(self, path: Path) -> Path:
        self.js("window.scrollTo(0, 0)")
        assert self.driver.save_screenshot(str(path)), f"no screenshot written to {path}"
        print(f"playground screenshot: {path}")
        return path

    def csp_violations(self) -> list[str]:
        log = self.driver.get_log("browser")
        return [e["message"] for e in log if "Content Security Policy" in e["message"]]


def test_lora_image_differs_from_the_base_and_shows_what_happened(
    stack: Stack, browser: WebDriver, demo_models: DemoModels, tmp_path: Path
) -> None:
    page = Page(browser, stack.url)
    adapter = demo_models.demo.adapters[0].repo_id
    assert adapter in page.adapters(), "the embedded router lists the demo LoRAs"
    page.choose(adapter)
    page.fill(width=PARAMS["width"], height=PARAMS["height"], steps=2, seed=PARAMS["seed"])
    assert page.generate() == "image", page.visible_text("error")
    lora = page.image_pixels()
    assert lora.shape == (PARAMS["height"], PARAMS["width"], 3)
    facts = page.facts()
    assert facts["Model"] == adapter and facts["HTTP status"] == "200"
    assert facts["Adapter switch tier"].split(":")[0] in {"hub", "disk", "host", "resident"}
    for timing in ("Switch time", "Queue wait", "Compute time"):
        assert facts[timing].endswith(" ms") and float(facts[timing].split()[0]) >= 0, facts
    page.screenshot(tmp_path / "playground-lora.png")

    page.choose("")  # the bare base, same seed
    assert page.generate() == "image", page.visible_text("error")
    base = page.image_pixels()
    assert page.facts()["Adapter switch tier"].startswith("none")
    assert np.abs(lora - base).max() > 0, "the LoRA did not change the image"
    # What the page shows is what the API answers (PNG: lossless, the same bytes decoded).
    body = {"inputs": page.element("prompt").get_attribute("value"), "parameters": PARAMS}
    api = httpx.post(f"{stack.url}/models/{TINY_SD}", json=body, timeout=ANSWER_TIMEOUT_S)
    assert api.status_code == 200 and np.array_equal(pixels(api.content), base)
    assert page.csp_violations() == []


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"model_id": "loraplex-demo/no-such-model"}, 404),
        ({"model_id": TINY_SD, "width": 65}, 400),
    ],
    ids=["unknown-model", "bad-size"],
)
def test_error_shows_the_api_message(
    stack: Stack, browser: WebDriver, fields: dict[str, object], status: int, tmp_path: Path
) -> None:
    page = Page(browser, stack.url)
    page.fill(**fields)
    assert page.generate() == "error"
    params = {"width": fields["width"]} if "width" in fields else {}
    api = httpx.post(
        f"{stack.url}/models/{fields['model_id']}",
        json={"inputs": "a red fox", "parameters": params},
        timeout=ANSWER_TIMEOUT_S,
    )
    assert api.status_code == status
    shown = page.visible_text("error")
    assert shown.startswith(str(status)), shown
    assert api.json()["error"] in shown, shown
    page.screenshot(tmp_path / f"playground-error-{status}.png")
    assert page.csp_violations() == []


def _metric(url: str, pattern: str) -> float:
    """The sum of the samples of ``url``'s Prometheus text whose line matches ``pattern``."""
    text = httpx.get(url, timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(pattern + r"\S* ([0-9.e+-]+)$", text, re.M))


def test_cancel_stops_the_running_generation_on_the_worker(
    stack: Stack, browser: WebDriver, tmp_path: Path
) -> None:
    """Cancel aborts the page's fetch: the browser closes the connection, the router cancels
    the job, and the worker stops it at its next denoising step (counted client_gone) — long
    before its 150 steps at 128×128 (~25 s on 2 cores) would be done."""
    metrics = next(
        line.split()[-1] for line in stack.output if line.startswith("  worker metrics: ")
    )
    cancelled = r'^loraplex_worker_cancelled_total\{reason="client_gone"'
    before = _metric(metrics, cancelled)
    page = Page(browser, stack.url)
    page.fill(model_id=TINY_SD, width=128, height=128, steps=Limits.MAX_STEPS, seed=3)
    finished = page.finished()
    page.element("generate").click()
    wait_until(
        lambda: _metric(metrics, r"^loraplex_worker_in_flight") >= 1,
        60,
        "the worker to start the generation",
    )
    assert page.element("cancel").is_displayed()
    page.element("cancel").click()
    page.wait.until(lambda _: page.finished() > finished)
    assert page.js("return document.body.dataset.outcome") == "cancelled"
    assert page.visible_text("status").startswith("Cancelled after"), page.visible_text("status")
    assert not page.element("cancel").is_displayed()
    wait_until(lambda: _metric(metrics, cancelled) > before, 20, "the worker to stop the job")
    assert _metric(metrics, r"^loraplex_worker_in_flight") == 0
    page.screenshot(tmp_path / "playground-cancelled.png")
    page.fill(width=64, height=64, steps=2)
    assert page.generate() == "image", page.visible_text("error")
    assert page.csp_violations() == []


def test_a_typed_id_that_is_a_path_is_refused_on_the_page(stack: Stack, browser: WebDriver) -> None:
    """The browser would resolve ``..`` before sending; the page says what is wrong instead."""
    page = Page(browser, stack.url)
    page.fill(model_id="../../etc")
    assert page.generate() == "error"
    shown = page.visible_text("error")
    assert "Not a model id" in shown and "'org/name'" in shown, shown
