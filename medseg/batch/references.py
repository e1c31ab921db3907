"""A batch's predictions against reference RT-STRUCTs (``medseg batch --references DIR``).

Hospitals that validate a model before clinical use run it over studies that already have
clinical contours. The references are RT Structure Sets anywhere under a folder (which may be
the batch's input folder itself, where clinical RT-STRUCTs sit beside their CT); each is
matched to a case by the image series it says it was drawn on (its
ReferencedFrameOfReferenceSequence), which is the series the batch segmented. Matching by
UID, not by folder or file name, keeps the match right however the folders are organised and
lets the output name cases only by their pseudonymous case ids.

The evaluation itself is :func:`medseg.evaluation.evaluate_folder` (the one place that owns
metrics, tolerances, editing effort and expert agreement): every case with a reference gets a
staging case folder of links, its prediction ``labels.nii.gz`` on one side and, on the other,
the reference RT-STRUCT with the links to the case's series files, and the folder is evaluated
into ``OUTPUT_ROOT/evaluation/``. Nothing in the reference or input folders is written.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medseg.batch.cases import STAGING_DIR, CaseSpec, SummaryRow
from medseg.errors import ConfigError, MedsegError
from medseg.evaluation import EvaluationSummary, evaluate_folder
from medseg.io import dicom, rtstruct
from medseg.structures import Structure

__all__ = ["EVALUATION_DIR", "ReferenceOptions", "evaluate_references", "find_references"]

log = logging.getLogger(__name__)

#: The folder under the batch output root that receives the evaluation.
EVALUATION_DIR = "evaluation"


@dataclass(frozen=True, slots=True)
class ReferenceOptions:
    """How a batch's predictions are compared with reference RT-STRUCTs.

    Attributes:
        folder: searched (any nesting) for RT Structure Sets; only read.
        tolerance_mm: surface Dice and editing tolerance (mm) of structures no table has.
        tolerances: the user's structure name -> tolerance (mm) table
            (:func:`medseg.tolerances.load_tolerances`); ``tolerances_source`` names it.
        builtin_tolerances: use medseg's H&N table for H&N organs the user's table lacks.
        agreement: ``metrics_summary.json`` (or its folder) of ``medseg evaluate EXPERT_A
            EXPERT_B``: the experts' medians are put beside the model's.

    Raises:
        ConfigError: a negative or non-finite ``tolerance_mm``.
    """

    folder: Path
    tolerance_mm: float = 2.0
    tolerances: Mapping[str, float] | None = None
    tolerances_source: str = ""
    builtin_tolerances: bool = True
    agreement: Path | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance_mm) and self.tolerance_mm >= 0):
            raise ConfigError(f"tolerance_mm must be finite and >= 0, got {self.tolerance_mm}")
        object.__setattr__(self, "folder", Path(self.folder))


def find_references(folder: Path) -> dict[str, list[Path]]:
    """Series Instance UID -> the RT-STRUCT files under ``folder`` drawn on that series.

    Files that are not DICOM are passed over; an RT-STRUCT that cannot be read, or names no
    series, is logged (by count, not by name: folder names can identify patients) and left
    out.

    Raises:
        UnreadableScanError: ``folder`` is not a directory.
    """
    inventory = dicom.scan_folder(Path(folder))
    found: dict[str, list[Path]] = {}
    unusable = 0
    for study in inventory.studies:
        for series in study.series:
            if series.modality != "RTSTRUCT":
                continue
            for path in series.files:
                try:
                    uids = rtstruct.referenced_series_uids(path)
                except MedsegError:
                    uids = ()
                if not uids:
                    unusable += 1
                for uid in dict.fromkeys(uids):
                    found.setdefault(uid, []).append(Path(path))
    if unusable or inventory.problems:
        log.warning(
            "references: %d RT-STRUCT(s) name no image series or cannot be read, %d file(s) "
            "cannot be parsed; they are not used",
            unusable,
            len(inventory.problems),
        )
    return found


def evaluate_references(
    specs: Sequence[CaseSpec],
    rows: Sequence[SummaryRow],
    output_root: Path,
    options: ReferenceOptions,
    structures: Sequence[Structure],
) -> EvaluationSummary | None:
    """Evaluate every finished case (done now or before) that has a reference RT-STRUCT.

    A case whose series two or more RT-STRUCTs reference is a failure of the evaluation (the
    reader cannot know which is the reference); a case without a reference is not evaluated.

    Args:
        specs: the batch's cases, and ``rows`` their outcomes (same order).
        output_root: the batch output root; the evaluation goes to ``EVALUATION_DIR`` in it.
        options: the reference folder and the tolerances.
        structures: the model's structures (the RT-STRUCT ROIs are matched to their names).

    Returns:
        The evaluation, or None when no finished case has a reference (nothing is written).
    """
    references = find_references(options.folder)
    staging = Path(output_root) / STAGING_DIR / EVALUATION_DIR
    shutil.rmtree(staging, ignore_errors=True)
    predictions, truths = staging / "predictions", staging / "references"
    predictions.mkdir(parents=True)
    truths.mkdir()
    n_cases = 0
    try:
        for spec, row in zip(specs, rows, strict=True):
            if not row.status.ok or row.out_dir is None or spec.series_instance_uid is None:
                continue
            found = references.get(spec.series_instance_uid, [])
            labels = row.out_dir / "labels.nii.gz"
            if not found or not labels.is_file():
                continue
            os.symlink(labels.resolve(), predictions / f"{spec.case_id}.nii.gz")
            case = truths / spec.case_id
            case.mkdir()
            for number, path in enumerate(sorted(found), start=1):
                os.symlink(Path(path).resolve(), case / f"reference-{number}.dcm")
            for number, path in enumerate(spec.files, start=1):
                os.symlink(Path(path).resolve(), case / f"image-{number:05d}.dcm")
            n_cases += 1
        log.info("references: %d of %d cases have one", n_cases, len(specs))
        if not n_cases:
            return None
        return evaluate_folder(
            predictions,
            truths,
            Path(output_root) / EVALUATION_DIR,
            labels=structures,
            tolerance_mm=options.tolerance_mm,
            tolerances=options.tolerances,
            tolerances_source=options.tolerances_source,
            builtin_tolerances=options.builtin_tolerances,
            reference_agreement=options.agreement,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
