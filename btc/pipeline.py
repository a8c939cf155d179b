"""Run the notebooks in order with papermill, using a preset from `params/`.

A preset is one flat YAML file of notebook parameters. Each notebook receives the keys its
`parameters` cell declares; a key that no notebook declares is rejected (papermill would only
warn), so a typo in a preset cannot silently fall back to a default.

While a notebook runs, what it prints (Keras' per-epoch lines, progress messages, warnings) is
streamed to the terminal line by line; TensorFlow's start-up noise (CUDA, oneDNN and absl lines)
is left out unless `verbose=True`. Each stage gets a line when it starts and when it ends, with
its time.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from btc.config import NOTEBOOKS_DIR, PARAMS_DIR, RESULTS_DIR

log = logging.getLogger(__name__)
KERNEL_NAME = "btc"


# TensorFlow's start-up lines: absl records (`I0000 00:00:1795.. 123 port.cc:153] oneDNN ..`,
# `2025-01-01 10:00:00.0: I tensorflow/..cc:12] ..`), absl's pre-init notice, Python absl logging
# the continuation line of the CPU-instructions notice, and asyncio's note on a task that ipykernel
# leaves pending when its kernel shuts down (harmless).
TF_NOISE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|(?:INFO|WARNING):absl:"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|Task was destroyed but it is pending!|task: <Task pending name='Task-\d+' coro=<Kernel\.)"
)


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the partial output notebook is kept."""


class LineFilter:
    """A writable stream that forwards whole lines to `target`, dropping TensorFlow's noise.

    papermill hands over a kernel's output in arbitrary chunks (and flushes after each); lines
    are reassembled first, so a noise line split across chunks is still recognised. `close()`
    forwards an unfinished last line.

    Args:
        target: Where kept lines go (e.g. `sys.stdout`).
        drop: Pattern of lines to leave out, or `None` to keep everything.
        prefix: Text put before every kept line (e.g. `"  "` to indent under a stage line).
    """

    def __init__(self, target, drop: re.Pattern | None = TF_NOISE, prefix: str = ""):
        self.target, self.drop, self.prefix, self._partial = target, drop, prefix, ""
        self.last_line = time.monotonic()  # when a line was last forwarded

    def write(self, text: str) -> int:
        """Buffer `text`, forward every finished line that is not noise; return `len(text)`."""
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if self.drop is None or not self.drop.match(line):
                self.target.write(f"{self.prefix}{line}\n")
                self.last_line = time.monotonic()
        return len(text)

    def flush(self) -> None:
        """Flush the target (an unfinished line waits for its end or `close()`)."""
        self.target.flush()

    def close(self) -> None:
        """Forward the unfinished last line, if any, and flush the target."""
        self.write("\n" if self._partial else "")
        self.flush()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _heartbeat(name: str, streams: Sequence[LineFilter], every: float, done: threading.Event):
    """Print `… <name> still running (T)` after every `every` seconds without a printed line."""
    start = time.monotonic()
    while not done.wait(every / 4):
        now = time.monotonic()
        if now - max(s.last_line for s in streams) >= every:
            print(f"  … {name} still running ({_duration(now - start)})", flush=True)
            for s in streams:
                s.last_line = now


def filter_stderr(drop: re.Pattern = TF_NOISE) -> None:
    """Route file descriptor 2 through a thread that leaves out lines matching `drop`.

    TensorFlow writes its start-up lines (CUDA, oneDNN, absl) from C++ straight to fd 2, before
    `TF_CPP_MIN_LOG_LEVEL` takes effect, so only a filter on the descriptor keeps them out.
    """
    read_end, write_end = os.pipe()
    original = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb", 0) as src, os.fdopen(os.dup(original), "wb", 0) as dst:
            partial = b""
            while chunk := src.read(65536):
                *lines, partial = (partial + chunk).split(b"\n")
                dst.write(b"".join(line + b"\n" for line in lines
                                   if not drop.match(line.decode(errors="replace"))))  # fmt: skip
            dst.write(partial)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the pump drains and stops
        thread.join(timeout=2)

    atexit.register(restore)


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
    stream: bool = True,
    verbose: bool = False,
    heartbeat: float = 60.0,
) -> Path:
    """Execute one notebook with papermill into `output_dir/<name>.ipynb`.

    Args:
        notebook: Notebook path.
        parameters: Values injected after its `parameters` cell.
        output_dir: Folder of the executed copy (the run record).
        kernel: Jupyter kernel name.
        stream: Print what the notebook prints (stdout and stderr) while it runs, and a
            "still running" line after every `heartbeat` seconds of silence.
        verbose: Also print TensorFlow's start-up noise (CUDA, oneDNN, absl lines) and the
            kernel's own warnings.
        heartbeat: Seconds of silence before a "still running" line.

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
    drop = None if verbose else TF_NOISE
    streams = [LineFilter(sys.stdout, drop, "  "), LineFilter(sys.stderr, drop, "  ")] if stream else []  # fmt: skip
    done = threading.Event()
    if streams:
        args = (notebook.name, streams, heartbeat, done)
        threading.Thread(target=_heartbeat, args=args, daemon=True).start()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=dict(parameters),
            kernel_name=kernel,
            cwd=str(notebook.parent),
            progress_bar=False,
            log_output=False,
            stdout_file=streams[0] if streams else None,
            stderr_file=streams[1] if streams else None,
            # the kernel app's own log (start-up TCP warning, "KeyboardInterrupt caught" at shutdown)
            extra_arguments=[] if verbose else ["--IPKernelApp.log_level=CRITICAL"],
        )
    except PapermillExecutionError as exc:
        trace = "\n".join(exc.traceback[-8:]) if exc.traceback else exc.evalue
        raise PipelineError(
            f"{notebook.name} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}).\n"
            f"Partial output kept at {output}.\n{trace}"
        ) from None
    finally:
        done.set()
        for s in streams:
            s.close()
    return output


def run_pipeline(
    preset: str | Path = "quick",
    only: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    output_dir: str | Path = RESULTS_DIR,
    kernel: str = KERNEL_NAME,
    stream: bool = True,
    verbose: bool = False,
) -> list[Path]:
    """Run every notebook in `notebooks/` in order (or those named in `only`).

    Prints a line when each stage starts (with its parameters) and ends (with its time), and,
    with `stream`, what the notebooks print while they run.

    Args:
        preset: Preset name or YAML path.
        only: Notebook name prefixes to run (e.g. `["01", "02"]`); empty runs all.
        overrides: Parameters that win over the preset.
        output_dir: Where executed notebooks go.
        kernel: Jupyter kernel name.
        stream: Print the notebooks' output (Keras' per-epoch lines, prints, warnings).
        verbose: Also print TensorFlow's start-up noise (CUDA, oneDNN, absl lines).

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
    outputs, first = [], time.perf_counter()
    for i, (nb, nb_params) in enumerate(steps, 1):
        start = time.perf_counter()
        shown = ", ".join(f"{k}={v!r}" for k, v in nb_params.items()) or "notebook defaults"
        print(f"▶ [{i}/{len(steps)}] {nb.name} started {time.strftime('%H:%M:%S')} ({shown})", flush=True)  # fmt: skip
        try:
            outputs.append(run_notebook(nb, nb_params, output_dir, kernel, stream, verbose))
        except PipelineError:
            print(f"✘ [{i}/{len(steps)}] {nb.name} failed after {_duration(time.perf_counter() - start)}", flush=True)  # fmt: skip
            raise
        print(f"✔ [{i}/{len(steps)}] {nb.name} done in {_duration(time.perf_counter() - start)} → {outputs[-1]}", flush=True)  # fmt: skip
    print(f"pipeline done in {_duration(time.perf_counter() - first)}", flush=True)
    return outputs
