"""DICOM de-identification: PS3.15 Basic Application Level Confidentiality Profile copies.

`btc deidentify IN OUT` writes de-identified copies of a DICOM file or folder with
dicom-anonymizer's PS3.15 Table E.1-1 actions; the input is never modified.
"""

from __future__ import annotations

from pathlib import Path

from btc import config, dicom

DEID_TABLE = "dicomfields_2026c"  # dicom-anonymizer's copy of PS3.15 Table E.1-1 (2026c)
DEID_METHOD = "DICOM PS3.15 Basic Profile (btc deidentify, dicom-anonymizer)"


def deidentify_dataset(ds) -> None:
    """De-identify a pydicom dataset in place (PS3.15 Basic Profile, private tags removed).

    Applies dicom-anonymizer's PS3.15 Table E.1-1 actions (remove, blank, dummy, consistent
    UID replacement) at every sequence depth, then records PatientIdentityRemoved=YES,
    DeidentificationMethod and the code 113100 (Basic Application Confidentiality Profile).
    """
    import functools

    from dicomanonymizer import simpledicomanonymizer as anon
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    rules = functools.partial(anon.initialize_actions, DEID_TABLE)

    def clean(dataset) -> None:
        anon.anonymize_dataset(dataset, delete_private_tags=True, base_rules_gen=rules)
        for element in list(dataset):
            if element.VR == "SQ":
                for item in element.value:
                    clean(item)

    clean(ds)
    if "SOPInstanceUID" in ds and hasattr(ds, "file_meta"):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = DicomSequence([code])


def deidentify(src: str | Path, dst: str | Path) -> dict:
    """Write de-identified copies of a DICOM file or folder; the input is never modified.

    UIDs are replaced consistently within one call, so a de-identified series stays a series.
    Files are written atomically; a folder keeps its relative layout (file names are kept: do
    not name files after patients).

    Args:
        src: A DICOM file or a folder (searched recursively).
        dst: Output file or folder (for a file `src`, an existing folder receives `src`'s name).

    Returns:
        `{"written": [paths], "skipped": {path: reason}}`.

    Raises:
        ValueError: If `src` does not exist, or `dst` is `src` or lies inside it (or vice versa).
    """
    from dicomanonymizer import simpledicomanonymizer as anon

    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.exists():
        raise ValueError(f"`src` must be an existing DICOM file or folder. Received: src={str(src)!r}")  # fmt: skip
    if src.is_file():
        pairs = [(src, dst / src.name if dst.is_dir() else dst)]
    else:
        pairs = [(p, dst / p.relative_to(src)) for p in sorted(src.rglob("*")) if p.is_file()]
    if dst == src or (src.is_dir() and src in dst.parents) or any(o == p for p, o in pairs):
        raise ValueError(f"`dst` must lie outside `src` so the input is never modified. Received: dst={str(dst)!r}")  # fmt: skip
    anon.dictionary.clear()  # its UID map is module state: one consistent map per call
    written, skipped = [], {}
    for path, out in pairs:
        try:
            ds = dicom.load_dataset(path, path.name)
        except dicom.DicomError as exc:
            skipped[str(path)] = str(exc).removeprefix(f"{path.name}: ")
            continue
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            skipped[str(path)] = ("BurnedInAnnotation=YES: text in the pixels may identify the "
                                  "patient and pixel cleaning is not implemented")  # fmt: skip
            continue
        deidentify_dataset(ds)
        with config.atomic_path(out) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        written.append(str(out))
    anon.dictionary.clear()
    return {"written": written, "skipped": skipped}
