"""Notebook hygiene and execution.

Sources in notebooks/ are stripped, their papermill parameters are exactly Config leaves with
Config's defaults (so a notebook and the CLI never disagree), and every notebook runs end to
end at small parameters with the book's executor (marker ``notebook``; tests/_chapters.py).
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import nbformat
import papermill
import pytest
from _chapters import SMALL_PARAMS
from _scripts import load_script

from mmcore.config import Config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DEFAULTS = Config().to_flat()

def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def _load_strip_notebooks():
    return load_script("scripts/strip_notebooks.py")


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/ holds no .ipynb: the book would be empty"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_source_is_stripped(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name} cell {i} has outputs: run scripts/strip_notebooks.py"
        assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert "widgets" not in nb.metadata, f"{path.name} carries widget state in its metadata"
    assert not _load_strip_notebooks().strip_file(path, check=True), (
        f"{path.name} is not stripped: run scripts/strip_notebooks.py"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_parameters_mirror_config_defaults(path: Path) -> None:
    params = papermill.inspect_notebook(str(path))
    for name, info in params.items():
        assert name in DEFAULTS, (
            f"{path.name}: parameter '{name}' is not a Config leaf; notebooks may only "
            f"parameterise Config fields (valid: {', '.join(sorted(DEFAULTS))})"
        )
        try:
            value = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            pytest.fail(f"{path.name}: parameter '{name} = {info['default']}' is not a flat literal")
        expected = DEFAULTS[name]
        assert type(value) is type(expected) and value == expected, (
            f"{path.name}: parameter '{name} = {value!r}' differs from Config's default {expected!r}"
        )


def test_small_params_are_valid() -> None:
    stems = {p.stem for p in NOTEBOOKS}
    for stem, params in SMALL_PARAMS.items():
        assert stem in stems, f"SMALL_PARAMS names '{stem}', which is not in notebooks/"
        Config.from_params(**params)  # raises ConfigError naming a bad key or value


def test_strip_clears_outputs_and_keeps_tags(tmp_path: Path) -> None:
    strip_notebooks = _load_strip_notebooks()
    nb = nbformat.v4.new_notebook(metadata={"widgets": {"state": {}}, "papermill": {}})
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"], "papermill": {}}),
        nbformat.v4.new_code_cell("x = 2", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("print(x)", execution_count=3, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="1\n"),
        ]),
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)

    assert strip_notebooks.main(["--check", str(path)]) == 1
    assert strip_notebooks.main([str(path)]) == 0
    assert strip_notebooks.main(["--check", str(path)]) == 0
    out = nbformat.read(path, as_version=4)
    assert [c.source for c in out.cells] == ["x = 1", "print(x)"]
    assert out.cells[0].metadata == {"tags": ["parameters"]}
    assert out.cells[1].outputs == [] and out.cells[1].execution_count is None
    assert "widgets" not in out.metadata and "papermill" not in out.metadata


@pytest.mark.notebook
@pytest.mark.xdist_group("chapters")  # one worker: chapters load each other's runs (_chapters.py)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_at_small_parameters(path: Path, small_chapter) -> None:
    if path.stem not in SMALL_PARAMS:
        pytest.fail(f"add '{path.stem}' to SMALL_PARAMS in tests/_chapters.py")
    executed, params = small_chapter(path.stem)  # the book's executor raises on a failed cell
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
    key = load_script("scripts/build_book.py").FINGERPRINT_KEY
    assert nb.metadata[key]["parameters"] == params  # the executor records what it ran with
    if params:  # papermill injects a cell only when it is given parameters
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and all(f"{k} = " in injected[0].source for k in params)


@pytest.mark.notebook
@pytest.mark.parametrize("dataset", ["mmimdb", "food101", "hateful_memes"])
def test_training_chapter_runs_unchanged_on_each_benchmark_layout(
    dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chapter 02 on a fixture that copies the benchmark's real layout, only parameters changed."""
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    makers = {"mmimdb": ("test_mmimdb", "make_mmimdb"), "food101": ("test_food101", "make_food101"),
              "hateful_memes": ("test_hateful_memes", "make_memes")}
    module, function = makers[dataset]
    data_root = getattr(importlib.import_module(module), function)(tmp_path / dataset)
    params = {"dataset": dataset, "data_root": str(data_root), "epochs": 1, "batch_size": 2,
              "eval_batch_size": 1, "prompt_length": 2, "max_text_length": 32,
              "out_dir": str(tmp_path / "runs")}
    out = tmp_path / "02_training.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "02_training.ipynb"), str(out),
                               parameters=params, kernel_name="python3", cwd=str(ROOT),
                               progress_bar=False)
    printed = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells
                      if c.cell_type == "code" for o in c.outputs)
    assert f"{dataset}: " in printed  # the run summary names the dataset it trained on
