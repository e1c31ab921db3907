"""RT Structure Set read (contours -> masks) and write (masks -> contours).

Writing is strict: the object carries every module of the RT Structure Set IOD so
``dciodvfy`` reports no errors, every number is a Decimal String of at most 16 characters, and
every contour lies exactly in its slice's plane (points come from
``geometry.index_to_world((k, row, column))``) and references that slice's SOP Instance UID.
Contours are traced on voxel edges and every point is then moved 0.02 voxel inwards (see
:mod:`medseg.contours`), so a rasteriser that takes "voxel centre inside the polygon"
(plastimatch, dicompyler-core, OHIF) and one that rounds points to voxel positions and fills
the outline (rt-utils, platipy) both give the mask back exactly, and holes are keyhole
polygons so union readers (plastimatch) keep them too.

``medseg.io.rois.export_rtstruct`` is the command-line entry point: a CT folder, a label map
from any tool (NIfTI/NRRD) and an optional ``rois.yaml`` become one RT-STRUCT.

Reading is lenient: contours are matched to slices by their referenced SOP Instance UID when
present and by position along the slice normal otherwise (``lung-gtv-ct`` has no
ContourImageSequence), and filled with the even-odd rule as the standard says.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import RTStructureSetStorage, generate_uid
from scipy import ndimage

import medseg
from medseg import contours
from medseg import geometry as geo
from medseg.errors import ExportError
from medseg.io.dicom import TEXT_VR_MAX_CHARACTERS, file_meta, fit_text, format_ds
from medseg.io.files import atomic_path
from medseg.structures import InterpretedType, Structure, duplicated_fields
from medseg.volume import Volume, VolumeKind, require_same_geometry

__all__ = [
    "INTERPRETED_TYPES",
    "MAX_CONTOUR_DATA_BYTES",
    "PROBABILITY_SEARCH_VOXELS",
    "MissingUids",
    "RoiSpec",
    "duplicated_roi_fields",
    "write",
    "write_masks",
]

#: RT ROI Interpreted Types defined by DICOM PS3.3 C.8.8.8.1.
INTERPRETED_TYPES = frozenset(t.value for t in InterpretedType)

#: Largest value length of one ContourData element. Explicit VR gives DS a 16-bit length
#: field, so 65534 (even) bytes is the most a contour can hold; longer polygons are split.
MAX_CONTOUR_DATA_BYTES = 65534

#: Detached Study Management SOP Class, the ReferencedSOPClassUID of RTReferencedStudySequence
#: items by convention (DICOM PS3.3 C.8.8.5 examples; every TPS writes it).
_STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"

#: With ``probabilities``, the 0.5 iso-line is traced only within this many voxels (in the
#: slice plane) of the ROI's label mask, so components removed by post-processing stay
#: removed while the outline is free to move by the sub-voxel amounts the model suggests.
PROBABILITY_SEARCH_VOXELS = 2

_MAX_DS = 16

MissingUids = Literal["error", "generate"]

_CONTOUR_DATA_TAG = Tag(0x3006, 0x0050)

# Copied from the image header so the structure set lands in the same patient and study (an
# over-long value is cut with a warning: medseg.io.dicom.fit_text).
_PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def RoiSpec(  # the former class name, kept callable for one release
    name: str,
    label: int,
    color: tuple[int, int, int] = (255, 0, 0),
    interpreted_type: str = "ORGAN",
    standard_name: str | None = None,
) -> Structure:
    """Deprecated since 0.1.0 (removed in 0.2): build a :class:`medseg.structures.Structure`.

    Takes the fields of the former ``RoiSpec`` class in its order and returns the one structure
    type every writer now takes.

    Raises:
        ExportError: on any invalid field (the message names the ROI and the field).
    """
    try:
        return Structure.model_validate(
            {"label": label, "name": name, "color": color, "type": interpreted_type,
             "standard_name": standard_name}
        )  # fmt: skip
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'value'}: "
            + error["msg"].removeprefix("Value error, ")
            for error in exc.errors()
        )
        raise ExportError(f"ROI {name!r}: {problems}") from exc


# ---------------------------------------------------------------------------------------------
# write


#: Label values and names used by more than one ROI (see
#: :func:`medseg.structures.duplicated_fields`, which owns the check).
duplicated_roi_fields = duplicated_fields


def write(
    labels: Volume,
    reference: Volume,
    rois: Sequence[Structure],
    out_path: Path,
    *,
    algorithm_name: str = "medseg",
    algorithm_version: str = medseg.__version__,
    model_id: str | None = None,
    empty: Literal["keep", "omit"] = "omit",
    tolerance_mm: float = contours.DEFAULT_TOLERANCE_MM,
    probabilities: Volume | None = None,
    missing_uids: MissingUids = "error",
) -> Path:
    """Write a labels volume as an RT Structure Set referencing the image series it was made on.

    Args:
        labels: LABELS volume, array order ``(slice, row, column)``, on ``reference``'s grid.
        reference: the image volume as read from DICOM (``io.dicom.load_series``); its
            ``source`` provides the UIDs, the SOP Instance UID of every slice and the header
            whose patient and study attributes are copied.
        rois: the structures to write, in ROINumber order (1, 2, ...).
        out_path: the ``.dcm`` file to write (atomically; replaced if it exists).
        algorithm_name: written into ROIGenerationDescription.
        algorithm_version: written into ROIGenerationDescription and SoftwareVersions.
        model_id: written into ROIGenerationDescription when given.
        empty: a ROI whose label is absent is left out (``"omit"``, the default, with a
            warning naming it; the StructureSetDescription lists the structures left out)
            or kept without contours (``"keep"``, also warned). DICOM allows a ROI without
            contours, but rt-utils 1.2.7 cannot read a structure set holding one
            (``AttributeError``; an empty ContourSequence would be invalid DICOM), so
            ``"keep"`` is for readers known to accept it.
        tolerance_mm: largest deviation of simplified contours from the traced ones
            (see :func:`medseg.contours.mask_to_polygons`).
        probabilities: optional PROBABILITIES volume ``(class, slice, row, column)`` on the
            same grid, channel ``n`` the foreground probability of label ``n``. When given,
            contours are the sub-voxel 0.5 iso-lines of those probabilities (smooth outlines;
            a rasteriser's volume then agrees with the mask to a few percent, not exactly),
            traced within :data:`PROBABILITY_SEARCH_VOXELS` of each slice's label mask.
            When None (default), contours follow voxel edges and reproduce the mask exactly.
        missing_uids: what to do when the reference series has an empty StudyInstanceUID or
            SeriesInstanceUID (some anonymisers blank them): ``"error"`` (default) raises
            :class:`ExportError` naming the tag and the folder; ``"generate"`` writes new UIDs,
            derived from the slices' SOP Instance UIDs so every export of the same series
            agrees, with a warning. The reference files are never modified, so a planning
            system will not find these study/series UIDs on the CT; contours still reference
            each slice's SOP Instance UID. A missing FrameOfReferenceUID is always an error:
            generating one would claim a spatial registration that nobody made.

    Returns:
        ``out_path``.

    Raises:
        GeometryError: if ``labels`` (or ``probabilities``) and ``reference`` are not on the
            same grid and frame.
        ExportError: a non-LABELS volume, no or duplicate ROIs, a reference without the
            DICOM provenance needed, probabilities that do not cover every ROI's label, or a
            name, version or description longer than DICOM allows (see
            :func:`medseg.io.dicom.fit_text`; an over-long attribute copied from the
            reference's header is cut with a warning instead).
    """
    out_path = Path(out_path)
    if labels.kind is not VolumeKind.LABELS:
        raise ExportError(
            f"{out_path}: RT-STRUCT export needs a LABELS volume, got {labels.kind.value}"
        )
    require_same_geometry(labels, reference)
    probability_array: NDArray[Any] | None = None
    if probabilities is not None:
        probability_array = _checked_probabilities(probabilities, labels, rois, out_path)
    return _write_structure_set(
        [(roi, labels) for roi in rois],
        reference,
        out_path,
        algorithm_name=algorithm_name,
        algorithm_version=algorithm_version,
        model_id=model_id,
        empty=empty,
        tolerance_mm=tolerance_mm,
        probability_array=probability_array,
        missing_uids=missing_uids,
    )


def write_masks(
    masks: Sequence[tuple[Structure, Volume]],
    reference: Volume,
    out_path: Path,
    *,
    algorithm_name: str = "medseg",
    algorithm_version: str = medseg.__version__,
    model_id: str | None = None,
    empty: Literal["keep", "omit"] = "omit",
    tolerance_mm: float = contours.DEFAULT_TOLERANCE_MM,
    missing_uids: MissingUids = "error",
) -> Path:
    """Write ROIs that may overlap (one volume per ROI) as one RT Structure Set.

    One labels volume cannot hold overlapping structures (the spinal cord lies inside the
    spinal canal, a lens inside its orbit), so each ROI brings its own LABELS volume; the
    ROI is the voxels equal to ``roi.label`` in it. Several ROIs may share one volume.

    Args:
        masks: ``(roi, labels)`` pairs in ROINumber order; each ``labels`` is a LABELS
            volume, array order ``(slice, row, column)``, on ``reference``'s grid.
        reference, out_path, algorithm_name, algorithm_version, model_id, empty,
            tolerance_mm, missing_uids: as in :func:`write`.

    Returns:
        ``out_path``.

    Raises:
        GeometryError, ExportError: as :func:`write`.
    """
    out_path = Path(out_path)
    checked: set[int] = set()
    for roi, volume in masks:
        if volume.kind is not VolumeKind.LABELS:
            raise ExportError(
                f"{out_path}: ROI {roi.name!r} needs a LABELS volume, got {volume.kind.value}"
            )
        if id(volume) not in checked:
            require_same_geometry(volume, reference)
            checked.add(id(volume))
    return _write_structure_set(
        list(masks),
        reference,
        out_path,
        algorithm_name=algorithm_name,
        algorithm_version=algorithm_version,
        model_id=model_id,
        empty=empty,
        tolerance_mm=tolerance_mm,
        probability_array=None,
        missing_uids=missing_uids,
    )


def _checked_probabilities(
    probabilities: Volume, labels: Volume, rois: Sequence[Structure], out_path: Path
) -> NDArray[Any]:
    """The probability array after checking kind, grid, channels and value range."""
    if probabilities.kind is not VolumeKind.PROBABILITIES:
        raise ExportError(
            f"{out_path}: probabilities must be a PROBABILITIES volume, got "
            f"{probabilities.kind.value}"
        )
    require_same_geometry(probabilities, labels)
    array = np.asarray(probabilities.array)
    n_channels = array.shape[0]
    uncovered = sorted(r.label for r in rois if r.label >= n_channels)
    if uncovered:
        raise ExportError(
            f"{out_path}: probabilities {probabilities.source.describe()} have {n_channels} "
            f"channels, so there is no probability for label(s) {uncovered}"
        )
    if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
        raise ExportError(
            f"{out_path}: probabilities {probabilities.source.describe()} must be finite and "
            f"in [0, 1], got {float(np.nanmin(array))}..{float(np.nanmax(array))}"
        )
    return array


def _reference_uids(
    reference: Volume, out_path: Path, missing_uids: MissingUids
) -> tuple[str, str, str, str]:
    """(study UID, series UID, frame UID, image SOP Class UID) that the structure set references."""
    if missing_uids not in ("error", "generate"):
        raise ExportError(
            f"{out_path}: missing_uids must be 'error' or 'generate', got {missing_uids!r}"
        )
    src = reference.source
    header = src.dicom_header
    where = src.describe()
    if header is None:
        raise ExportError(
            f"{out_path}: reference {where} was not read from DICOM (missing a DICOM header); "
            "an RT-STRUCT must reference a DICOM image series"
        )
    if not src.frame_of_reference_uid:
        raise ExportError(
            f"{out_path}: reference {where} was not read from DICOM or has an empty "
            "FrameOfReferenceUID (0020,0052); an RT-STRUCT must reference the image's frame "
            "of reference"
        )
    n_slices = reference.geometry.shape[0]
    if len(src.sop_instance_uids) != n_slices:
        raise ExportError(
            f"{out_path}: reference {where} has {len(src.sop_instance_uids)} SOP "
            f"Instance UIDs for {n_slices} slices"
        )
    uids = {
        "StudyInstanceUID": src.study_instance_uid,
        "SeriesInstanceUID": src.series_instance_uid,
    }
    empty_tags = {
        "StudyInstanceUID": "StudyInstanceUID (0020,000D)",
        "SeriesInstanceUID": "SeriesInstanceUID (0020,000E)",
    }
    for keyword, value in uids.items():
        if value:
            continue
        if missing_uids == "error":
            raise ExportError(
                f"{out_path}: reference series {where} has an empty {empty_tags[keyword]}; an "
                "RT-STRUCT referencing it would be invalid. Fix the series, or pass "
                "missing_uids='generate' to write a new UID into the structure set"
            )
        uids[keyword] = str(generate_uid(entropy_srcs=[keyword, *src.sop_instance_uids]))
        warnings.warn(
            f"{where}: {empty_tags[keyword]} is empty; the RT-STRUCT {out_path} references "
            f"a generated {keyword} {uids[keyword]} (the series itself is not changed)",
            stacklevel=4,
        )
    sop_class = str(header.get("SOPClassUID", "") or "")
    if not sop_class:
        meta = getattr(header, "file_meta", None)
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta else ""
        if not sop_class:
            raise ExportError(f"{out_path}: reference header {where} has no SOPClassUID")
        warnings.warn(
            f"{where}: SOPClassUID (0008,0016) is empty; referencing the file meta's "
            f"MediaStorageSOPClassUID (0002,0002) {sop_class} instead",
            stacklevel=4,
        )
    return (
        str(uids["StudyInstanceUID"]),
        str(uids["SeriesInstanceUID"]),
        str(src.frame_of_reference_uid),
        sop_class,
    )


def _write_structure_set(
    masks: Sequence[tuple[Structure, Volume]],
    reference: Volume,
    out_path: Path,
    *,
    algorithm_name: str,
    algorithm_version: str,
    model_id: str | None,
    empty: Literal["keep", "omit"],
    tolerance_mm: float,
    probability_array: NDArray[Any] | None,
    missing_uids: MissingUids,
) -> Path:
    """Shared body of :func:`write` and :func:`write_masks` (inputs already on one grid)."""
    if empty not in ("keep", "omit"):
        raise ExportError(f"{out_path}: empty must be 'keep' or 'omit', got {empty!r}")
    if not masks:
        raise ExportError(f"{out_path}: no ROIs to write")
    names = [roi.name for roi, _ in masks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ExportError(f"{out_path}: duplicate ROI names {duplicates}")
    # every composed text is checked before any contour is traced
    where = str(out_path)
    software_versions = fit_text("SoftwareVersions", algorithm_version, copied=False, where=where)
    description = fit_text(
        "ROIGenerationDescription",
        f"{algorithm_name} {algorithm_version}" + (f" model {model_id}" if model_id else ""),
        copied=False,
        where=where,
        what="algorithm name, version and model_id",
    )
    for roi, _ in masks:
        fit_text("ROIName", roi.name, copied=False, where=where, what=f"ROI {roi.label}")
        if roi.standard_name:
            fit_text("ROIDescription", roi.standard_name, copied=False, where=where)
    study_uid, series_uid, frame_uid, image_sop_class = _reference_uids(
        reference, out_path, missing_uids
    )
    src = reference.source
    ds = _base_dataset(study_uid, frame_uid, src.dicom_header, software_versions, where)
    frames = src.frame_numbers
    ds.ReferencedFrameOfReferenceSequence = DicomSequence(
        [
            _referenced_frame(
                frame_uid, study_uid, series_uid, image_sop_class, src.sop_instance_uids, frames
            )
        ]
    )
    roi_items: list[Dataset] = []
    contour_items: list[Dataset] = []
    observation_items: list[Dataset] = []
    geometry = reference.geometry
    spacing_rc = geometry.spacing_mm[1:]
    number = 0
    omitted: list[str] = []
    for roi, volume in masks:
        slab, first_slice, rows, cols = _roi_box(
            np.asarray(volume.array), roi.label, margin=PROBABILITY_SEARCH_VOXELS + 1
        )
        present = slab is not None
        if not present:
            warnings.warn(
                f"{out_path}: ROI {roi.name!r} (label {roi.label}) is empty"
                + (" and written without contours" if empty == "keep" else " and omitted"),
                stacklevel=3,
            )
            if empty == "omit":
                omitted.append(roi.name)
                continue
        number += 1
        item = Dataset()
        item.ROINumber = number
        item.ReferencedFrameOfReferenceUID = frame_uid
        item.ROIName = roi.name
        if roi.standard_name:
            item.ROIDescription = roi.standard_name
        item.ROIGenerationAlgorithm = "AUTOMATIC"
        item.ROIGenerationDescription = description
        roi_items.append(item)

        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(roi.display_color)
        roi_contour.ReferencedROINumber = number
        contour_sequence: list[Dataset] = []
        # trace within the ROI's bounding box (plus room for the probability search): results
        # are the same, and whole 512 x 512 slices cost 3x more
        offset = np.array([rows.start, cols.start], dtype=float)
        occupied: Sequence[int] = (
            np.nonzero(slab.any(axis=(1, 2)))[0].tolist() if slab is not None else []
        )
        for k_slab in occupied:
            assert slab is not None  # occupied is empty otherwise
            k = first_slice + int(k_slab)
            if probability_array is None:
                polygons = contours.mask_to_polygons(
                    slab[k_slab], spacing_rc, tolerance_mm=tolerance_mm
                )
            else:
                polygons = _probability_polygons(
                    probability_array[roi.label, k, rows, cols],
                    slab[k_slab],
                    spacing_rc,
                    tolerance_mm,
                )
            for polygon in (p + offset for p in polygons):
                for values in _contour_values(geometry, int(k), polygon):
                    contour = Dataset()
                    image = Dataset()
                    image.ReferencedSOPClassUID = image_sop_class
                    image.ReferencedSOPInstanceUID = src.sop_instance_uids[int(k)]
                    if frames and frames[k] is not None:  # a frame of a multi-frame image
                        image.ReferencedFrameNumber = frames[k]
                    contour.ContourImageSequence = DicomSequence([image])
                    contour.ContourGeometricType = "CLOSED_PLANAR"
                    contour.NumberOfContourPoints = len(values) // 3
                    contour.ContourNumber = len(contour_sequence) + 1
                    contour[_CONTOUR_DATA_TAG] = _raw_ds(_CONTOUR_DATA_TAG, values)
                    # declare the item already encoded as the file will be (explicit VR
                    # little endian; its values are all ASCII, so pydicom's default character
                    # set of new items fits), so pydicom writes the raw ContourData bytes
                    # instead of parsing ~10^5 numbers back first (a third of the export)
                    contour.set_original_encoding(False, True, default_encoding)
                    contour_sequence.append(contour)
        if contour_sequence:  # Type 3 with 1-n items: an empty ROI has none at all
            roi_contour.ContourSequence = DicomSequence(contour_sequence)
        contour_items.append(roi_contour)

        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        if len(roi.name) <= TEXT_VR_MAX_CHARACTERS["SH"]:
            # Type 3 and SH: a longer name is not cut (cut names can collide) but left out
            observation.ROIObservationLabel = roi.name
        observation.RTROIInterpretedType = roi.interpreted_type.value
        observation.ROIInterpreter = ""
        observation_items.append(observation)
    if not roi_items:
        raise ExportError(f"{out_path}: every ROI is empty and empty='omit'; nothing to write")
    if omitted:
        ds.StructureSetDescription = fit_text(
            "StructureSetDescription", _omitted_description(omitted), copied=False, where=where
        )
    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.RTROIObservationsSequence = DicomSequence(observation_items)

    with atomic_path(out_path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return out_path


def _omitted_description(omitted: Sequence[str]) -> str:
    """The StructureSetDescription naming the ROIs left out, composed to fit ST's limit: as
    many names as fit, then how many more (255 names of 64 characters would not)."""
    limit = TEXT_VR_MAX_CHARACTERS["ST"]
    prefix = "structures not found (no contours, not listed): "
    for shown in range(len(omitted), -1, -1):
        rest = len(omitted) - shown
        text = prefix + ", ".join([*omitted[:shown], *([f"{rest} more"] if rest else [])])
        if len(text) <= limit:
            return text
    raise AssertionError("unreachable: the prefix and a count always fit")  # pragma: no cover


def _roi_box(
    labels: NDArray[Any], label: int, margin: int
) -> tuple[NDArray[np.bool_] | None, int, slice, slice]:
    """The ROI's voxels cut to their bounding box, widened in-plane by ``margin``.

    Returns ``(slab, first_slice, rows, columns)``: ``slab`` is the boolean mask of
    ``labels == label`` on slices ``first_slice ...`` and the in-plane ``rows`` x ``columns``
    box (None when the label is absent). Two passes over the full volume (the comparison and
    a per-slice "any"); everything else runs on the slab. Every slice of the slab between the
    first and last occupied one is included, so slab index + ``first_slice`` is the slice.
    """
    mask = labels == label
    occupied = np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]
    if occupied.size == 0:
        return None, 0, slice(0, 0), slice(0, 0)
    first, last = int(occupied[0]), int(occupied[-1])
    slab = mask[first : last + 1]
    boxes = []
    for axis, size in ((1, mask.shape[1]), (2, mask.shape[2])):
        used = np.nonzero(slab.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        boxes.append(slice(max(int(used[0]) - margin, 0), min(int(used[-1]) + 1 + margin, size)))
    rows, cols = boxes
    return slab[:, rows, cols], first, rows, cols


def _probability_polygons(
    probability: NDArray[Any],
    mask: NDArray[np.bool_],
    spacing_rc: Sequence[float],
    tolerance_mm: float,
) -> list[NDArray[np.float64]]:
    """0.5 iso-line of one slice's probability near its label mask; voxel edges as fallback.

    A slice where the label mask has voxels but the (restricted) probability never exceeds
    0.5, e.g. a voxel added by hole filling, falls back to the voxel-edge outline so no
    labelled voxel is silently dropped.
    """
    near = ndimage.binary_dilation(mask, iterations=PROBABILITY_SEARCH_VOXELS)
    polygons = contours.probability_to_polygons(
        np.where(near, probability, 0.0), spacing_rc, tolerance_mm=tolerance_mm
    )
    return polygons or contours.mask_to_polygons(mask, spacing_rc, tolerance_mm=tolerance_mm)


def _raw_ds(tag: BaseTag, values: Sequence[str]) -> RawDataElement:
    """A DS element stored as its encoded bytes (explicit VR little endian).

    The values are already valid DS strings (:func:`medseg.io.dicom.format_ds`); letting
    pydicom parse each of the ~10^5 points of a large structure set back into a ``DSfloat``
    took about a fifth of the export time. pydicom writes a raw element unchanged.
    """
    text = "\\".join(values).encode("ascii")
    if len(text) % 2:
        text += b" "  # DS is padded to even length with a space
    return RawDataElement(tag, "DS", len(text), text, 0, False, True)


def _base_dataset(
    study_uid: str, frame_uid: str, header: Any, software_versions: Any, where: str
) -> Dataset:
    """Patient, General Study, RT Series, Frame of Reference, Equipment, SOP Common modules.

    Patient and study attributes are copied from ``header``; one that is longer than its VR
    allows is cut with a warning (:func:`medseg.io.dicom.fit_text`).
    """
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = Dataset()
    ds.SpecificCharacterSet = fit_text(
        "SpecificCharacterSet",
        header.get("SpecificCharacterSet", "ISO_IR 100"),
        copied=True,
        where=where,
    )
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = generate_uid()
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in header:
            setattr(ds, keyword, fit_text(keyword, header[keyword].value, copied=True, where=where))
    for keyword in _TYPE2_PATIENT_STUDY:  # Type 2: present, possibly empty
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.StudyInstanceUID = study_uid
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = None  # Type 2; a structure set has no natural number in the study
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = "medseg structures"
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = fit_text(
        "PositionReferenceIndicator",
        header.get("PositionReferenceIndicator", ""),
        copied=True,
        where=where,
    )
    ds.Manufacturer = "medseg"
    ds.ManufacturerModelName = "medseg"
    ds.SoftwareVersions = software_versions
    ds.StructureSetLabel = "medseg"
    ds.StructureSetName = "medseg"
    ds.StructureSetDate = date
    ds.StructureSetTime = time
    ds.InstanceNumber = 1

    ds.file_meta = file_meta(ds)
    return ds


def _referenced_frame(
    frame_uid: str,
    study_uid: str,
    series_uid: str,
    sop_class: str,
    sop_uids: Sequence[str],
    frame_numbers: Sequence[int | None] = (),
) -> Dataset:
    """ReferencedFrameOfReferenceSequence item listing every image slice.

    Each image is listed once; for an enhanced multi-frame image, the frames of its slices
    go into ReferencedFrameNumber (ascending).
    """
    frames_of: dict[str, list[int]] = {}
    for k, uid in enumerate(sop_uids):
        numbers = frames_of.setdefault(uid, [])
        if frame_numbers and frame_numbers[k] is not None:
            numbers.append(int(frame_numbers[k]))  # type: ignore[arg-type]
    images = []
    for uid, numbers in frames_of.items():
        image = Dataset()
        image.ReferencedSOPClassUID = sop_class
        image.ReferencedSOPInstanceUID = uid
        if numbers:
            image.ReferencedFrameNumber = sorted(numbers) if len(numbers) > 1 else numbers[0]
        images.append(image)
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ContourImageSequence = DicomSequence(images)
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP_CLASS
    study.ReferencedSOPInstanceUID = study_uid
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    return frame


def _contour_values(
    geometry: geo.Geometry, k: int, polygon: NDArray[np.float64]
) -> list[list[str]]:
    """ContourData strings for one polygon on slice ``k``, split if too long for one element.

    Each returned list holds ``x\\y\\z`` DS strings of one contour, at most
    :data:`MAX_CONTOUR_DATA_BYTES` bytes once joined with backslashes. Every point is moved
    :data:`medseg.contours.READER_INSET_VOXELS` towards the inside (after any split, so the
    pieces of a split polygon also move apart along their cut and no reader fills the cut's
    voxels twice).
    """
    inset = contours.inset_polygon(polygon, contours.READER_INSET_VOXELS)
    index = np.column_stack([np.full(len(inset), float(k)), inset])
    world = geo.index_to_world(geometry, index)
    # 10 significant digits (1e-7 mm at 1 m) always fit DS's 16 characters for the exponents
    # patient coordinates can have; format_ds (most digits that fit) is the exact fallback.
    # Formatting ~10^5 numbers this way takes a fifth of the time format_ds does.
    values = [f"{v:.10g}" for v in world.ravel().tolist()]
    if max(len(v) for v in values) > _MAX_DS:
        values = [format_ds(float(v)) for v in world.ravel()]
    if len(polygon) < 3:  # pragma: no cover - contours.mask_to_polygons never returns these
        raise ExportError(f"a polygon on slice {k} has {len(polygon)} points (< 3)")
    if sum(len(v) for v in values) + len(values) - 1 <= MAX_CONTOUR_DATA_BYTES:
        return [values]
    # 16 characters + separator per value, 3 values per point, worst case
    max_points = MAX_CONTOUR_DATA_BYTES // (3 * (_MAX_DS + 1))
    out: list[list[str]] = []
    for piece in contours.split_polygon(polygon, max_points):
        out.extend(_contour_values(geometry, k, piece))
    return out
