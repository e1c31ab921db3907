"""The tables of a case: ``volumes.json`` (per structure) and ``lesions.csv`` (per lesion).

Both are written from one :class:`~medseg.postprocess.VolumesReport`, the one the QA page
shows, so the files and the page never disagree. The two formats are read by users' scripts
and by :func:`medseg.report.read_case_summary`: their fields and order do not change.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg.io.files import atomic_path
from medseg.postprocess import VolumesReport

__all__ = ["LESION_CSV_COLUMNS", "write_lesions_csv", "write_volumes_json"]

#: Columns of ``lesions.csv``, one row per lesion; positions in LPS mm.
LESION_CSV_COLUMNS: tuple[str, ...] = (
    "name", "label", "lesion_id", "volume_ml", "voxel_count",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "bbox_min_x_mm", "bbox_min_y_mm", "bbox_min_z_mm",
    "bbox_max_x_mm", "bbox_max_y_mm", "bbox_max_z_mm",
    "longest_axial_diameter_mm", "first_slice", "last_slice", "n_slices",
)  # fmt: skip


def write_volumes_json(
    report: VolumesReport,
    path: Path,
    *,
    stage_seconds: Mapping[str, float] | None = None,
    precision: Mapping[str, str] | None = None,
) -> Path:
    """Write a report as ``volumes.json`` (:meth:`VolumesReport.to_json
    <medseg.postprocess.VolumesReport.to_json>`), atomically.

    Args:
        report: from :func:`medseg.postprocess.volumes_report`.
        path: target file; its folder is created if missing.
        stage_seconds: the prediction's seconds per stage (:mod:`medseg.timing`), kept as
            ``stage_seconds`` after the volumes.
        precision: the network's precision, ``{"used": ..., "reason": ...}``
            (:func:`medseg.precision.choose`), kept as the last key ``precision``.

    Returns:
        ``path``.
    """
    path = Path(path)
    extra: dict[str, Any] = {}
    if stage_seconds is not None:
        extra["stage_seconds"] = dict(stage_seconds)
    if precision is not None:
        extra["precision"] = dict(precision)
    text = report.to_json(extra)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_lesions_csv(report: VolumesReport, path: Path) -> Path:
    """Write the lesions of a report as ``lesions.csv``, atomically.

    One row per lesion with the columns :data:`LESION_CSV_COLUMNS`, structures in the
    report's order and lesions largest first; a structure without lesions has no row (its
    zero volume is in ``volumes.json``).

    Args:
        report: from :func:`medseg.postprocess.volumes_report`.
        path: target file; its folder is created if missing.

    Returns:
        ``path``.
    """
    path = Path(path)
    with (
        atomic_path(path) as tmp,
        tmp.open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh,
    ):
        writer = csv.writer(fh)
        writer.writerow(LESION_CSV_COLUMNS)
        for structure in report.structures:
            for lesion in structure.lesions:
                writer.writerow(
                    [structure.name, lesion.label, lesion.id, lesion.volume_ml,
                     lesion.voxel_count,
                     *lesion.centroid_mm, *lesion.bbox_min_mm, *lesion.bbox_max_mm,
                     lesion.longest_axial_diameter_mm, lesion.first_slice,
                     lesion.last_slice, lesion.n_slices]
                )  # fmt: skip
    return path
