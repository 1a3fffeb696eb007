"""The built book works as a reader sees it: offline, in headless Chromium.

Two small builds in temporary copies of the book (tests/_site.py), served on 127.0.0.1:

- every chapter as a stand-in page (seconds): the menu opens and leads to a chapter on a
  phone and toggles on a desktop, chapters are numbered, the home page links every chapter
  and the paper, each page offers its source for download, wide tables say they scroll,
  no page logs an error or a warning, and the site published by `make publish` opens;
- the robustness chapter executed at small parameters (a few tiny training runs): plots
  load, math is typeset, glued numbers are in the prose, each widget slider (and the
  missing-type buttons) moves the pre-rendered outputs without a kernel, on a desktop and
  on a phone.

Across both, no request leaves the machine.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
from _scripts import load_script
from _site import build, chapter_title, git, make_publish, standin_book

# One worker under pytest-xdist: its module fixtures (browser, sites) and the executed chapter
# it shares with tests/test_notebooks.py are built once.
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("chapters")]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHAPTER = "04_robustness"
TITLE = "Robustness to missing modalities"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
PAPER = "https://arxiv.org/abs/2407.12616"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
LOCAL_SCHEMES = {"data", "blob", "about"}  # inline content, never a network request


def _load_build_book():
    return load_script("scripts/build_book.py")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, small_chapter) -> Path:
    """The chapter built into a throw-away copy of the book (the repo's _build and runs/ untouched);
    the other chapters are stand-ins. The chapter is the session's one execution of it at
    small parameters, which tests/test_notebooks.py checks as well."""
    out = tmp_path_factory.mktemp("site")
    book = standin_book(out)
    executed, _ = small_chapter(CHAPTER)
    shutil.copy(executed, book / "chapters" / executed.name)
    _load_build_book().build_site(book, out / "_config.yml", out)
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def standin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every chapter as a stand-in page: the site's frame (menu, home page, buttons) in seconds."""
    out = tmp_path_factory.mktemp("standin")
    standin_book(out)
    return build(out)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        pass


@contextlib.contextmanager
def _serve(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on 127.0.0.1; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    with _serve(site) as url:
        yield url


@pytest.fixture(scope="module")
def standin_url(standin_site: Path) -> Iterator[str]:
    with _serve(standin_site) as url:
        yield url


@pytest.fixture(scope="module")
def browser_log(tmp_path_factory: pytest.TempPathFactory, site: Path) -> Iterator[dict]:
    """A Chromium context on a fresh profile that records every request and every local error.

    It takes ``site`` so that the chapter runs before playwright starts its event loop in this
    thread. Under that loop papermill runs in jupyter_core's runner thread, and three of six
    full-suite runs stopped for good there, in this fixture's run of chapter 04: the kernel
    idle, papermill waiting on it. No other execution of a chapter ever stopped.
    """
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: `make setup` installs Debian's chromium (as root)")
    from playwright.sync_api import sync_playwright

    log: dict = {"requests": [], "errors": [], "console": []}
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


def _open(browser_log: dict, url: str, viewport: dict | None = None):
    """A new page at ``url``; its console errors and warnings go to ``browser_log["console"]``."""
    page = browser_log["context"].new_page()
    if viewport:
        page.set_viewport_size(viewport)
    page.on("pageerror", lambda err: browser_log["errors"].append(f"js error {err}"))
    page.on("console", lambda msg: msg.type in ("error", "warning")
            and browser_log["console"].append(f"{msg.type}: {msg.text} ({page.url})"))
    page.goto(url, wait_until="networkidle")
    return page


def _sidebar_shown(page) -> bool:
    """The chapter menu (primary sidebar) is on screen: displayed and not slid off to the left."""
    return page.evaluate("""() => {
        const bar = document.querySelector('.bd-sidebar-primary');
        if (!bar || getComputedStyle(bar).display === 'none') return false;
        const box = bar.getBoundingClientRect();
        return box.width > 0 && box.right > 1 && box.left >= -1;
    }""")


def _visible_menu_buttons(page) -> list:
    toggles = page.locator(".primary-toggle")
    return [toggles.nth(i) for i in range(toggles.count()) if toggles.nth(i).is_visible()]


def test_phone_menu_opens_and_follows_a_chapter_link(browser_log: dict, standin_url: str) -> None:
    page = _open(browser_log, f"{standin_url}/intro.html", PHONE)
    assert not _sidebar_shown(page), "on a phone the menu starts closed"
    buttons = _visible_menu_buttons(page)
    assert len(buttons) == 1, f"expected one menu button on a phone, saw {len(buttons)}"
    buttons[0].click()
    page.wait_for_function("() => document.querySelector('.bd-sidebar-primary')"
                           ".getBoundingClientRect().left >= -1", timeout=5_000)
    assert _sidebar_shown(page)
    link = page.locator(".bd-sidebar-primary a", has_text=TITLE)
    assert link.is_visible()
    link.click()
    page.wait_for_url(f"**/chapters/{CHAPTER}.html", timeout=10_000)
    assert TITLE in page.title()
    assert not _sidebar_shown(page), "the menu closes on the new page"
    page.close()


def test_phone_contents_button_opens_the_page_outline(browser_log: dict, standin_url: str) -> None:
    page = _open(browser_log, f"{standin_url}/intro.html", PHONE)
    outline = page.locator(".bd-sidebar-secondary")
    shown = ("el => { const r = el.getBoundingClientRect(); return r.left >= -1"
             " && r.right <= innerWidth + 1 && getComputedStyle(el).visibility === 'visible'; }")
    assert not outline.evaluate(shown), "on a phone the outline starts closed"
    buttons = page.locator(".secondary-toggle")
    visible = [buttons.nth(i) for i in range(buttons.count()) if buttons.nth(i).is_visible()]
    assert len(visible) == 1, f"expected one Contents button on a phone, saw {len(visible)}"
    visible[0].click()
    page.wait_for_function(f"() => ({shown})(document.querySelector('.bd-sidebar-secondary'))",
                           timeout=5_000)
    outline.locator("a", has_text="Run it yourself").click()
    page.wait_for_url("**/intro.html#run-it-yourself", timeout=5_000)
    page.close()


def test_desktop_menu_button_hides_and_shows_the_sidebar(browser_log: dict,
                                                          standin_url: str) -> None:
    page = _open(browser_log, f"{standin_url}/chapters/{CHAPTER}.html", DESKTOP)
    assert _sidebar_shown(page), "on a desktop the menu starts open"
    buttons = _visible_menu_buttons(page)
    assert len(buttons) == 1, f"expected one menu button, saw {len(buttons)}"
    buttons[0].click()
    page.wait_for_timeout(500)  # the slide-out transition
    assert not _sidebar_shown(page), "the menu button did not hide the sidebar"
    buttons[0].click()
    page.wait_for_timeout(500)
    assert _sidebar_shown(page), "the menu button did not bring the sidebar back"
    page.close()


def test_sidebar_numbers_the_chapters(browser_log: dict, standin_url: str) -> None:
    page = _open(browser_log, f"{standin_url}/intro.html", DESKTOP)
    entries = page.locator(".bd-sidebar-primary nav li.toctree-l1 > a").all_inner_texts()
    expected = [f"{i}. {chapter_title(nb)}" for i, nb in enumerate(NOTEBOOKS, 1)]
    assert [e.strip() for e in entries if e.strip()[:1].isdigit()] == expected
    page.close()


def test_home_page_links_every_chapter_and_the_paper(browser_log: dict, standin_url: str) -> None:
    page = _open(browser_log, f"{standin_url}/intro.html", DESKTOP)
    article = page.locator("article")
    for nb in NOTEBOOKS:
        link = article.locator(f'a[href="chapters/{nb.stem}.html"]')
        assert link.count() >= 1, f"the home page does not link {nb.stem}"
    assert article.locator(f'a[href="{PAPER}"]').count() >= 1, "no link to the paper"
    headings = article.locator("h2").all_inner_texts()
    assert any("Before you start" in h for h in headings), headings
    assert any("Run it yourself" in h for h in headings), headings
    assert "make lab" in article.inner_text()
    page.close()


def _download(page, selector: str):
    """The file behind the download-menu entry ``selector`` of ``page``: (href, response)."""
    link = page.locator(selector)
    assert link.count() == 1, f"no download entry {selector}"
    href = link.get_attribute("href")
    response = page.request.get(urljoin(page.url, href))
    assert response.ok, f"{href}: {response.status}"
    return href, response


def test_chapters_offer_their_notebook_as_ipynb_and_md(browser_log: dict, standin_url: str) -> None:
    for nb in NOTEBOOKS:
        page = _open(browser_log, f"{standin_url}/chapters/{nb.stem}.html", DESKTOP)
        href, response = _download(page, "a.btn-download-source-button")
        assert href.endswith(f"{nb.stem}.ipynb") and "cells" in response.json()
        href, response = _download(page, "a.btn-download-markdown-notebook-button")
        text = response.text()
        assert href.endswith(f"{nb.stem}.md"), href
        assert text.startswith("---") and "jupytext" in text and "```{code-cell}" in text
        assert f"# {chapter_title(nb)}" in text
        page.close()


def test_home_page_offers_its_markdown_source(browser_log: dict, standin_url: str) -> None:
    page = _open(browser_log, f"{standin_url}/intro.html", DESKTOP)
    href, response = _download(page, "a.btn-download-source-button")
    assert href.endswith("intro.md") and response.text().startswith("# Start here")
    page.close()


def test_wide_table_scrolls_and_says_so_on_a_phone(browser_log: dict, standin_url: str) -> None:
    page = _open(browser_log, f"{standin_url}/chapters/02_training.html", PHONE)
    box = page.locator(".cell_output .output.text_html").first
    assert page.locator(".mm-wide-note").first.is_visible(), "no note above the wide table"
    geometry = box.evaluate("b => [b.scrollWidth, b.clientWidth, getComputedStyle(b).overflowX]")
    assert geometry[0] > geometry[1] and geometry[2] == "auto", geometry
    last = box.locator("th").last
    box.evaluate("b => { b.scrollLeft = b.scrollWidth; }")
    cell, frame = last.bounding_box(), box.bounding_box()
    assert cell["x"] + cell["width"] <= frame["x"] + frame["width"] + 1, "last column out of reach"
    page.close()


def test_no_console_error_or_warning(browser_log: dict, standin_url: str) -> None:
    """Runs after the stand-in pages were opened at both widths (file order)."""
    for viewport in (PHONE, DESKTOP):
        for path in ("intro.html", f"chapters/{CHAPTER}.html"):
            _open(browser_log, f"{standin_url}/{path}", viewport).close()
    theme = [m for m in browser_log["console"] if "theme mode" in m]
    assert not theme, theme[:3]
    assert not browser_log["console"], browser_log["console"][:5]


def test_published_site_opens(browser_log: dict, standin_site: Path, tmp_path: Path) -> None:
    bare, work, checkout = tmp_path / "remote.git", tmp_path / "work", tmp_path / "checkout"
    git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    git("init", "-q", str(work), cwd=tmp_path)
    git("remote", "add", "origin", str(bare), cwd=work)
    result = make_publish(standin_site, work, "origin")
    assert result.returncode == 0, result.stderr + result.stdout
    git("clone", "-q", "--branch", "gh-pages", str(bare), str(checkout), cwd=tmp_path)
    assert (checkout / ".nojekyll").is_file() and (checkout / "index.html").is_file()
    with _serve(checkout) as url:
        page = _open(browser_log, f"{url}/index.html", DESKTOP)  # redirects to the home page
        assert "Start here" in page.title()
        assert page.locator(".bd-sidebar-primary a", has_text=TITLE).count() == 1
        page.close()


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
    number = [nb.stem for nb in NOTEBOOKS].index(CHAPTER) + 1  # the toc numbers the chapters
    assert chapter.locator("article h1").first.inner_text().startswith(f"{number}. {TITLE}")


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
    """The take-aways are computed sentences, glued into the prose with their numbers."""
    text = chapter.locator("article").inner_text()
    match = re.search(r"ours is (level with|ahead of|behind) the CLS predictor[^.]*?"
                      r"(\d+\.\d) points", text)
    assert match, "the computed take-away on ours vs CLS is missing from the prose"
    assert 0.0 <= float(match.group(2)) <= 100.0
    assert "{glue" not in text


def _slider_boxes(page):
    """The chapter's kernel-free sliders: each a VBox whose first child is the slider."""
    return page.locator(".widget-vbox:has(> .widget-slider)")


def _shown_images(box) -> list[str]:
    """``src`` of the images inside ``box`` that the reader can see (one Stack child)."""
    return box.locator("img").evaluate_all(
        "imgs => imgs.filter(i => i.offsetParent && i.naturalWidth > 0).map(i => i.src)")


def _until(page, check, what: str, timeout_s: float = 5.0):
    """Poll ``check()`` until it is truthy; fails naming ``what``."""
    for _ in range(int(timeout_s * 10)):
        value = check()
        if value:
            return value
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out: {what}")


def _move(page, box, presses: int) -> tuple[str, str]:
    """Press ArrowRight ``presses`` times on the slider of ``box``; its readout before, after."""
    readout = box.locator(".widget-slider .widget-readout").first
    before = readout.inner_text()
    handle = box.locator(".widget-slider .noUi-handle").first
    handle.focus()
    for _ in range(presses):
        handle.press("ArrowRight")
    _until(page, lambda: readout.inner_text() != before, "the slider's readout did not change")
    return before, readout.inner_text()


# (readout before, readout after two key presses) of each slider of the chapter, in page order:
# the test missing rate (with the missing-type buttons) and the training missing rate
SLIDERS = [("0.0", "0.2"), ("0.0", "0.7")]


def test_every_slider_moves_its_figure(chapter, tmp_path: Path) -> None:
    boxes = _slider_boxes(chapter)
    assert boxes.count() == len(SLIDERS), f"expected {len(SLIDERS)} sliders, saw {boxes.count()}"
    for n, expected in enumerate(SLIDERS):
        box = boxes.nth(n)
        box.scroll_into_view_if_needed()
        before = _shown_images(box)
        assert len(before) == 1, f"slider {n}: one pre-rendered figure should show, saw {len(before)}"
        assert _move(chapter, box, 2) == expected
        after = _until(chapter, lambda: (lambda now: now if now != before else None)(
            _shown_images(box)), f"slider {n} did not change the shown figure")
        assert len(after) == 1
    chapter.screenshot(path=str(tmp_path / "chapter.png"), full_page=True)
    assert (tmp_path / "chapter.png").stat().st_size > 0


def test_missing_type_buttons_switch_the_figure(chapter) -> None:
    box = _slider_boxes(chapter).first
    buttons = box.locator(".widget-toggle-buttons button")
    assert buttons.all_inner_texts() == ["both", "image", "text"]
    before = _shown_images(box)
    buttons.nth(2).click()
    after = _until(chapter, lambda: (lambda now: now if now != before else None)(
        _shown_images(box)), "the missing-type buttons did not change the shown figure")
    assert len(after) == 1


def test_phone_width_chapter_fits_and_its_sliders_work(browser_log: dict, base_url: str) -> None:
    page = _open(browser_log, f"{base_url}/chapters/{CHAPTER}.html", PHONE)
    page.wait_for_selector(".widget-slider .noUi-handle", timeout=20_000)
    overflow = page.evaluate("() => document.documentElement.scrollWidth - innerWidth")
    assert overflow <= 1, f"the page is {overflow} px wider than a phone"
    too_wide = page.locator("article img").evaluate_all(
        "imgs => imgs.filter(i => i.offsetParent && i.getBoundingClientRect().right > innerWidth + 1)"
        ".map(i => i.src)")
    assert not too_wide, f"figures wider than the phone: {too_wide[:3]}"
    boxes = _slider_boxes(page)
    for n, expected in enumerate(SLIDERS):
        box = boxes.nth(n)
        box.scroll_into_view_if_needed()
        handle = box.locator(".noUi-handle").first
        assert handle.bounding_box()["x"] + 1 < PHONE["width"], f"slider {n} is off screen"
        before = _shown_images(box)
        assert _move(page, box, 2) == expected
        _until(page, lambda: _shown_images(box) != before, f"slider {n} did not move on a phone")
    page.close()


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
