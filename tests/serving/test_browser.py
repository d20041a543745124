"""A real browser (Debian's Chromium, driven by Playwright) uploads an image on the page and sees the answer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import Settings
from tests.serving.conftest import png, settings_for

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip


@contextmanager
def browser_on(settings: Settings) -> Iterator[tuple[Any, int]]:
    """A page of headless Chromium and the port of the app of ``settings``, served by uvicorn in a thread."""
    import uvicorn
    from playwright.sync_api import sync_playwright

    from conveyor.serving import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                yield browser.new_page(), port
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)


@needs_chromium
def test_upload_page_shows_class_and_confidence(settings: Settings, tmp_path: Path) -> None:
    pytest.importorskip("playwright")
    image = tmp_path / "slice.png"
    image.write_bytes(png(77, size=96, tumour=True))
    with browser_on(settings) as (page, port):
        page.goto(f"http://127.0.0.1:{port}/", timeout=15_000)
        page.set_input_files("#file", str(image))
        page.click("#submit")
        page.wait_for_function("document.getElementById('confidence').textContent !== ''", timeout=15_000)
        assert page.text_content("#label") in {"tumour", "no_tumour"}
        assert page.text_content("#confidence").startswith("confidence ")
        assert page.locator("#bars .bar").count() == 2
        assert "v1" in page.text_content("#meta")
        assert page.is_visible("#preview")


@needs_chromium
def test_the_page_shows_the_prediction_set_and_says_when_the_model_abstains(home, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Six calibration cases a class cannot rule any class out at 90%: the set holds both and the page says the
    model abstains."""
    pytest.importorskip("playwright")
    image = tmp_path / "slice.png"
    image.write_bytes(png(78, size=96, tumour=True))
    with browser_on(settings_for(home, coverage=0.9)) as (page, port):
        page.goto(f"http://127.0.0.1:{port}/", timeout=15_000)
        page.set_input_files("#file", str(image))
        page.click("#submit")
        page.wait_for_function("document.getElementById('set').textContent !== ''", timeout=15_000)
        assert page.text_content("#set").startswith("Prediction set at 90% coverage: {")
        assert page.get_attribute("#set", "data-size") == "2"
        assert page.is_visible("#abstain") and not page.is_visible("#unsure")
        assert "cannot rule out" in page.text_content("#abstain")


@needs_chromium
def test_the_page_explains_an_answer_on_request(settings: Settings, tmp_path: Path) -> None:
    pytest.importorskip("playwright")
    image = tmp_path / "slice.png"
    image.write_bytes(png(79, size=96, tumour=True))
    with browser_on(settings) as (page, port):
        page.goto(f"http://127.0.0.1:{port}/", timeout=15_000)
        page.set_input_files("#file", str(image))
        page.click("#submit")
        page.wait_for_selector("#explain", state="visible", timeout=15_000)
        page.click("#explain")
        page.wait_for_selector("#explanation", state="visible", timeout=30_000)
        assert page.get_attribute("#heatmap", "src").startswith("data:image/png;base64,")
        assert page.text_content("#groups").startswith("Feature groups by their effect on the answer: intensity ")
        assert not page.is_visible("#diagrams")  # a model on intensity alone has no diagrams
