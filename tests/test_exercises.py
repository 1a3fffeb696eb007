"""The chapters' exercises: two to four per chapter, each with a hidden solution that works.

Every chapter ends with an "## Exercises" section of Markdown cells: one "### Exercise" cell
per exercise, whose solution sits in a ``{dropdown}`` (closed on the site). Markdown is never
executed, so ``make book`` does not run the solutions; the ``notebook`` test here does, at
small parameters, after the chapter's setup cells, and checks what each solution computed.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

import matplotlib
import nbformat
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
HEADING = "## Exercises"
SOLUTION = re.compile(r"````\{dropdown\} Solution\n```python\n(.*?)\n```\n.*?\n````\s*$", re.S)

# What the solutions run at: Config leaves a chapter's parameters cell may hold. Chapters
# 02 to 06 share one run folder, so the default "ours" run trains once and is then loaded.
SMALL = {"limit_samples": 16, "epochs": 1, "batch_size": 8, "eval_batch_size": 16,
         "prompt_length": 2, "image_size": 56}


def exercises(path: Path) -> list[tuple[str, str]]:
    """(title, solution code) of each exercise of a chapter, in order."""
    cells = nbformat.read(path, as_version=4).cells
    starts = [i for i, c in enumerate(cells)
              if c.cell_type == "markdown" and c.source.startswith(HEADING)]
    if len(starts) != 1:
        return []
    found = []
    for cell in cells[starts[0] + 1:]:
        title = cell.source.splitlines()[0] if cell.source else ""
        match = SOLUTION.search(cell.source) if cell.cell_type == "markdown" else None
        found.append((title, match.group(1) if match else ""))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_chapter_ends_with_two_to_four_exercises_with_hidden_solutions(path: Path) -> None:
    cells = nbformat.read(path, as_version=4).cells
    headings = [i for i, c in enumerate(cells)
                if c.cell_type == "markdown" and c.source.startswith(HEADING)]
    assert len(headings) == 1, f"{path.name}: needs one '{HEADING}' section, the last one"
    after = cells[headings[0] + 1:]
    assert all(c.cell_type == "markdown" for c in after), (
        f"{path.name}: a code cell after '{HEADING}' would run during the book build")
    found = exercises(path)
    assert 2 <= len(found) <= 4, f"{path.name}: {len(found)} exercises; a chapter has 2 to 4"
    chapter = int(path.stem[:2])
    for i, ((title, code), cell) in enumerate(zip(found, after), 1):
        assert title.startswith(f"### Exercise {chapter}.{i}: "), f"{path.name}: {title!r}"
        assert "*Predict first:*" in cell.source, f"{path.name} {title}: ask for a prediction"
        assert code, f"{path.name} {title}: no python solution inside a dropdown"
        compile(code, f"{path.name}: {title}", "exec")


def test_the_site_toggles_are_available() -> None:
    """The dropdown directive comes from sphinx_design, which the book's config loads."""
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "sphinx_design" in config["sphinx"]["config"]["extensions"]


# --- running the solutions ----------------------------------------------------------------


def _finite(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    return math.isfinite(float(value)) and low <= float(value) <= high


def check_01(ns: dict) -> None:
    changes = ns["changes"]
    assert set(changes) == {1, 4}
    for K, row in changes.items():
        assert row["prompt outputs"][1] == K  # (B, K, D)
        assert row["max |embedding - image_ro|"] < 1e-3  # read-only: K never moves it
    report = ns["frozen_text"]
    assert report.loc["text_encoder", "trainable"] == 0
    assert report.loc["image_encoder", "trainable"] > 0 and report.loc["prompts", "trainable"] > 0
    assert ns["isolation"]["embedding"] < 1e-4 and ns["isolation"]["prompt outputs"] > 0
    model, cfg = ns["model"], ns["cfg"]  # every change was undone
    assert model.image_encoder.prompts_see_each_other == cfg.model.prompts_see_each_other
    assert sum(p.requires_grad for p in model.text_encoder.backbone.parameters()) == 0


def check_02(ns: dict) -> None:
    table = ns["missing_at_training"]
    assert table.loc["complete", "training rows without text"] == 0
    assert table.loc["missing", "training rows without text"] > 0  # it saw missing rows
    assert table.loc["missing", "training rows without image"] > 0
    assert all(_finite(v, 0, 1) for v in table.filter(like="validation").to_numpy().ravel())
    assert ns["predicted_steps"] == ns["measured_steps"] > 0


def check_03(ns: dict) -> None:
    r2 = ns["r2_by_method"]
    assert r2.notna().all().all() and all(_finite(v, high=1) for v in r2.to_numpy().ravel())
    assert (r2["mean"] < 0).all()  # an untrained predictor is worse than the mean
    stats = ns["image_to_text"]
    assert _finite(stats["recall@1"], 0, 1) and stats["median_rank"] >= 1


def check_04(ns: dict) -> None:
    rows, metric = ns["fill_rows"], ns["metric"]
    assert {r["fill"] for r in rows} == {"predict", "shrink"}
    assert all(_finite(r[metric], 0, 1) for r in rows)
    at_zero = {(r["fill"], r["missing_type"], r["seed"]): r[metric] for r in rows
               if r["missing_rate"] == 0.0}
    assert all(v == at_zero[("predict", t, s)] for (f, t, s), v in at_zero.items())
    lost = ns["lost"]
    assert set(lost.index) == {"image", "text"} and all(_finite(v) for v in lost["drop"])


def check_05(ns: dict) -> None:
    runs = ns["K_runs"]
    assert set(runs) == {1, ns["cfg"].model.prompt_length}
    for K, row in runs.items():
        assert row["image prompts"] == row["text prompts"] == K  # the model trained has K prompts
    spread = ns["spread"]
    assert len(spread) == 3 and all(_finite(v, 0, 100) for v in spread.to_numpy().ravel())


def check_06(ns: dict) -> None:
    decision = ns["decision"]
    assert all(_finite(v, 0, 1) for row in decision.values() for v in row.values())
    table = ns["rebuilt_table"]
    assert table["text missing"] + table["image missing"] == table["missing in all (num_missing)"]
    assert table["same digest"] is True


def check_07(ns: dict) -> None:
    roofline, rows = ns["roofline"], ns["rows"]
    offline = roofline.loc["offline", "fraction of the ceiling"]
    assert _finite(offline, 0, 1) and math.isclose(offline, rows.loc["offline", "peak_fraction"],
                                                   rel_tol=1e-6)
    assert all(_finite(v, 0) and v > 0 for v in ns["timing"].values())


CHECKS: dict[str, Callable[[dict], None]] = {
    "01_method": check_01, "02_training": check_02, "03_embeddings": check_03,
    "04_robustness": check_04, "05_ablations": check_05, "06_design": check_06,
    "07_performance": check_07}


def setup_code(path: Path, out_dir: Path) -> list[str]:
    """The code a chapter runs before its exercises, at small parameters.

    Chapter 01 trains nothing and its exercises use its objects, so all of it runs; the others
    run their parameters and setup cells (the solutions load or train what they need).
    """
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    rest = [c.source for c in code if c not in params]
    if not params:
        return rest[:1]
    names = {line.split("=")[0].strip() for line in params[0].source.splitlines() if "=" in line}
    small = {k: v for k, v in {**SMALL, "out_dir": str(out_dir)}.items() if k in names}
    override = "\n".join(f"{k} = {v!r}" for k, v in small.items())
    return [params[0].source, override, *(rest if path.stem == "01_method" else rest[:1])]


@pytest.fixture(scope="session")
def exercise_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exercise_runs") / "runs"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_solutions_run_at_small_parameters(path: Path, exercise_runs: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    monkeypatch.chdir(ROOT)  # chapters read data/ and benchmarks/ relative to the root
    ns: dict[str, Any] = {"__name__": f"exercises_{path.stem}"}
    for i, source in enumerate(setup_code(path, exercise_runs)):
        exec(compile(source, f"{path.name} setup {i}", "exec"), ns)
    for title, code in exercises(path):
        exec(compile(code, f"{path.name}: {title}", "exec"), ns)
    plt.close("all")
    CHECKS[path.stem](ns)


@pytest.mark.slow
def test_the_built_page_hides_each_solution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """A chapter's exercises rendered by the book's own build: every solution is in a closed
    dropdown, and the page carries no output of it (the build does not run it)."""
    from html.parser import HTMLParser

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    import _site

    chapter = ROOT / "notebooks" / "04_robustness.ipynb"
    book = _site.standin_book(tmp_path)
    standin = book / "chapters" / chapter.name
    nb = nbformat.read(standin, as_version=4)
    cells = nbformat.read(chapter, as_version=4).cells
    start = next(i for i, c in enumerate(cells)
                 if c.cell_type == "markdown" and c.source.startswith(HEADING))
    nb.cells += cells[start:]
    nbformat.write(nb, standin)
    html = (_site.build(tmp_path) / "chapters" / f"{chapter.stem}.html").read_text()

    class Details(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[tuple[dict, str]] = []
            self.depth = 0

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "details":
                self.depth += 1
                self.found.append((dict(attrs), ""))

        def handle_endtag(self, tag: str) -> None:
            self.depth -= tag == "details"

        def handle_data(self, data: str) -> None:
            if self.depth:
                attrs, text = self.found[-1]
                self.found[-1] = (attrs, text + data)

    parser = Details()
    parser.feed(html)
    dropdowns = [(a, t) for a, t in parser.found if "sd-dropdown" in a.get("class", "")]
    solutions = [code for _, code in exercises(chapter)]
    assert len(dropdowns) == len(solutions)
    for (attrs, text), code in zip(dropdowns, solutions):
        assert "open" not in attrs  # closed until the reader opens it
        assert code.splitlines()[0].split()[0] in text  # the solution is inside it
