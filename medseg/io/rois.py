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
from pydicom.uid import RTStructureSetStorage

from medseg import contours
from medseg import geometry as geo
from medseg.errors import ConfigError, ExportError, GeometryError
from medseg.io import nifti
from medseg.io.dicom import is_medseg_dicom, load_series
from medseg.io.files import check_output
from medseg.io.rtstruct import MissingUids, write
from medseg.structures import InterpretedType, Structure, structure_set, with_standard_names
from medseg.volume import SourceInfo, Volume, VolumeKind

__all__ = ["export_rtstruct", "load_roi_specs"]


def load_roi_specs(path: Path) -> tuple[Structure, ...]:
    """Read a ``rois.yaml`` describing the structures of a label map.

    The structures are those of ``model.labels`` (:class:`medseg.structures.Structure`), as a
    list under ``rois``::

        rois:
          - {label: 1, name: GTV, color: [255, 0, 0], type: GTV, standard_name: GTVp}
          - {label: 2, name: Parotid L, standard_name: Parotid_L}

    or as the short map ``rois: {1: GTV, 2: Parotid L}`` (a bare list or map without the
    ``rois`` key is read too). ``label`` and ``name`` are required; ``type`` (the RT ROI
    Interpreted Type) is decided from the name when missing (a warning names each structure
    it cannot decide, which becomes ORGAN), ``color`` comes from the palette, and
    ``standard_name`` must be a TG-263 name. Unknown keys are refused, so a typo never drops
    a setting.

    Raises:
        ConfigError: unreadable file, invalid YAML, an unknown or missing key, a wrong type,
            an invalid field, or a duplicate label or name; the message names the file and
            the key.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ROI file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: ROI file is not UTF-8 text ({exc.reason})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if isinstance(data, dict) and "rois" in data:
        extra = sorted(str(k) for k in data if k != "rois")
        if extra:
            raise ConfigError(f"{path}: invalid ROI file: {', '.join(extra)}: unknown key")
        data = data["rois"]
    elif isinstance(data, dict) and (
        unknown := sorted(str(k) for k in data if not (isinstance(k, int) or str(k).isdigit()))
    ):
        raise ConfigError(
            f"{path}: invalid ROI file: {', '.join(unknown)}: unknown key (expected 'rois')"
        )
    if not isinstance(data, (dict, list)) or not data:
        raise ConfigError(
            f"{path}: invalid ROI file: expected a list of structures under 'rois' "
            f"(or a map {{1: GTV, ...}}), got {type(data).__name__}"
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            structures = structure_set(data, where="rois")
    except ValueError as exc:
        problems = "; ".join(
            p if p.startswith("rois") else f"rois.{p}" for p in str(exc).split("; ")
        )
        raise ConfigError(f"{path}: invalid ROI file: {problems}") from exc
    for warning in caught:  # re-issued naming the file
        warnings.warn(f"{path}: {warning.message}", stacklevel=2)
    return structures


def export_rtstruct(
    ct_dir: Path,
    labels_path: Path,
    rois_path: Path | None,
    out_path: Path,
    *,
    model_id: str | None = None,
    empty: Literal["keep", "omit"] = "omit",
    missing_uids: MissingUids = "error",
    tolerance_mm: float = contours.DEFAULT_TOLERANCE_MM,
    overwrite: bool = False,
    tg263: bool = False,
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
            present as ``label_<n>`` (type ORGAN, distinct palette colours).
        out_path: the RT-STRUCT file to write (atomically).
        model_id, empty, missing_uids, tolerance_mm: as in :func:`write`.
        overwrite: replace an existing ``out_path`` if it is an RT-STRUCT medseg wrote (never
            another file). ``out_path`` may not lie inside the CT folder or be an input.
        tg263: give every structure without a ``standard_name`` the TG-263 name proposed for
            its name (:func:`medseg.structures.with_standard_names`), written as
            ROIDescription; a warning lists the names it could not map.

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
    check_output(
        out_path,
        inputs=(ct_dir, labels_path, rois_path),
        overwrite=overwrite,
        is_folder=False,
        is_medseg_file=lambda p: is_medseg_dicom(p, RTStructureSetStorage),
    )
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
        SourceInfo(
            path=labels_path, frame_of_reference_uid=reference.source.frame_of_reference_uid
        ),
    )
    present = sorted(int(v) for v in np.unique(array) if v > 0)
    if rois_path is None:
        if not present:
            raise ExportError(f"{out_path}: label map {labels_path} has no labels > 0")
        rois = structure_set(
            [Structure(label=n, name=f"label_{n}", type=InterpretedType.ORGAN) for n in present]
        )
    else:
        rois = load_roi_specs(rois_path)
        unlisted = sorted(set(present) - {r.label for r in rois})
        if unlisted:
            warnings.warn(
                f"{labels_path}: label value(s) {unlisted} have no entry in {rois_path} and are "
                "not exported",
                stacklevel=2,
            )
    if tg263:
        rois, _, unmapped = with_standard_names(rois)
        if unmapped:
            warnings.warn(
                f"{labels_path}: no TG-263 name found for {unmapped}; give them standard_name "
                f"in {rois_path or 'a rois.yaml'}",
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
