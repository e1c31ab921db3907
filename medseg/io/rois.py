"""ROI descriptions (``rois.yaml``) and the export of label maps from any tool as RT-STRUCT.

Users bring masks from TotalSegmentator, nnU-Net or their own tools as NIfTI/NRRD label maps;
:func:`export_rtstruct` puts them onto their CT series as a clinically valid RT-STRUCT.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydicom.uid import RTStructureSetStorage

from medseg import contours
from medseg import geometry as geo
from medseg.errors import ConfigError, ExportError, GeometryError
from medseg.io import nifti
from medseg.io.dicom import load_series
from medseg.io.dicom_write import is_medseg_dicom
from medseg.io.files import check_output
from medseg.io.rtstruct import MissingUids, RoiSpec, duplicated_roi_fields, write
from medseg.volume import SourceInfo, Volume, VolumeKind

__all__ = ["export_rtstruct", "load_roi_specs"]


#: Distinct display colours for ROIs named by default (``label_<n>``), cycled.
_DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)  # fmt: skip

class _RoiEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: int = Field(ge=1)
    name: str
    color: tuple[int, int, int] = (255, 0, 0)
    type: str = "ORGAN"
    standard_name: str | None = None


class _RoisFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rois: list[_RoiEntry] = Field(min_length=1)


def load_roi_specs(path: Path) -> list[RoiSpec]:
    """Read a ``rois.yaml`` describing the structures of a label map.

    Format::

        rois:
          - {label: 1, name: GTV, color: [255, 0, 0], type: GTV, standard_name: GTVp}
          - {label: 2, name: Parotid L, type: ORGAN, standard_name: Parotid_L}

    ``label`` and ``name`` are required; ``color`` defaults to red, ``type`` (the RT ROI
    Interpreted Type) to ORGAN. Unknown keys are refused, so a typo never drops a setting.

    Raises:
        ConfigError: unreadable file, invalid YAML, an unknown or missing key, a wrong type,
            an invalid ROI field, or a duplicate label or name; the message names the file
            and the key.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ROI file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        parsed = _RoisFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "<top level>"
            what = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{where}: {what}")
        raise ConfigError(f"{path}: invalid ROI file: " + "; ".join(problems)) from exc
    specs: list[RoiSpec] = []
    for i, entry in enumerate(parsed.rois):
        try:
            specs.append(
                RoiSpec(entry.name, entry.label, entry.color, entry.type, entry.standard_name)
            )
        except ExportError as exc:
            raise ConfigError(f"{path}: rois.{i}: {exc}") from exc
    for what, repeated in duplicated_roi_fields(specs).items():
        raise ConfigError(f"{path}: rois: duplicate {what}(s) {repeated}")
    return specs


def export_rtstruct(
    ct_dir: Path,
    labels_path: Path,
    rois_path: Path | None,
    out_path: Path,
    *,
    model_id: str | None = None,
    empty: Literal["keep", "omit"] = "keep",
    missing_uids: MissingUids = "error",
    tolerance_mm: float = contours.DEFAULT_TOLERANCE_MM,
    overwrite: bool = False,
) -> Path:
    """Export a label map made by any tool (NIfTI/NRRD) as an RT-STRUCT on its CT series.

    The label map must lie on the CT's voxel grid. A map that holds the same voxels in
    another axis order (e.g. dcm2niix flips the row axis, as in TotalSegmentator's example)
    is reordered onto the CT grid without interpolation; anything else (another spacing,
    shift, rotation or size) is refused, because resampling labels would change volumes.

    Args:
        ct_dir: folder with the one CT/MR series the labels were made on.
        labels_path: label map (``.nii``, ``.nii.gz``, ``.nrrd``, ...), integer values.
        rois_path: ``rois.yaml`` (see :func:`load_roi_specs`), or None to export every label
            present as ``label_<n>`` (type ORGAN, distinct colours).
        out_path: the RT-STRUCT file to write (atomically).
        model_id, empty, missing_uids, tolerance_mm: as in :func:`write`.
        overwrite: replace an existing ``out_path`` if it is an RT-STRUCT medseg wrote (never
            another file). ``out_path`` may not lie inside the CT folder or be an input.

    Returns:
        ``out_path``.

    Raises:
        GeometryError: the label map is not on the CT grid (the message names both files).
        ConfigError: an invalid ROI file.
        ExportError: nothing to export, or any reason :func:`write` refuses.
        OutputError: ``out_path`` lies inside an input, exists (without ``overwrite``, or was
            not written by medseg), is a folder, or cannot be written; checked before any work.
        InputError, UnreadableScanError: unreadable CT folder or label map.
    """
    ct_dir, labels_path, out_path = Path(ct_dir), Path(labels_path), Path(out_path)
    check_output(out_path, inputs=(ct_dir, labels_path, rois_path), overwrite=overwrite,
                 is_folder=False,
                 is_medseg_file=lambda p: is_medseg_dicom(p, RTStructureSetStorage))
    reference = load_series(ct_dir)
    loaded = nifti.load(labels_path, VolumeKind.LABELS)
    try:
        array = geo.reorder_to_grid(loaded.array, loaded.geometry, reference.geometry)
    except GeometryError as exc:
        raise GeometryError(
            f"label map {labels_path} is not on the grid of the CT series {ct_dir}: {exc}; "
            "resample the labels onto the CT grid (nearest neighbour) before export"
        ) from exc
    labels = Volume(
        array,
        reference.geometry,
        VolumeKind.LABELS,
        SourceInfo(path=labels_path, frame_of_reference_uid=reference.source.frame_of_reference_uid),
    )
    present = sorted(int(v) for v in np.unique(array) if v > 0)
    if rois_path is None:
        if not present:
            raise ExportError(f"{out_path}: label map {labels_path} has no labels > 0")
        rois = [
            RoiSpec(f"label_{n}", n, _DEFAULT_COLORS[i % len(_DEFAULT_COLORS)])
            for i, n in enumerate(present)
        ]
    else:
        rois = load_roi_specs(rois_path)
        unlisted = sorted(set(present) - {r.label for r in rois})
        if unlisted:
            warnings.warn(
                f"{labels_path}: label value(s) {unlisted} have no entry in {rois_path} and are "
                "not exported",
                stacklevel=2,
            )
    return write(
        labels,
        reference,
        rois,
        out_path,
        model_id=model_id,
        empty=empty,
        missing_uids=missing_uids,
        tolerance_mm=tolerance_mm,
    )
