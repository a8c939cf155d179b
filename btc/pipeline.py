"""Run the notebooks in order with papermill, using a preset from `params/`.

A preset is one flat YAML file of notebook parameters. Each notebook receives the keys its
`parameters` cell declares; a key that no notebook declares is rejected (papermill would only
warn), so a typo in a preset cannot silently fall back to a default.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from btc.config import NOTEBOOKS_DIR, PARAMS_DIR, RESULTS_DIR

log = logging.getLogger(__name__)
KERNEL_NAME = "btc"


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the partial output notebook is kept."""


def notebooks(folder: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """Return the pipeline notebooks (`NN_verb.ipynb`) of `folder` in order."""
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))


def load_preset(preset: str | Path) -> dict[str, Any]:
    """Load a preset by name (`params/<name>.yaml`) or path.

    Args:
        preset: Preset name such as `"quick"` or `"full"`, or a YAML file path.

    Returns:
        The parameter mapping (empty for an empty file).

    Raises:
        ValueError: If no such preset exists or the file is not a mapping.
    """
    path = Path(preset)
    if not path.suffix:
        path = PARAMS_DIR / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))
        raise ValueError(
            f"`preset` must be one of {names} or a YAML path. Received: preset={preset!r}"
        )
    params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(params, dict):
        raise ValueError(f"Preset {str(path)!r} must be a mapping of parameter names to values")
    return params


def declared_parameters(notebook: str | Path) -> dict[str, Any]:
    """Return the parameters a notebook declares in its `parameters` cell (name → info)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def plan(
    params: Mapping[str, Any], notebook_paths: Sequence[Path]
) -> list[tuple[Path, dict[str, Any]]]:
    """Split preset parameters among notebooks, rejecting names no notebook declares.

    Args:
        params: Flat preset mapping.
        notebook_paths: Notebooks to run, in order.

    Returns:
        `(notebook, parameters)` pairs.

    Raises:
        ValueError: On a parameter that none of the notebooks declares.
    """
    declared = {nb: declared_parameters(nb) for nb in notebook_paths}
    known = set().union(*declared.values()) if declared else set()
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"Unknown pipeline parameter(s) {unknown}; the notebooks declare {sorted(known)}. "
            f"Received: {', '.join(f'{k}={params[k]!r}' for k in unknown)}"
        )
    return [(nb, {k: v for k, v in params.items() if k in declared[nb]}) for nb in notebook_paths]


def check_kernel(kernel: str) -> None:
    """Raise a clear error when the Jupyter kernel the notebooks use is not installed."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    if kernel not in specs:
        raise PipelineError(
            f"Jupyter kernel {kernel!r} is not installed (found {sorted(specs)}). "
            "Run `make setup`, which registers it."
        )


def run_notebook(
    notebook: str | Path,
    parameters: Mapping[str, Any],
    output_dir: str | Path = RESULTS_DIR,
    kernel: str = KERNEL_NAME,
) -> Path:
    """Execute one notebook with papermill into `output_dir/<name>.ipynb`.

    Args:
        notebook: Notebook path.
        parameters: Values injected after its `parameters` cell.
        output_dir: Folder of the executed copy (the run record).
        kernel: Jupyter kernel name.

    Returns:
        Path of the executed notebook.

    Raises:
        PipelineError: If a cell fails; the message names the cell and the error, and the
            partial output notebook is kept.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook, output_dir = Path(notebook), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / notebook.name
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=dict(parameters),
            kernel_name=kernel,
            cwd=str(notebook.parent),
            progress_bar=False,
            log_output=False,
        )
    except PapermillExecutionError as exc:
        trace = "\n".join(exc.traceback[-8:]) if exc.traceback else exc.evalue
        raise PipelineError(
            f"{notebook.name} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}).\n"
            f"Partial output kept at {output}.\n{trace}"
        ) from None
    return output


def run_pipeline(
    preset: str | Path = "quick",
    only: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    output_dir: str | Path = RESULTS_DIR,
    kernel: str = KERNEL_NAME,
) -> list[Path]:
    """Run every notebook in `notebooks/` in order (or those named in `only`).

    Args:
        preset: Preset name or YAML path.
        only: Notebook name prefixes to run (e.g. `["01", "02"]`); empty runs all.
        overrides: Parameters that win over the preset.
        output_dir: Where executed notebooks go.
        kernel: Jupyter kernel name.

    Returns:
        Paths of the executed notebooks.

    Raises:
        PipelineError: On the first failing notebook (the run stops there).
        ValueError: On an unknown preset or parameter.
    """
    params = {**load_preset(preset), **(overrides or {})}
    steps = plan(params, notebooks())  # every notebook: a preset key for a skipped one is fine
    steps = [(nb, p) for nb, p in steps if not only or nb.name.startswith(tuple(only))]
    if not steps:
        raise ValueError(f"`only` matches no notebook in {NOTEBOOKS_DIR}. Received: only={only!r}")
    check_kernel(kernel)
    if any(nb.name.startswith("01") for nb, _ in steps) and not params.get("data_dir"):
        from btc import fetch

        try:
            fetch.ensure_dataset()
        except fetch.DatasetUnavailableError as exc:
            raise PipelineError(str(exc)) from None
    outputs = []
    for nb, nb_params in steps:
        start = time.perf_counter()
        print(f"▶ {nb.name} {nb_params}", flush=True)
        outputs.append(run_notebook(nb, nb_params, output_dir, kernel))
        print(f"✔ {nb.name} in {time.perf_counter() - start:.0f} s → {outputs[-1]}", flush=True)
    return outputs
