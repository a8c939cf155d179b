"""Tests of btc.parameters: a notebook's parameters cell as the options of its stage command."""

from __future__ import annotations

import pytest

from btc import cli, config, parameters, pipeline


@pytest.mark.parametrize("stage", sorted(parameters.STAGE_NOTEBOOKS))
def test_stage_commands_offer_exactly_their_notebooks_parameters(stage, capsys):
    notebook = config.NOTEBOOKS_DIR / parameters.STAGE_NOTEBOOKS[stage]
    declared = parameters.notebook_parameters(notebook)
    assert set(declared) == set(pipeline.declared_parameters(notebook))  # as papermill reads them
    assert parameters.resolve(stage) == {k: v["default"] for k, v in declared.items()}
    with pytest.raises(SystemExit) as done:
        cli.main([stage, "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    for name in declared:
        assert f"--{name.replace('_', '-')} " in shown, name


def test_parameters_come_from_notebook_then_preset_then_command_line():
    params = parameters.resolve("train", "smoke", {"seed": "7", "models": "cnn", "external": "no"})
    assert params["image_size"] == 64 and params["batch_size"] == 16  # smoke preset
    assert params["recipe"] == "one_phase" and params["patience"] == 3  # notebook defaults
    assert (params["seed"], params["models"], params["external"]) == (7, ["cnn"], False)
    assert parameters.resolve("evaluate", overrides={"models": "[cnn, mobilenet]"})["models"] == [
        "cnn",
        "mobilenet",
    ]
    assert "models" not in parameters.resolve("preprocess", "smoke")  # 02's key, not 01's


def test_a_dict_parameter_takes_pairs_or_yaml_from_the_command_line():
    for text in ("mobilenet=224, cnn=160", "{mobilenet: 224, cnn: 160}"):
        sizes = parameters.resolve("train", overrides={"image_sizes": text})["image_sizes"]
        assert sizes == {"mobilenet": 224, "cnn": 160}
    with pytest.raises(ValueError, match=r"`image_sizes` must be NAME=VALUE pairs .*"
                       r"Received: image_sizes='mobilenet:224'"):  # fmt: skip
        parameters.resolve("train", overrides={"image_sizes": "mobilenet:224"})


def test_notebook_parameters_read_the_cell_with_types_defaults_and_help():
    params = parameters.notebook_parameters(config.NOTEBOOKS_DIR / "02_train.ipynb")
    assert params["image_size"]["type"] == "int" and params["image_size"]["default"] == 128
    assert params["image_sizes"]["type"] == "dict" and params["image_sizes"]["default"] == {}
    assert params["models"]["type"] == "list" and params["external"]["default"] is True
    for nb in pipeline.notebooks():
        assert list(parameters.notebook_parameters(nb)) == list(pipeline.declared_parameters(nb))
