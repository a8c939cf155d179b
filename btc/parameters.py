"""Notebook parameters as command options: `btc preprocess|train|evaluate` take their notebook's.

A stage command offers exactly the parameters its notebook's `parameters` cell declares, with the
notebook's defaults, types and comments (read without running it), overridden by a preset and
then by the command line; strings from the command line are converted to the declared type.
"""

from __future__ import annotations

import argparse
import ast
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from btc.config import NOTEBOOKS_DIR, check_choice
from btc.pipeline import load_preset, notebooks

STAGE_NOTEBOOKS = {
    "preprocess": "01_preprocess.ipynb",
    "train": "02_train.ipynb",
    "evaluate": "03_evaluate.ipynb",
}
_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int, "float": (int, float), "bool": bool, "str": str, "list": list, "dict": dict,
}  # fmt: skip
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """Read a notebook's `parameters` cell without running it: name, type, default and help.

    The cell holds annotated literals, one per line (`seed: int = 42  # seed of the split`), so
    commands can offer exactly the notebook's parameters with its defaults (`btc train --seed`).

    Args:
        notebook: Notebook path.

    Returns:
        `{name: {"type": "int", "default": 42, "help": "seed of the split"}}` in cell order.

    Raises:
        ValueError: If the notebook has no cell tagged `parameters`.
    """
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ValueError(f"{Path(notebook).name} has no cell tagged `parameters`")
    source = "".join(tagged[0]["source"])
    lines = source.splitlines()
    params = {}
    for stmt in ast.parse(source).body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        comment = lines[stmt.end_lineno - 1].partition("#")[2].strip()
        params[stmt.target.id] = {"type": ast.unparse(stmt.annotation),
                                  "default": ast.literal_eval(stmt.value),
                                  "help": comment}  # fmt: skip
    return params


def of_stage(stage: str) -> dict[str, dict[str, Any]]:
    """Return the parameters the stage's notebook declares: name → type, default and help.

    Args:
        stage: `"preprocess"`, `"train"` or `"evaluate"`.

    Returns:
        The notebook's `parameters` cell, read by `notebook_parameters`.

    Raises:
        ValueError: On an unknown stage.
    """
    check_choice("stage", stage, list(STAGE_NOTEBOOKS))
    return notebook_parameters(NOTEBOOKS_DIR / STAGE_NOTEBOOKS[stage])


def reject_unknown(what: str, given: Mapping[str, Any], allowed) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unknown {what} parameter(s) {unknown}. Allowed: {sorted(allowed)}. "
            f"Received: {', '.join(f'{k}={given[k]!r}' for k in unknown)}"
        )


def convert(name: str, kind: str, value: Any) -> Any:
    """Turn a command-line string into the parameter's declared type (other values pass)."""
    if not isinstance(value, str) or kind == "str":
        return value
    text = value.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ValueError(f"`{name}` must be a{'n' if kind == 'int' else ''} {kind}. "
                         f"Received: {name}={value!r}") from None  # fmt: skip
    if kind == "bool":
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f"`{name}` must be one of {list(_TRUE + _FALSE)}. Received: {name}={value!r}")  # fmt: skip
        return text.lower() in _TRUE
    if kind == "list":
        if text.startswith("["):
            return yaml.safe_load(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind == "dict":
        if text.startswith("{"):
            return yaml.safe_load(text)
        pairs = [part.partition("=") for part in text.split(",") if part.strip()]
        if any(not sep or not key.strip() for key, sep, _ in pairs):
            raise ValueError(f"`{name}` must be NAME=VALUE pairs (`mobilenet=224,cnn=160`) or a "
                             f"YAML mapping. Received: {name}={value!r}")  # fmt: skip
        return {key.strip(): yaml.safe_load(val) for key, _, val in pairs}
    return value


def resolve(
    stage: str, preset: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Resolve a stage's parameters: the notebook's defaults, then a preset, then overrides.

    Args:
        stage: `"preprocess"`, `"train"` or `"evaluate"`.
        preset: Preset name (`params/<name>.yaml`) or YAML path; its keys that belong to other
            notebooks are ignored, keys that no notebook declares are rejected.
        overrides: Parameter name → value; strings (from the command line) are converted to
            the type the notebook declares (`"7"` → 7, `"false"` → False, `"cnn,mobilenet"` →
            a list, `"mobilenet=224"` → a dict).

    Returns:
        A value for every parameter the stage's notebook declares, in the notebook's order.

    Raises:
        ValueError: On an unknown stage, preset or parameter name, or an unconvertible value.
        TypeError: If a value does not have the declared type (e.g. a preset's `seed: "7"`).
    """
    declared = of_stage(stage)
    values = {name: info["default"] for name, info in declared.items()}
    if preset:
        from_preset = load_preset(preset)
        every = set().union(*(notebook_parameters(nb) for nb in notebooks()))
        reject_unknown(f"preset {str(preset)!r}", from_preset, every)
        values.update({k: v for k, v in from_preset.items() if k in declared})
    overrides = dict(overrides or {})
    reject_unknown(f"`btc {stage}`", overrides, declared)
    values.update({k: convert(k, declared[k]["type"], v) for k, v in overrides.items()})
    for name, value in values.items():
        kind = declared[name]["type"]
        expected = _TYPES.get(kind, object)
        if (isinstance(value, bool) and kind != "bool") or not isinstance(value, expected):
            raise TypeError(f"`{name}` must be of type {kind}. Received: {name}={value!r}")
    return values


class Overrides(argparse.Action):
    """Collect `--name VALUE` notebook parameters into `namespace.overrides` (raw strings)."""

    def __call__(self, parser, namespace, values, option_string=None):
        overrides = dict(getattr(namespace, "overrides", None) or {})
        overrides[self.dest] = values
        namespace.overrides = overrides


def key_text(text: str) -> tuple[str, str]:
    """Split a `-p NAME=VALUE` argument; the value stays a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value


def add_stage_parser(sub, stage: str, help_text: str, func) -> argparse.ArgumentParser:
    """Add `btc <stage>` to argparse sub-parsers: paths, preset, `-p` and the notebook's options.

    Args:
        sub: The `add_subparsers()` object of the `btc` parser.
        stage: `"preprocess"`, `"train"` or `"evaluate"`.
        help_text: One-line help, also the start of the description.
        func: The command, called with the parsed namespace.

    Returns:
        The stage's parser.
    """
    notebook = STAGE_NOTEBOOKS[stage]
    p = sub.add_parser(
        stage, help=help_text, allow_abbrev=False,
        description=f"{help_text[0].upper()}{help_text[1:]}. Same parameters, defaults, configs "
        f"and artifacts as notebooks/{notebook}: the notebook's defaults, then --preset, then "
        "the options below (or -p NAME=VALUE). Lists: a,b or [a, b]; booleans: true/false. "
        "Exit code 2 on a bad parameter, 1 when the stage fails.",
    )  # fmt: skip
    p.add_argument("--preset", default=None, help="params/<name>.yaml or a YAML path (none)")
    p.add_argument("-p", "--param", type=key_text, action="append", help="NAME=VALUE")
    p.add_argument("--manifest", default=None, help="manifest CSV (data/processed/manifest.csv)")
    if stage != "preprocess":
        p.add_argument("--models-dir", default=None, help="trained models (models/)")
    p.add_argument("--results-dir", default=None, help="reports and figures (results/)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show TensorFlow's start-up messages (CUDA, oneDNN, absl)")  # fmt: skip
    add_options(p.add_argument_group(f"parameters of {notebook}"), stage)
    p.set_defaults(func=func, overrides={})
    return p


def add_options(group, stage: str) -> None:
    """Add one `--name VALUE` option per parameter of the stage's notebook to an argparse group.

    Values are kept as strings in `namespace.overrides` (`resolve` converts them); a missing
    notebook (btc installed without its notebooks) adds none.
    """
    try:
        declared = of_stage(stage)
    except FileNotFoundError:
        declared = {}
    for name, info in declared.items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, action=Overrides,
                           metavar=info["type"].upper(), default=argparse.SUPPRESS,
                           help=f"{info['help']} (default: {info['default']!r})".replace("%", "%%"))  # fmt: skip


def unknown_options_message(stage: str, extras: list[str]) -> str:
    """The Keras-style message for `--name VALUE` options the stage's notebook does not declare."""
    given: dict[str, Any] = {}
    for i, token in enumerate(extras):
        if token.startswith("--"):
            name, _, value = token[2:].partition("=")
            follows = i + 1 < len(extras) and not extras[i + 1].startswith("--")
            given[name.replace("-", "_")] = value or (extras[i + 1] if follows else True)
    if not given:
        return f"unrecognized arguments: {' '.join(extras)}"
    try:
        reject_unknown(f"`btc {stage}`", given, of_stage(stage))
    except ValueError as exc:
        return str(exc)
    return f"unrecognized arguments: {' '.join(extras)}"
