"""The book's chapter scheduler (``scripts/build_book.py``): chapters run side by side, each
after the chapters whose runs it reads, and a failure starts nothing more; and the kernel
channels that look again for a message whose wake-up was missed."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from queue import Empty

import nbformat
import pytest
from jupyter_client.channels import AsyncZMQSocketChannel

from tests._scripts import ROOT, load_script

build_book = load_script("scripts/build_book.py")


class Chapters:
    """Stand-in chapters that take ``seconds`` each and record when they start and end."""

    def __init__(self, seconds: dict[str, float], failing: str = "") -> None:
        self.seconds, self.failing = seconds, failing
        self.events: list[tuple[str, str]] = []  # ("start" | "end", name) in order
        self._lock = threading.Lock()
        self.most_at_once = self._running = 0

    def __call__(self, name: str) -> None:
        with self._lock:
            self.events.append(("start", name))
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        time.sleep(self.seconds[name])
        with self._lock:
            self._running -= 1
            self.events.append(("end", name))
        if name == self.failing:
            raise RuntimeError(f"{name} failed in cell 3: ValueError: bad")

    def when(self, kind: str, name: str) -> int:
        return self.events.index((kind, name))


AFTER = {"c": ("b",), "d": ("b", "c")}


def _run(chapters: Chapters, names: list[str], jobs: int) -> tuple[str, list[str]]:
    lines: list[str] = []
    with ThreadPoolExecutor(jobs) as pool:
        failure = build_book.run_chapters(names, chapters, pool, jobs, after=AFTER,
                                          report=lines.append)
    return failure, lines


def test_chapters_run_side_by_side_each_after_the_ones_it_needs():
    chapters = Chapters({"a": 0.05, "b": 0.1, "c": 0.05, "d": 0.05, "e": 0.2})
    failure, lines = _run(chapters, ["a", "b", "c", "d", "e"], jobs=2)
    assert failure == ""
    assert sorted(name for kind, name in chapters.events if kind == "end") == list("abcde")
    assert chapters.most_at_once == 2
    assert chapters.when("start", "c") > chapters.when("end", "b")
    assert chapters.when("start", "d") > chapters.when("end", "c")
    assert chapters.events[0] == ("start", "b")  # the head of the longest chain goes first
    assert "b: executing" in lines and any(line.startswith("d: done in") for line in lines)


def test_a_needed_chapter_that_is_up_to_date_is_not_waited_for():
    chapters = Chapters({"c": 0.01, "d": 0.01})
    assert _run(chapters, ["c", "d"], jobs=1)[0] == ""  # "b" is not among them: done
    assert [name for kind, name in chapters.events if kind == "start"] == ["c", "d"]


def test_one_job_runs_one_chapter_at_a_time():
    chapters = Chapters({"a": 0.02, "b": 0.02, "e": 0.02})
    assert _run(chapters, ["a", "b", "e"], jobs=1)[0] == ""
    assert chapters.most_at_once == 1


def test_after_a_failure_nothing_starts_and_the_running_chapter_finishes():
    chapters = Chapters({"a": 0.3, "b": 0.02, "c": 0.02, "d": 0.02}, failing="b")
    failure, _ = _run(chapters, ["a", "b", "c", "d"], jobs=2)
    assert failure == "b failed in cell 3: ValueError: bad"
    assert ("end", "a") in chapters.events  # it was running: it finished
    assert ("start", "c") not in chapters.events and ("start", "d") not in chapters.events


def test_an_error_that_does_not_name_its_chapter_is_named():
    def crash(name: str) -> None:
        raise OSError("the kernel died")

    with ThreadPoolExecutor(1) as pool:
        failure = build_book.run_chapters(["a"], crash, pool, 1, after={}, report=print)
    assert failure == "a failed: OSError: the kernel died"


@pytest.mark.parametrize("name", sorted(build_book.AFTER))
def test_the_books_order_names_its_notebooks(name):
    notebooks = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert {name, *build_book.AFTER[name]} <= notebooks


def test_no_jobs_is_refused_with_the_option_named(capsys):
    with pytest.raises(SystemExit):
        build_book.main(["--jobs", "0", "--no-build"])
    assert "--jobs 0: give 1 or more" in capsys.readouterr().err


def _parent_get_msg(arrives_after: int, calls: list):
    """A channel's own ``get_msg``: ``Empty`` for the first ``arrives_after`` polls (a message
    whose wake-up the poll missed), then the message."""
    async def get_msg(self, timeout=None):
        calls.append(timeout)
        await asyncio.sleep(min(timeout, 0.01))
        if len(calls) <= arrives_after:
            raise Empty
        return {"msg_type": "execute_reply"}
    return get_msg


def test_a_wait_without_timeout_looks_again_every_second_until_the_message_is_seen(monkeypatch):
    calls = []
    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", _parent_get_msg(3, calls))
    channel = build_book.RecheckingChannel.__new__(build_book.RecheckingChannel)
    assert asyncio.run(channel.get_msg()) == {"msg_type": "execute_reply"}
    assert calls == [1.0] * 4


def test_a_wait_with_a_timeout_still_ends_in_empty_at_its_deadline(monkeypatch):
    calls = []
    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", _parent_get_msg(10**6, calls))
    channel = build_book.RecheckingChannel.__new__(build_book.RecheckingChannel)
    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(channel.get_msg(timeout=0.1))
    assert 0.1 <= time.monotonic() - start < 0.5
    assert calls[0] == pytest.approx(0.1, abs=0.01) and all(t <= 0.1 for t in calls)


@pytest.mark.notebook
def test_chapters_execute_on_the_rechecking_channels(tmp_path, monkeypatch):
    seen = []
    real = build_book.RecheckingChannel.get_msg

    async def counting(self, timeout=None):
        seen.append(timeout)
        return await real(self, timeout)

    monkeypatch.setattr(build_book.RecheckingChannel, "get_msg", counting)
    monkeypatch.setattr(build_book, "STAGING", tmp_path / "staging")
    source = tmp_path / "one.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, source)
    build_book.execute(source, tmp_path / "out.ipynb", {}, progress=False)
    assert seen  # nbclient waited for the reply and the output through them
    assert "42" in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs[0].text
