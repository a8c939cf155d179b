"""Tests of btc.pipeline and the notebooks: presets, parameters, papermill runs, clean commits."""

from __future__ import annotations

import ast
import json

import nbformat
import pytest

from btc import config, pipeline
from tests.conftest import PROJECT_ROOT

NOTEBOOKS = pipeline.notebooks()


def test_notebooks_exist_in_pipeline_order():
    assert [nb.name for nb in NOTEBOOKS][:1] == ["01_preprocess.ipynb"]


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_clean_and_thin(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
    for stmt in ast.parse(tagged[0].source).body:  # literals only, annotated
        assert isinstance(stmt, ast.AnnAssign), ast.unparse(stmt)
        ast.literal_eval(stmt.value)  # raises on anything but a literal
    for cell in code:
        tree = ast.parse(cell.source)
        defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert not defs, "move functions and classes into btc"
    assert nb.metadata["kernelspec"]["name"] == pipeline.KERNEL_NAME


@pytest.mark.parametrize("preset", ["quick", "full", "smoke"])
def test_presets_only_name_declared_parameters(preset):
    steps = pipeline.plan(pipeline.load_preset(preset), NOTEBOOKS)
    assert steps and all(isinstance(p, dict) for _, p in steps)


def test_unknown_preset_and_parameter_are_rejected():
    with pytest.raises(ValueError, match="Received: preset='fast'"):
        pipeline.load_preset("fast")
    with pytest.raises(ValueError, match=r"Unknown pipeline parameter\(s\) \['image_szie'\]"):
        pipeline.plan({"image_szie": 128}, NOTEBOOKS)


def test_failing_notebook_stops_with_the_cell_and_keeps_partial_output(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x: int = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print('before the failure')"),
        nbformat.v4.new_code_cell("raise ValueError(f'bad x={x}')"),
    ]
    nb.metadata["kernelspec"] = {"name": "btc", "display_name": "btc", "language": "python"}
    src = tmp_path / "99_fail.ipynb"
    nbformat.write(nb, src)
    with pytest.raises(pipeline.PipelineError, match=r"99_fail.ipynb failed .*bad x=5") as err:
        pipeline.run_notebook(src, {"x": 5}, tmp_path / "out")
    out = tmp_path / "out" / "99_fail.ipynb"
    assert "Partial output kept" in str(err.value) and out.is_file()
    executed = nbformat.read(out, as_version=4)
    assert "before the failure" in json.dumps([c.get("outputs") for c in executed.cells])


@pytest.mark.slow
def test_papermill_smoke_run_of_the_pipeline(real_sample, tmp_path):
    outputs = pipeline.run_pipeline(
        "smoke", overrides={"data_dir": str(real_sample)}, output_dir=tmp_path
    )
    assert [p.name for p in outputs] == [nb.name for nb in NOTEBOOKS]
    results = config.RESULTS_DIR
    summary = json.loads((results / "01_preprocess" / "summary.json").read_text())
    assert summary["report"]["groups_crossing_splits"] == 0
    assert summary["params"]["sample_per_class"] == 12
    for fig in ["class_distribution", "samples", "duplicate_pairs", "augmentation"]:
        assert (results / "01_preprocess" / f"{fig}.png").stat().st_size > 1000
    assert config.MANIFEST_PATH.is_file() and config.MANIFEST_PATH.with_suffix(".json").is_file()
    for name in ("cnn", "mobilenet"):
        meta = json.loads((config.MODELS_DIR / name / "metadata.json").read_text())
        assert meta["image_size"] == 64 and meta["temperature"] > 0
        assert (results / "02_train" / f"{name}_curves.png").is_file()
    metrics = json.loads((results / "metrics.json").read_text())
    assert set(metrics["models"]) == {"cnn", "mobilenet", "ensemble"}
    assert metrics["leakage"]["leaky"] is False
    executed = nbformat.read(tmp_path / "03_evaluate.ipynb", as_version=4)
    assert "| ensemble |" in json.dumps([c.get("outputs") for c in executed.cells])


def test_repository_layout():
    for name in ["notebooks", "btc", "data", "models", "results", "params", "tests", ".ci/run",
                 "environment.yml", "pyproject.toml", "Makefile", "README.md"]:  # fmt: skip
        assert (PROJECT_ROOT / name).exists(), name
    for folder in ["data", "models", "results"]:
        assert (PROJECT_ROOT / folder / ".gitignore").read_text().startswith("*")
