"""Tests of btc.pipeline and the notebooks: presets, parameters, papermill runs, clean commits."""

from __future__ import annotations

import ast
import json
import re

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


NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795930053.250420   25292 port.cc:153] oneDNN custom operations are on.",
    "E0000 00:00:1795930067.339968   25292 cuda_platform.cc:52] failed call to cuInit: UNKNOWN",
    "2025-01-01 10:00:00.123456: I tensorflow/core/util/port.cc:113] oneDNN custom operations",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",
    "WARNING:absl:Compiled the loaded model, but the compiled metrics have yet to be built.",
    "Task was destroyed but it is pending!",
    "task: <Task pending name='Task-78' coro=<Kernel.dispatch_control() running at "
    "/x/ipykernel/kernelbase.py:372> wait_for=<Future pending cb=[Task.task_wakeup()]>",
]


def test_line_filter_reassembles_chunks_and_drops_tensorflow_noise():
    import io

    out = io.StringIO()
    filter_ = pipeline.LineFilter(out, prefix="  ")
    text = "\n".join([NOISE[0], "Epoch 1/2", *NOISE[1:], "26/26 - 31s - loss: 0.9", "tail"])
    for start in range(0, len(text), 7):  # papermill's chunks end anywhere, each flushed
        filter_.write(text[start : start + 7])
        filter_.flush()
    assert out.getvalue() == "  Epoch 1/2\n  26/26 - 31s - loss: 0.9\n"
    filter_.close()
    assert out.getvalue().endswith("  tail\n")
    everything = io.StringIO()
    pipeline.LineFilter(everything, drop=None).write(text + "\n")
    assert everything.getvalue() == text + "\n"


def test_run_notebook_streams_what_it_prints_without_tensorflow_noise(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    code = [
        "import sys, time",
        "print('Epoch 1/1'); print('4/4 - 2s - loss: 0.5', flush=True)",
        f"print({NOISE[1]!r}, file=sys.stderr); print('a warning', file=sys.stderr)",
        "time.sleep(2.5)",
    ]
    nb.cells = [nbformat.v4.new_code_cell(c) for c in code]
    nb.metadata["kernelspec"] = {"name": "btc", "display_name": "btc", "language": "python"}
    src = tmp_path / "98_talk.ipynb"
    nbformat.write(nb, src)
    pipeline.run_notebook(src, {}, tmp_path / "out", heartbeat=1.0)
    shown = capsys.readouterr()
    assert "  Epoch 1/1\n  4/4 - 2s - loss: 0.5\n" in shown.out
    assert "  a warning\n" in shown.err and "oneDNN" not in shown.err
    assert "  … 98_talk.ipynb still running (" in shown.out  # the silent cell gets a heartbeat
    pipeline.run_notebook(src, {}, tmp_path / "out", verbose=True, heartbeat=60)
    assert "oneDNN custom operations" in capsys.readouterr().err


def test_pipeline_prints_a_line_per_stage_with_its_time(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(pipeline, "check_kernel", lambda kernel: None)
    monkeypatch.setattr(pipeline, "run_notebook",
                        lambda nb, params, out, *args: ran.append((nb.name, params)) or out / nb.name)  # fmt: skip
    outputs = pipeline.run_pipeline("smoke", only=["02", "03"], output_dir=tmp_path)
    assert [name for name, _ in ran] == ["02_train.ipynb", "03_evaluate.ipynb"]
    assert ran[0][1]["image_size"] == 64 and outputs == [tmp_path / name for name, _ in ran]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("▶ [1/2] 02_train.ipynb started ") and "image_size=64" in out[0]
    assert out[1].startswith("✔ [1/2] 02_train.ipynb done in 0 s → ")
    assert out[3].startswith("✔ [2/2] 03_evaluate.ipynb done in ")
    assert out[4].startswith("pipeline done in ")


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
    demo = nbformat.read(tmp_path / "04_predict_interactive.ipynb", as_version=4)
    stderr = [o.get("text", "") for c in demo.cells for o in c.get("outputs", [])
              if o.get("name") == "stderr"]  # fmt: skip
    probe = re.compile(r"absl::InitializeLog|cudart_stub|cuda_platform|cpu_feature_guard")
    assert not [t for t in stderr if probe.search(t)]  # config.quiet_tensorflow() in the notebook


def test_repository_layout():
    for name in ["notebooks", "btc", "data", "models", "results", "params", "tests", ".ci/run",
                 "environment.yml", "pyproject.toml", "Makefile", "README.md"]:  # fmt: skip
        assert (PROJECT_ROOT / name).exists(), name
    for folder in ["data", "models", "results"]:
        assert (PROJECT_ROOT / folder / ".gitignore").read_text().startswith("*")
