"""Command line: `btc pipeline`, `btc preprocess`.

Run `btc --help` or `btc COMMAND --help` for every option.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import yaml


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from btc import pipeline

    try:
        pipeline.run_pipeline(args.preset, args.only, dict(args.param or []), args.output_dir)
    except (pipeline.PipelineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from btc import config, data, external

    try:
        cfg = config.PreprocessConfig.from_params(dict(args.param or []))
        result = data.preprocess(cfg)
        ext = external.preprocess_external(cfg, result["index"], result["manifest_path"])
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result["audit"]["counts"].to_string())
    print(result["duplicates"].to_string())
    report = {k: v for k, v in result["report"].items() if k != "split_sizes"}
    print(yaml.safe_dump(report, sort_keys=False))
    print(f"manifest written to {result['manifest_path']}")
    print(f"external set: {ext if ext else 'none (no external_dir)'}")
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
        status = ["status", "ood_score", "ood_threshold", "confidence_threshold", "status_note"]
        series = ["input", "series", "kind", "tumour_probability", "key_slice", "agreeing_slices"]
        writer = csv.DictWriter(sys.stdout, fields + [f"p_{c}" for c in CLASS_NAMES] + status + series,
                                extrasaction="ignore")  # fmt: skip
        writer.writeheader()
        for rec in records:
            probs = {f"p_{c}": p for c, p in rec.get("probabilities", {}).items()}
            limits = rec.get("thresholds") or {}
            writer.writerow({**rec, **probs, "ood_threshold": limits.get("ood"),
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
    from btc import dicom

    try:
        report = dicom.deidentify(args.input, args.output)
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
    p.set_defaults(func=_cmd_pipeline)

    p = sub.add_parser("preprocess", help="index, de-duplicate and split the data (stage 01)")
    p.add_argument("-p", "--param", type=_key_value, action="append", help="NAME=VALUE")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser(
        "predict",
        help="classify scans with trained models (one JSON/CSV record per file)",
        description="Classify JPEG/PNG scans and MR DICOM (detected by content). One record per "
        "file, per DICOM frame and per slice of a DICOM folder, plus a kind=series record per "
        "series; a bad file gets ok=false and an error. Every record has a status: predicted, "
        "uncertain (refer to a radiologist) or out_of_distribution (not a brain MRI slice; the "
        "class is flagged as meaningless), with ood_score and the thresholds. Exit code 0 when at least one file was "
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
    """Entry point of the `btc` command; returns the process exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if getattr(args, "output_dir", "unset") is None:
        from btc.config import RESULTS_DIR

        args.output_dir = RESULTS_DIR
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
