"""Command line: every stage is a command, plus the pipeline, export and DICOM tools.

`btc preprocess`, `btc train` and `btc evaluate` take exactly the parameters of their notebooks'
`parameters` cells (`--seed 7`, or `-p seed=7`), with the notebook's defaults, overridden by a
preset (`--preset quick`, `params/quick.yaml`) and then by the command line. They build the same
validated configs, call the same btc functions and write the same artifacts as the notebooks
(figures excepted for 01: those are the notebook's). Run `btc --help` or `btc COMMAND --help`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def _key_value(text: str) -> tuple[str, object]:
    from btc.parameters import key_text

    key, value = key_text(text)
    return key, yaml.safe_load(value)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from btc import pipeline

    try:
        pipeline.run_pipeline(args.preset, args.only, dict(args.param or []), args.output_dir,
                              verbose=args.verbose)  # fmt: skip
    except (pipeline.PipelineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _stage_params(args: argparse.Namespace) -> dict[str, Any]:
    from btc import parameters

    overrides = {**dict(args.param or []), **getattr(args, "overrides", {})}
    return parameters.resolve(args.command, args.preset, overrides)


def _fail(exc: BaseException | str, code: int) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return code


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from btc import config, data, external

    try:
        cfg = config.PreprocessConfig.from_params(_stage_params(args))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        return _fail(exc, 2)
    manifest_path = Path(args.manifest or config.MANIFEST_PATH)
    try:
        result = data.preprocess(cfg, manifest_path)
        ext = external.preprocess_external(cfg, result["index"], result["manifest_path"])
    except (ValueError, FileNotFoundError) as exc:
        return _fail(exc, 1)
    summary = {
        "params": cfg.to_dict(),
        "report": result["report"],
        "seconds": result["seconds"],
        "counts": result["audit"]["counts"].to_dict(),
        "external": ext,
        "shortcut": result["shortcut"].to_dict("records"),
    }
    out = Path(args.results_dir or config.RESULTS_DIR) / "01_preprocess" / "summary.json"
    config.write_json_atomic(out, summary)
    report = result["report"]
    print(result["manifest"].groupby(["class", "split"]).size().unstack().to_string())
    print(f"{len(result['manifest'])} images in the manifest; "
          f"{report['groups_crossing_splits']} duplicate groups cross splits; "
          f"{report['exact_copies_removed']} byte-identical copies removed; "
          f"{report['label_conflict_images']} images in label-conflicting groups dropped")  # fmt: skip
    print(f"external set: {ext['path'] if ext else 'none (no external_dir)'}")
    print(f"manifest: {result['manifest_path']}\nsummary: {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from btc import config, models, reports, train

    try:
        p = _stage_params(args)
        configs = train.configs_for(p.pop("models"), **p)  # epochs_cnn, image_sizes, ... by name
    except (ValueError, TypeError, FileNotFoundError) as exc:
        return _fail(exc, 2)
    manifest = Path(args.manifest or config.MANIFEST_PATH)
    models_dir = Path(args.models_dir or config.MODELS_DIR)
    results_dir = Path(args.results_dir or config.RESULTS_DIR)
    try:
        trained = train.train_all(configs, manifest, models_dir, results_dir, verbose=2)
    except (ValueError, FileNotFoundError, models.WeightsUnavailableError) as exc:
        return _fail(exc, 1)
    summary = reports.training_summary(trained)
    out = results_dir / "02_train" / "summary.json"
    config.write_json_atomic(out, summary.reset_index().to_dict("records"))
    print(summary.to_string())
    print(f"models: {', '.join(str(models_dir / m['name']) for m in trained)}\nsummary: {out}")
    return 0


def _pct(value, ci=None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from btc import config

    try:
        p = _stage_params(args)
        for name in ("n_bootstrap", "sanity_images", "saliency_images_per_class"):
            config.check_range(name, p[name], 1, types=int)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        return _fail(exc, 2)
    from btc import evaluate, oodeval, saliency

    manifest = Path(args.manifest or config.MANIFEST_PATH)
    models_dir = Path(args.models_dir or config.MODELS_DIR)
    results_dir = Path(args.results_dir or config.RESULTS_DIR)
    paths = {"manifest_path": manifest, "models_dir": models_dir, "results_dir": results_dir}
    names, n, seed = p["models"] or None, p["n_bootstrap"], p["seed"]
    try:
        report = evaluate.evaluate(names, n_bootstrap=n, tta=p["tta"], use_ensemble=p["use_ensemble"],
                                   fit_ensemble=p["fit_ensemble"], allow_leaky=p["allow_leaky"],
                                   seed=seed, calibration_method=p["calibration"], **paths)  # fmt: skip
        ext = (names, manifest.with_name("external.csv"), models_dir, results_dir)
        cam = saliency.choose_cam_layers(*ext)["layers"]
        sal = saliency.saliency_report(names, p["saliency_methods"], p["saliency_images_per_class"],
                                       p["sanity_check"], p["sanity_images"], n_bootstrap=n,
                                       seed=seed, cam_layers=cam, **paths)  # fmt: skip
        ext_sal = saliency.external_saliency(names, p["saliency_methods"], *ext[1:], n, seed,
                                             sanity=sal, cam_layers=cam)  # fmt: skip
        ood = oodeval.fit_and_report(names, ood_dir=p["ood_dir"] or None,
                                     accept_rate=p["ood_accept_rate"], target_error=p["target_error"],
                                     risk_bound=p["risk_bound"], n_bootstrap=n, seed=seed, **paths)  # fmt: skip
    except (ValueError, FileNotFoundError, evaluate.LeakageError) as exc:
        return _fail(exc, 1)
    leaky = "LEAKY " if report["leakage"]["leaky"] else ""
    print(
        f"{leaky}test split: {report['split_sizes'].get('test', 0)} images; numbers in %, 95 % CI"
    )
    for row in report["table"]:
        print(f"  {row['model']}: accuracy {_pct(row['accuracy'], row['accuracy_ci'])}, "
              f"macro-F1 {_pct(row['f1_macro'], row['f1_macro_ci'])}, external tumour "
              f"sensitivity {_pct(row['external_sensitivity'], row['external_sensitivity_ci'])}")  # fmt: skip
    print(f"saliency method per model (sanity check, then pointing): "
          f"{ext_sal['recommended'] or '–'}; CAM layer: {cam}")  # fmt: skip
    methods = {name: entry.get("method") for name, entry in ood["models"].items()}
    print(f"OOD score per model: {methods}")
    print(f"metrics: {results_dir / 'metrics.json'}\nreports: {results_dir / '03_evaluate'}\n"
          f"model cards: {models_dir}/<name>/MODEL_CARD.md")  # fmt: skip
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv
    import json

    from btc import predict

    if args.saliency and args.runtime != "keras":
        print(f"error: --saliency with --runtime {args.runtime}: {predict.SALIENCY_NEEDS_KERAS} "
              "(--runtime keras)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        models = predict.load_models(None if args.model == predict.ENSEMBLE else [args.model],
                                     runtime=args.runtime, quantize=args.quantize)  # fmt: skip
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    records = predict.predict_files(args.images, args.model, models, keep_image=bool(args.saliency))
    if args.saliency:
        _write_saliency(records, models, args)
    for rec in records:
        if not rec["ok"]:
            print(f"warning: {rec['error']}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(records, indent=2))
    else:
        from btc.config import CLASS_NAMES

        fields = ["file", "ok", "error", "model", "class", "confidence", "runner_up"]
        status = ["status", "ood_kind", "ood_score", "ood_threshold", "ood_far", "ood_reason",
                  "confidence_threshold", "status_note"]  # fmt: skip
        series = ["input", "series", "kind", "tumour_probability", "key_slice", "agreeing_slices"]
        writer = csv.DictWriter(sys.stdout, fields + [f"p_{c}" for c in CLASS_NAMES] + status + series,
                                extrasaction="ignore")  # fmt: skip
        writer.writeheader()
        for rec in records:
            probs = {f"p_{c}": p for c, p in rec.get("probabilities", {}).items()}
            limits = rec.get("thresholds") or {}
            writer.writerow({**rec, **probs, "ood_threshold": limits.get("ood"),
                             "ood_far": limits.get("ood_far"),
                             "confidence_threshold": limits.get("confidence")})  # fmt: skip
    return 0 if any(r["ok"] for r in records) else 1


def _write_saliency(records: list[dict], models: dict, args: argparse.Namespace) -> None:
    from pathlib import Path

    from btc import plots, predict

    out = Path(args.saliency)
    for rec in records:
        if not rec["ok"] or "image" not in rec:  # failed, or a series summary
            continue
        image = rec.pop("image")
        if rec.get("status") == "out_of_distribution":  # not a brain MRI: no map to explain
            rec["saliency_png"] = None
            continue
        saliency = predict.saliency_for({**rec, "image": image}, models, args.method)
        path = out / f"{predict.record_stem(rec)}_{args.method}.png"
        plots.saliency_overlay(image, {args.method: saliency},
                               f"{rec['class']} ({rec['confidence']:.0%} calibrated) — {args.model}",
                               path=path)  # fmt: skip
        rec["saliency_png"] = str(path)
        plots.plt.close("all")


def _cmd_deidentify(args: argparse.Namespace) -> int:
    from btc import deidentify

    try:
        report = deidentify.deidentify(args.input, args.output)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path, reason in report["skipped"].items():
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    print(f"{len(report['written'])} de-identified file(s) written to {args.output}")
    return 0 if report["written"] else 1


def _cmd_export(args: argparse.Namespace) -> int:
    from btc import export
    from btc.config import MANIFEST_PATH

    for quantize in args.quantize:
        try:
            path = export.export_tflite(args.model, quantize, args.format,
                                        manifest=args.manifest or MANIFEST_PATH,
                                        representative_images=args.representative_images)  # fmt: skip
        except (FileNotFoundError, ValueError, export.ConversionError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        meta = export.load_sidecar(args.model, quantize, path.parent.parent)
        dtypes = f"{meta['input']['dtype']} in, {meta['output']['dtype']} out"
        floats = f"; float ops: {', '.join(meta['float_ops'])}" if meta["float_ops"] else ""
        print(f"{path} ({meta['tflite_bytes'] / 1e6:.2f} MB, {dtypes}, "
              f"{sum(meta['ops'].values())} ops{floats})")  # fmt: skip
    return 0


def _cmd_fetch_data(args: argparse.Namespace) -> int:
    from btc import fetch

    try:
        path = fetch.fetch_dataset(args.dest or fetch.DATA_DIR)
    except fetch.DatasetUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"dataset ready at {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the `btc` argument parser with all sub-commands."""
    parser = argparse.ArgumentParser(
        prog="btc",
        description="Brain tumour MRI classification — research decision support, "
        "not a diagnostic device.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pipeline", help="run the notebooks in order with papermill")
    p.add_argument("--preset", default="quick", help="params/<name>.yaml or a path (quick)")
    p.add_argument("--only", nargs="*", default=(), help="notebook prefixes to run, e.g. 01 02")
    p.add_argument("-p", "--param", type=_key_value, action="append", help="NAME=VALUE override")
    p.add_argument("--output-dir", default=None, help="executed notebooks (results/)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show TensorFlow's start-up messages (CUDA, oneDNN, absl)")  # fmt: skip
    p.set_defaults(func=_cmd_pipeline)

    from btc import parameters

    stage_help = {
        "preprocess": "index, de-duplicate and split the data; write the manifest (stage 01)",
        "train": "train the models on the manifest; write models/<name>/ (stage 02)",
        "evaluate": "metrics, calibration, ensemble, saliency and OOD reports (stage 03)",
    }
    run = {"preprocess": _cmd_preprocess, "train": _cmd_train, "evaluate": _cmd_evaluate}
    for stage, help_text in stage_help.items():
        parameters.add_stage_parser(sub, stage, help_text, run[stage])

    p = sub.add_parser(
        "predict",
        help="classify scans with trained models (one JSON/CSV record per file)",
        description="Classify JPEG/PNG scans and MR DICOM (detected by content). One record per "
        "file, per DICOM frame and per slice of a DICOM folder, plus a kind=series record per "
        "series; a bad file gets ok=false and an error. Every record has a status: predicted, "
        "uncertain (refer to a radiologist) or out_of_distribution (not analysed; the class is "
        "flagged as meaningless; ood_kind: not_brain_mri, or unfamiliar when it may be a brain MRI "
        "from elsewhere), with ood_score and the thresholds. Exit code 0 when at least one file was "
        "predicted, 1 when none could be, 2 when no model is available. Research decision support, not a diagnosis.",
    )
    p.add_argument("images", nargs="+", help="JPEG, PNG or MR DICOM files, or DICOM folders")
    p.add_argument("--model", default="ensemble", help="a trained model's name or 'ensemble'")
    p.add_argument("--format", choices=["json", "csv"], default="json", help="output format")
    p.add_argument("--saliency", metavar="DIR", help="also write saliency overlays to DIR")
    p.add_argument("--method", default="gradcam", help="saliency method (gradcam, ...)")
    p.add_argument("--runtime", choices=["keras", "litert"], default="keras",
                   help="keras (model.keras) or litert (an exported .tflite; no saliency)")  # fmt: skip
    p.add_argument("--quantize", choices=["none", "float16", "int8"], default="none",
                   help="with --runtime litert: which exported variant (none)")  # fmt: skip
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "export",
        help="export a trained model to LiteRT (.tflite) for edge devices",
        description="Convert models/NAME/model.keras with TensorFlow's converter to "
        "models/NAME/model[.float16|.int8].tflite, each with a JSON sidecar (class order, input "
        "size, normalisation, temperature, quantisation). int8 is full-integer quantisation "
        "(int8 input and output) calibrated on train-split images of the manifest. Run the files "
        "with `btc predict --runtime litert --quantize ...` (needs `pip install 'btc[litert]'`).",
    )
    p.add_argument("--model", required=True, help="a trained model's name")
    p.add_argument("--format", choices=["tflite"], default="tflite", help="export format")
    p.add_argument("--quantize", nargs="+", choices=["none", "float16", "int8"],
                   default=["none"], help="one or more variants (none)")  # fmt: skip
    p.add_argument("--manifest", default=None, help="int8 calibration manifest (data/processed)")
    p.add_argument("--representative-images", type=int, default=300,
                   help="train images that calibrate int8 (300)")  # fmt: skip
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "deidentify",
        help="write de-identified copies of DICOM files (PS3.15 Basic Profile)",
        description="Copy a DICOM file or folder to OUT with the DICOM PS3.15 Basic Application "
        "Level Confidentiality Profile applied: identifying attributes removed, blanked or "
        "replaced, private tags removed, UIDs replaced consistently, PatientIdentityRemoved=YES. "
        "IN is never modified; non-DICOM files and files with burned-in annotation are skipped.",
    )
    p.add_argument("input", metavar="IN", help="a DICOM file or a folder")
    p.add_argument("output", metavar="OUT", help="output file or folder (outside IN)")
    p.set_defaults(func=_cmd_deidentify)

    p = sub.add_parser("fetch-data", help="download and verify the Kaggle dataset (kagglehub)")
    p.add_argument("--dest", default=None, help="target folder (data/raw/brain-tumor-mri)")
    p.set_defaults(func=_cmd_fetch_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `btc` command; returns the process exit code.

    Args:
        argv: Arguments without the program name; `None` reads `sys.argv` (the `btc` command,
            which also keeps TensorFlow's start-up lines off stderr unless `--verbose`).

    Returns:
        0 on success; 2 on a bad argument or parameter; 1 (or the command's code) on failure.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from btc import parameters

    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        if args.command not in parameters.STAGE_NOTEBOOKS:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return _fail(parameters.unknown_options_message(args.command, extras), 2)
    if argv is None and not getattr(args, "verbose", False):
        from btc.pipeline import filter_stderr

        filter_stderr()
    if getattr(args, "output_dir", "unset") is None:
        from btc.config import RESULTS_DIR

        args.output_dir = RESULTS_DIR
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
