"""The web interface in a real browser: headless Chromium (the system's, through Playwright) against a
real uvicorn server on 127.0.0.1.

Screenshots of the main pages at phone (360x740) and desktop (1280x800) widths go to
test-output/screenshots/ (HM_TEST_OUTPUT overrides test-output/).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, coin_query, jpeg_bytes

CHROMIUM = os.environ.get("HM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 800}
SCREENSHOTS = Path(os.environ.get("HM_TEST_OUTPUT", ROOT / "test-output")) / "screenshots"

if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (`apt-get install chromium`; .ci/run installs it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is a dev dependency")

pytestmark = pytest.mark.timeout(600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, encoder):
    """uvicorn serving the app on a free port, with the demo coins and one key per role."""
    import uvicorn

    from app.core.config import Settings
    from app.jobs.demo import seed_demo
    from app.main import create_app
    from app.security.keys import KeyStore
    from app.service import MatchingService

    tmp = tmp_path_factory.mktemp("web-browser")
    settings = Settings(data_dir=tmp / "data", models_dir=tmp / "models", model="efficientnet-lite0", device="cpu",
                        rate_limit_per_minute=0, auth_failures_per_minute=0)
    service = MatchingService(settings, encoder=encoder).start()
    seed_demo(service)
    keys = {role: KeyStore(service.store.sessions).create(f"{role}-desk", role).token
            for role in ("officer", "registrar")}
    port = free_port()
    config = uvicorn.Config(create_app(settings, service=service), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "keys": keys, "service": service, "tmp": tmp}
    uv.should_exit = True
    thread.join(timeout=30)
    service.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page_at(browser, server):
    """A new browser context (its own cookies) and page at a viewport size."""
    contexts = []

    def make(viewport=DESKTOP, locale="en-GB"):
        context = browser.new_context(viewport=viewport, locale=locale, base_url=server["url"])
        context.set_default_timeout(60_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for c in contexts:
        c.close()


def shot(page, name: str) -> None:
    """Save a full-page screenshot at the page's current width and check nothing overflows sideways."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"]
    label = "phone" if width <= 400 else "desktop"
    page.screenshot(path=str(SCREENSHOTS / f"{name}-{label}.png"), full_page=True)
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= width, f"{name} at {width} px is {overflow} px wide: it scrolls sideways"


def both_widths(page, name: str) -> None:
    for viewport in (PHONE, DESKTOP):
        page.set_viewport_size(viewport)
        shot(page, name)


def sign_in(page, key: str) -> None:
    page.goto("/")
    page.fill("#key", key)
    page.click("button[type=submit].primary")
    page.wait_for_url("**/search")


def search_with(page, photo: Path, goto: bool = True) -> None:
    if goto:
        page.goto("/search")
    # Nothing chosen yet: no (broken) preview, no progress bar.
    assert not page.locator("#preview").is_visible() and not page.locator("#progress").is_visible()
    page.set_input_files("#file", str(photo))
    # The chosen photo shows before it is sent (the page's change handler runs asynchronously: wait).
    page.locator("#preview").wait_for(state="visible", timeout=10_000)
    page.click("#search-button")
    page.wait_for_url("**/results/*")


def first_result(page) -> tuple[str, str]:
    first = page.locator("li.result").first
    return first.get_attribute("data-inventory"), first.get_attribute("data-verdict")


def test_officer_searches_a_coin_reads_the_report_and_switches_to_arabic(server, page_at, coins):
    coin = coins[9]
    photo = server["tmp"] / "seized-coin.jpg"
    photo.write_bytes(coin_query(coin.image, random.Random(10)))

    page = page_at(PHONE)
    page.goto("/")
    assert page.url.endswith("/signin")
    both_widths(page, "signin")
    page.set_viewport_size(PHONE)
    sign_in(page, server["keys"]["officer"])
    assert page.locator("#camera").get_attribute("capture") == "environment"  # the phone's camera
    both_widths(page, "search")

    page.set_viewport_size(PHONE)
    # Record whether the progress bar showed (the page is gone by the time the results load).
    page.evaluate("""() => {
        const box = document.getElementById("progress");
        new MutationObserver(() => {
            if (!box.hidden) sessionStorage.setItem("progress", document.getElementById("progress-text").textContent);
        }).observe(box, {attributes: true, subtree: true, childList: true});
    }""")
    search_with(page, photo, goto=False)
    assert page.evaluate("sessionStorage.getItem('progress')") in ("Sending the photo…", "Searching the registry…")
    assert first_result(page) == (coin.inventory_number, "match")
    assert page.locator("li.result").first.locator(".badge").inner_text() == "Match"
    record = page.locator("li.result").first.locator("dl.record").inner_text()
    assert coin.inventory_number in record and "Numismatics" in record and "Pompeii" in record
    registry_photo = page.locator("li.result").first.locator("figure.photo:not(.query-photo) img")
    assert registry_photo.evaluate("img => img.complete && img.naturalWidth > 0")  # served to the session
    both_widths(page, "results")

    page.click("#case-report-link")
    page.wait_for_url("**/report")
    import hashlib

    assert page.inner_text("#report-sha256") == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert page.inner_text("#report-key-name") == "officer-desk"
    assert page.locator("tr.candidate").first.get_attribute("data-verdict") == "match"
    assert page.locator("#print-button").is_visible()
    page.emulate_media(media="print")
    assert not page.locator("#print-button").is_visible()  # the printed page is the report only
    page.emulate_media(media="screen")
    both_widths(page, "case-report")
    page.pdf(path=str(SCREENSHOTS / "case-report.pdf"))  # what "save as PDF" gives

    page.go_back()
    page.click("a[hreflang=ar]")
    page.wait_for_load_state()
    html = page.locator("html")
    assert html.get_attribute("dir") == "rtl" and html.get_attribute("lang") == "ar"
    assert page.inner_text("h1") == "نتائج البحث"
    assert page.locator("li.result").first.locator(".badge").inner_text() == "مطابقة"
    assert "رقم الجرد" in page.locator("li.result").first.locator("dl.record").inner_text()
    both_widths(page, "results-arabic")
    # The choice holds on the next page.
    page.click("#case-report-link")
    assert page.locator("html").get_attribute("dir") == "rtl" and "تقرير القضية" in page.inner_text("h1")
    both_widths(page, "case-report-arabic")


def test_drop_and_paste_choose_the_photo(server, page_at, coins):
    page = page_at(PHONE)
    sign_in(page, server["keys"]["officer"])
    data = list(coin_query(coins[3].image, random.Random(4)))
    for event in ("drop", "paste"):
        page.goto("/search")
        page.evaluate(
            """([bytes, event]) => {
                const file = new File([new Uint8Array(bytes)], event + ".jpg", {type: "image/jpeg"});
                const dt = new DataTransfer();
                dt.items.add(file);
                if (event === "drop") {
                    document.getElementById("dropzone").dispatchEvent(
                        new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
                } else {
                    document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: dt, bubbles: true}));
                }
            }""",
            [data, event],
        )
        assert page.inner_text("#filename") == f"{event}.jpg"
        page.click("#search-button")
        page.wait_for_url("**/results/*")
        assert first_result(page) == (coins[3].inventory_number, "match")


def test_registrar_adds_an_artefact_with_a_photo_and_finds_it_by_photo(server, page_at):
    from PIL import Image, ImageEnhance
    from skimage import data as skdata

    # A photograph of an object not in the registry (scikit-image's public-domain coffee cup).
    registered = Image.fromarray(skdata.coffee())
    reference = server["tmp"] / "cup-front.jpg"
    reference.write_bytes(jpeg_bytes(registered, quality=92))
    query = registered.rotate(8, expand=False).crop((30, 20, 570, 380)).resize((810, 540))
    query = ImageEnhance.Brightness(query).enhance(1.15)
    query_path = server["tmp"] / "cup-seized.jpg"
    query_path.write_bytes(jpeg_bytes(query, quality=70))

    page = page_at(DESKTOP)
    sign_in(page, server["keys"]["registrar"])
    page.click("nav a[href='/registry']")
    page.wait_for_url("**/registry")
    assert page.locator("li.tile").count() == 24
    both_widths(page, "registry")

    page.set_viewport_size(DESKTOP)
    page.click("#new-artefact")
    page.fill("#f-inventory_number", "GAZA-CUP-1")
    page.fill("#f-institution", "Gaza museum (test)")
    page.fill("#f-title", "Coffee cup with saucer")
    page.select_option("#f-status", "looted")
    page.fill("#f-materials", "Porcelain")
    page.fill("#f-height", "7.5")
    page.fill("#f-dimension_unit", "cm")
    page.set_input_files("#new-photos", [str(reference)])
    page.fill("#new-view", "front")
    page.click("#save-record")
    page.wait_for_url("**/registry/*?saved=1")
    assert page.locator("[data-indexed=yes]").count() == 1  # the photo is searchable now
    both_widths(page, "artefact-edit")

    page.set_viewport_size(DESKTOP)
    search_with(page, query_path)
    assert first_result(page) == ("GAZA-CUP-1", "match")
    assert "Porcelain" in page.locator("li.result").first.inner_text()
    page.goto("/registry?q=coffee")
    assert page.locator("li.tile").count() == 1
