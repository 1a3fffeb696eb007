"""The built book works as a reader sees it: offline, in headless Chromium.

Builds the site for the robustness chapter (small parameters: three tiny training runs) in a
temporary copy of the book, serves it on 127.0.0.1 and checks what only a browser can: plots
load, math is typeset, glued numbers are in the prose, the widget slider moves the
pre-rendered outputs without a kernel, and no request leaves the machine.
"""
from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from _scripts import load_script

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHAPTER = "04_robustness"
TITLE = "Robustness to missing modalities"
# Config leaves that make the chapter's three training runs take seconds each
SMALL_PARAMS = {"limit_samples": 64, "epochs": 1, "batch_size": 16, "eval_batch_size": 32,
                "prompt_length": 2}
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
LOCAL_SCHEMES = {"data", "blob", "about"}  # inline content, never a network request


def _load_build_book():
    return load_script("scripts/build_book.py")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chapter built into a throw-away copy of the book (the repo's _build and runs/ untouched)."""
    build_book = _load_build_book()
    out = tmp_path_factory.mktemp("site")
    book = out / "book"
    book.mkdir()
    for name in ("_toc.yml", "intro.md"):
        shutil.copy(ROOT / "book" / name, book / name)
    shutil.copytree(ROOT / "book" / "_vendor", book / "_vendor")
    shutil.copy(ROOT / "_config.yml", out / "_config.yml")
    source = ROOT / "notebooks" / f"{CHAPTER}.ipynb"
    params = {**SMALL_PARAMS, "out_dir": str(out / "runs")}
    build_book.execute(source, book / "chapters" / source.name, params, progress=False)
    build_book.build_site(book, out / "_config.yml", out)
    return out / "_build" / "html"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        pass


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def browser_log(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A Chromium context on a fresh profile that records every request and every local error."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: `apt-get install -y chromium` (make setup does this)")
    from playwright.sync_api import sync_playwright

    log: dict = {"requests": [], "errors": []}
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1280, "height": 2000},
        )
        context.on("request", lambda r: log["requests"].append(r.url))
        context.on("requestfailed", lambda r: log["errors"].append(f"failed {r.url}"))
        context.on("response", lambda r: r.status >= 400 and log["errors"].append(f"{r.status} {r.url}"))
        log["context"] = context
        yield log
        context.close()


def _open(browser_log: dict, url: str):
    page = browser_log["context"].new_page()
    page.on("pageerror", lambda err: browser_log["errors"].append(f"js error {err}"))
    page.goto(url, wait_until="networkidle")
    return page


def test_intro_page_renders(browser_log: dict, base_url: str) -> None:
    page = _open(browser_log, f"{base_url}/index.html")  # redirects to the root page
    assert "Start here" in page.title()
    assert page.locator("nav a", has_text=TITLE).count() > 0, f"{CHAPTER} missing from the toc"
    page.close()


@pytest.fixture(scope="module")
def chapter(browser_log: dict, base_url: str):
    page = _open(browser_log, f"{base_url}/chapters/{CHAPTER}.html")
    page.wait_for_selector("mjx-container", timeout=20_000)
    page.wait_for_selector(".widget-slider .noUi-handle", timeout=20_000)
    yield page
    page.close()


def test_chapter_page_title(chapter) -> None:
    assert TITLE in chapter.title()
    assert chapter.locator("article h1").first.inner_text().startswith(TITLE)


def test_plots_load(chapter) -> None:
    images = chapter.locator("article img")
    assert images.count() >= 2, "expected the curves and the slider's plot"
    widths = images.evaluate_all("imgs => imgs.filter(i => i.offsetParent).map(i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths), f"an image did not load: widths {widths}"


def test_math_is_typeset(chapter) -> None:
    assert chapter.locator("article mjx-container").count() >= 2  # inline \eta and the displays
    text = chapter.locator("article").inner_text()
    assert "$$" not in text and "\\frac" not in text, "raw TeX left on the page"


def test_glued_number_in_prose(chapter) -> None:
    text = chapter.locator("article").inner_text()
    match = re.search(r"ours reaches (\d+\.\d)% and the CLS baseline (\d+\.\d)%", text)
    assert match, "the glued headline numbers are missing from the prose"
    assert all(0.0 <= float(g) <= 100.0 for g in match.groups())
    assert "{glue" not in text


def _visible_stack_images(page) -> list[str]:
    """``src`` of the images of the slider's Stack that the reader can see."""
    stack = page.locator(".widget-vbox:has(.widget-slider) > .widget-box").first
    return stack.locator("img").evaluate_all(
        "imgs => imgs.filter(i => i.offsetParent && i.naturalWidth > 0).map(i => i.src)"
    )


def test_slider_moves_the_stack(chapter, tmp_path: Path) -> None:
    slider = chapter.locator(".widget-slider").first
    assert slider.is_visible()
    readout = slider.locator(".widget-readout")
    before_value, before = readout.inner_text(), _visible_stack_images(chapter)
    assert len(before) == 1, f"exactly one Stack child should show, saw {len(before)} images"

    handle = slider.locator(".noUi-handle")
    handle.focus()
    handle.press("ArrowRight")
    handle.press("ArrowRight")
    chapter.wait_for_function(
        "old => document.querySelector('.widget-slider .widget-readout').innerText !== old",
        arg=before_value,
        timeout=5_000,
    )
    after_value, after = readout.inner_text(), _visible_stack_images(chapter)
    assert (before_value, after_value) == ("0.0", "0.2")
    assert len(after) == 1 and after != before, "moving the slider did not change the shown output"
    chapter.screenshot(path=str(tmp_path / "chapter.png"), full_page=True)
    assert (tmp_path / "chapter.png").stat().st_size > 0


def test_no_request_leaves_localhost(browser_log: dict, chapter) -> None:
    """Runs after the page checks (file order), so it sees every request they caused."""
    requests = browser_log["requests"]
    assert any("mathjax/tex-mml-chtml.js" in u for u in requests), "MathJax was not loaded"
    assert any("widgets/embed.js" in u for u in requests), "the widget manager was not loaded"
    outside = [
        u for u in requests
        if urlparse(u).scheme not in LOCAL_SCHEMES and urlparse(u).hostname != "127.0.0.1"
    ]
    assert not outside, f"requests left 127.0.0.1: {outside[:5]}"
    assert not browser_log["errors"], f"local failures: {browser_log['errors'][:5]}"
