"""Publishing the book: `make publish` to a git remote, the CI workflow, the repository buttons.

`make publish` runs from a throw-away git repository whose remote is a local bare repository,
with a stand-in site, so the project's own branches and `_build` are never touched.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from _scripts import load_script
from _site import build, make_publish, standin_book
from _site import git as _git

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
URL = "https://github.com/example/mmcore"


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    """(a working repository, the bare repository it knows as remote ``pages``)."""
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    _git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    _git("init", "-q", str(work), cwd=tmp_path)
    _git("remote", "add", "pages", str(bare), cwd=work)
    return work, bare


def _site(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_make_publish_pushes_the_site_to_gh_pages(repos, tmp_path: Path) -> None:
    work, bare = repos
    site = _site(tmp_path / "html", {"index.html": "<title>Start here</title>",
                                     "_static/styles/theme.css": "body {}"})
    result = make_publish(site, work, "pages")
    assert result.returncode == 0, result.stderr + result.stdout
    files = _git("ls-tree", "-r", "--name-only", "gh-pages", cwd=bare).split()
    assert sorted(files) == [".nojekyll", "_static/styles/theme.css", "index.html"]
    assert _git("show", "gh-pages:index.html", cwd=bare) == "<title>Start here</title>"


def test_make_publish_replaces_the_previous_site(repos, tmp_path: Path) -> None:
    work, bare = repos
    first = _site(tmp_path / "one", {"index.html": "one", "old.html": "gone next time"})
    second = _site(tmp_path / "two", {"index.html": "two"})
    assert make_publish(first, work, "pages").returncode == 0
    result = make_publish(second, work, "pages")
    assert result.returncode == 0, result.stderr + result.stdout
    assert sorted(_git("ls-tree", "-r", "--name-only", "gh-pages", cwd=bare).split()) == [
        ".nojekyll", "index.html"]
    assert _git("rev-list", "--count", "gh-pages", cwd=bare).strip() == "1"  # no history kept


def test_make_publish_branch_is_configurable(repos, tmp_path: Path) -> None:
    work, bare = repos
    site = _site(tmp_path / "html", {"index.html": "x"})
    result = make_publish(site, work, "pages", PUBLISH_BRANCH="site")
    assert result.returncode == 0, result.stderr + result.stdout
    branches = _git("branch", "--format=%(refname:short)", cwd=bare).split()
    assert branches == ["site"]


def test_make_publish_without_a_built_site_says_so(repos, tmp_path: Path) -> None:
    work, bare = repos
    result = make_publish(tmp_path / "missing", work, "pages")
    assert result.returncode != 0
    assert "run make book first" in result.stdout + result.stderr
    assert _git("branch", cwd=bare).strip() == ""


def test_publish_remote_defaults_to_origin() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^PUBLISH_REMOTE \?= origin$", makefile, re.M)
    assert re.search(r"^PUBLISH_BRANCH \?= gh-pages$", makefile, re.M)


# --- the CI workflow ------------------------------------------------------------------------

def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_workflow_parses_and_runs_on_push() -> None:
    workflow = _workflow()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "push" in triggers and "workflow_dispatch" in triggers
    assert workflow["permissions"]["pages"] == "write"
    assert workflow["jobs"]["deploy"]["needs"] == "build"


def test_workflow_builds_with_the_readmes_command() -> None:
    readme = (ROOT / "README.md").read_text()
    runs = [step["run"] for step in _steps(_workflow()) if "run" in step]
    book_runs = [run for run in runs if run.split()[:2] == ["make", "book"]]
    assert book_runs, f"no step runs `make book`: {runs}"
    assert "make book" in readme
    assert all(command.split()[0] == "make" for command in runs), "CI should do what a reader does"


def test_workflow_deploys_the_built_site() -> None:
    steps = _steps(_workflow())
    uses = [step.get("uses", "") for step in steps]
    assert any(u.startswith("actions/checkout@") for u in uses)
    upload = next(s for s in steps
                  if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html"
    assert any(u.startswith("actions/deploy-pages@") for u in uses)
    assert re.search(r"^SITE \?= _build/html$", (ROOT / "Makefile").read_text(), re.M)


# --- repository buttons ---------------------------------------------------------------------

def test_site_config_buttons_follow_the_repository_url(tmp_path: Path) -> None:
    build_book = load_script("scripts/build_book.py")
    shipped = build_book.site_config(ROOT / "_config.yml")
    assert shipped["repository"]["url"] == "", "the shipped config leaves the URL to the author"
    assert not shipped["html"]["use_repository_button"]
    assert not shipped["html"]["use_issues_button"]

    given = build_book.site_config(ROOT / "_config.yml", URL)
    assert given["repository"]["url"] == URL
    assert given["html"]["use_repository_button"] and given["html"]["use_issues_button"]

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["repository"]["url"] = URL
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    filled = build_book.site_config(tmp_path / "_config.yml")
    assert filled["html"]["use_repository_button"] and filled["html"]["use_issues_button"]
    assert filled["sphinx"]["config"] == config["sphinx"]["config"], "the rest passes through"


def test_site_config_makes_local_extension_paths_absolute() -> None:
    build_book = load_script("scripts/build_book.py")
    local = build_book.site_config(ROOT / "_config.yml")["sphinx"]["local_extensions"]
    assert local, "the book has a local extension (the .md download)"
    for name, path in local.items():
        assert Path(path).is_absolute() and (Path(path) / f"{name}.py").is_file(), path


@pytest.mark.slow
def test_repository_buttons_appear_once_the_url_is_set(tmp_path: Path) -> None:
    pages = {}
    for name, url in (("without", ""), ("with", URL)):
        standin_book(tmp_path / name)
        html = build(tmp_path / name, url)
        pages[name] = (html / "chapters" / "04_robustness.html").read_text()
    assert "btn-source-repository-button" not in pages["without"]
    assert URL not in pages["without"]
    button = rf'href="{URL}"[^>]*\s+class="[^"]*btn-source-repository-button'
    assert re.search(button, pages["with"])
    assert f'href="{URL}/issues/new?' in pages["with"]
