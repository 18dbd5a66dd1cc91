"""The web page in headless Chromium (Debian's `chromium`, driven by Playwright; no browser download):
upload a real photo, see tags and the overlay, toggle a tag, move a threshold, download the Frame JSON
and the annotated image, and see a failing request's message. A screenshot is saved to
`artifacts/serve-page.png` (gitignored) for a person to look at."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from .conftest import TEST_RECIPE, write_recipe

playwright_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")
pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("RECOGNIZE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def server(tmp_path, test_stages):
    from recognize.serve import ServeSettings, create_app

    recipe = write_recipe(tmp_path, {**TEST_RECIPE, "stages": [
        {"use": "brightness"}, {"use": "center_box", "with": {"score": 0.8}}, {"use": "box_mask"},
        {"use": "explode", "with": {"on": "boom"}}]})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(recipe, ServeSettings(port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def browser():
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"),
                                    args=FLAGS, headless=True)
        yield browser
        browser.close()


def test_page_uploads_shows_toggles_tunes_and_downloads(server, browser, reference, tmp_path) -> None:
    photo = reference / "data" / "images" / "demo" / "demo4.jpg"
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    requests_outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server) or r.url.startswith(("data:", "blob:"))
            else requests_outside.append(r.url))
    page.goto(server + "/")
    page.wait_for_selector("#ready.ok")
    assert "center_box · score" in page.inner_text("#controls")

    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#tags li[data-tag]")
    assert page.inner_text("#tags").split() == ["dark", "暗", "1", "region", "0.26"]
    assert page.evaluate("window.recognizeView.regionsDrawn") == 1
    assert "brightness" in page.inner_text("#timings") and "Done in" in page.inner_text("#status")
    # the overlay is drawn: the mask tints the centre, the corner is untouched
    centre, corner = page.evaluate("""() => {
        const c = document.getElementById('canvas'), x = c.getContext('2d');
        const img = new Image(); img.src = document.querySelector('#thumbs img').src;
        const o = document.createElement('canvas'); o.width = c.width; o.height = c.height;
        const ox = o.getContext('2d'); ox.drawImage(img, 0, 0);
        const diff = (px, py) => { const a = x.getImageData(px, py, 1, 1).data, b = ox.getImageData(px, py, 1, 1).data;
                                   return Math.abs(a[0]-b[0]) + Math.abs(a[1]-b[1]) + Math.abs(a[2]-b[2]); };
        return [diff(c.width / 2, c.height / 2), diff(3, c.height - 3)];
    }""")
    assert centre > 20 and corner == 0

    # hover a region: tag, score and Chinese name
    box = page.locator("#canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#tooltip:not([hidden])")
    assert page.inner_text("#tooltip") == "dark · 暗 · score 0.80 · mask 1.00"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)

    # toggle the tag off and on
    page.click("#tags li[data-tag=dark]")
    assert page.evaluate("window.recognizeView.regionsDrawn") == 0
    assert "off" in page.get_attribute("#tags li[data-tag=dark]", "class")
    page.click("#tags li[data-tag=dark]")
    assert page.evaluate("window.recognizeView.regionsDrawn") == 1

    # a threshold change re-runs only what it must
    before = page.evaluate("window.recognizeView.requests")
    page.fill("#stages\\.1\\.with\\.score", "0.55")
    page.press("#stages\\.1\\.with\\.score", "Enter")
    page.wait_for_function(f"window.recognizeView.requests > {before}")
    page.wait_for_selector("#status:has-text('reused: brightness')")
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2 + 1)
    page.wait_for_selector("#tooltip:has-text('score 0.55')")

    # downloads: the Frame JSON as the API gave it, and the annotated image
    with page.expect_download() as info:
        page.click("#download-json")
    saved = tmp_path / "frame.json"
    info.value.save_as(saved)
    frame = json.loads(saved.read_text())
    assert info.value.suggested_filename == "demo4.json"
    assert frame["tags"][0]["name"] == "dark" and frame["regions"][0]["score"] == 0.55
    assert frame["regions"][0]["mask"]["size"] == [frame["height"], frame["width"]]
    with page.expect_download() as info:
        page.click("#download-image")
    picture = tmp_path / "annotated.png"
    info.value.save_as(picture)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.screenshot(path=str(ARTIFACTS / "serve-page-after.png"), full_page=True)

    # a failing request shows its one-line message
    boom = tmp_path / "boom.jpg"  # other pixels: results are reused by content, and this one must run
    from PIL import Image

    Image.open(photo).rotate(180).save(boom)
    page.set_input_files("#file", str(boom))
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == "500: stage 'explode' failed: RuntimeError: exploded on purpose"
    assert requests_outside == []  # every asset came from the server
