"""DICOM Segmentation (SEG) write and read, through highdicom.

A SEG stores the masks themselves (a raster), not outlines, so viewers such as OHIF and
Slicer show exactly the voxels medseg produced. One binary segment per ROI; each segment
carries its label, a description, SNOMED CT property category/type codes (from the ROI's RT
ROI Interpreted Type) and the algorithm that made it (medseg and its version), and
references the image series it was derived from.

highdicom builds the object from the source images' headers. medseg keeps only the first
slice's header (``SourceInfo.dicom_header``), so the per-slice headers highdicom needs are
made from it with each slice's SOP Instance UID and its ImagePositionPatient from
``geometry.slice_positions_mm``; frame ``k`` of the SEG is slice ``k`` of the reference.

Reading maps every frame to a slice of the reference grid by its ImagePositionPatient, never
by frame order, and refuses frames that are not on a slice plane.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

import medseg
from medseg import geometry as geo
from medseg.config import IngestConfig
from medseg.errors import ExportError, GeometryError, UnreadableScanError
from medseg.io.dicom import (
    HEADER_ERRORS,
    TEXT_VR_MAX_CHARACTERS,
    fit_text,
    format_ds,
    header_value,
    integer,
)
from medseg.io.files import atomic_path
from medseg.io.limits import require_within_limits
from medseg.io.rtstruct import duplicated_roi_fields
from medseg.structures import Structure
from medseg.volume import SourceInfo, Volume, VolumeKind, require_same_geometry

__all__ = ["SEG_POSITION_TOLERANCE_MM", "read_seg", "segment_codes", "write_seg"]

#: Largest distance (mm) of a frame's position from a slice of the reference grid, in and out
#: of plane. Positions are written as DS (16 characters), far finer than this.
SEG_POSITION_TOLERANCE_MM = 0.01


def segment_codes(structure: Structure) -> tuple[Code, Code, Code | None]:
    """(Segmented Property Category, Type, Type Modifier) codes of one structure (SNOMED CT).

    The structure's own codes when it declares them, else those
    :func:`medseg.nomenclature.segment_codes` derives from its interpreted type and (standard)
    name: a GTV is Morphologically Abnormal Structure / Neoplasm; a CTV or PTV Spatial and
    Relational Concept / Clinical (Planning) Target Volume; a known organ Anatomical
    Structure / that organ (a parotid as Parotid gland, with laterality as the modifier);
    any other organ Anatomical Structure / Organ.
    """
    return tuple(  # type: ignore[return-value]
        None if spec is None else Code(spec.value, spec.scheme, spec.meaning)
        for spec in structure.segment_codes()
    )


def write_seg(
    labels: Volume,
    reference: Volume,
    segments: Sequence[Structure],
    out_path: Path,
    *,
    algorithm_name: str = "medseg",
    algorithm_version: str = medseg.__version__,
    model_id: str | None = None,
) -> Path:
    """Write a labels volume as a binary DICOM SEG, one segment per ROI.

    Args:
        labels: LABELS volume, array order ``(slice, row, column)``, on ``reference``'s grid.
        reference: the image series as read by ``io.dicom.load_series`` (UIDs, SOP Instance
            UID of every slice, header with patient and study attributes).
        segments: the ROIs, in segment-number order; segment ``i`` (1-based) holds the voxels
            equal to ``segments[i - 1].label``. ROI name -> SegmentLabel, standard name (or
            name) -> SegmentDescription, colour -> RecommendedDisplayCIELabValue.
        out_path: the ``.dcm`` file to write (atomically; replaced if it exists).
        algorithm_name: SegmentationAlgorithmIdentification name (family: Artificial
            Intelligence).
        algorithm_version: its version, also written as SoftwareVersions.
        model_id: the model (and the precision it ran in), added to ContentDescription as
            the RT-STRUCT writer adds it to ROIGenerationDescription.

    Returns:
        ``out_path``.

    Raises:
        GeometryError: ``labels`` and ``reference`` are not on the same grid and frame.
        ExportError: a non-LABELS volume, no or duplicate ROIs (names or labels), an empty ROI,
            a reference without the DICOM provenance a SEG must reference (study, series
            and frame of reference UIDs, one SOP Instance UID per slice, a header), or a
            name, version or description longer than DICOM allows (see
            :func:`medseg.io.dicom.fit_text`; an over-long attribute copied from the
            reference's header is cut with a warning instead).
    """
    out_path = Path(out_path)
    if labels.kind is not VolumeKind.LABELS:
        raise ExportError(
            f"{out_path}: DICOM SEG export needs a LABELS volume, got {labels.kind.value}"
        )
    require_same_geometry(labels, reference)
    if not segments:
        raise ExportError(f"{out_path}: no segments to write")
    for what, repeated in duplicated_roi_fields(segments).items():
        raise ExportError(f"{out_path}: duplicate segment {what}s {repeated}")
    # every composed text is checked before highdicom builds anything, in the RT-STRUCT
    # writer's order, so the same over-long option gives the same error from both
    where = str(out_path)
    software_versions = fit_text("SoftwareVersions", algorithm_version, copied=False, where=where)
    algorithm_name = fit_text("AlgorithmName", algorithm_name, copied=False, where=where)
    algorithm_version = fit_text("AlgorithmVersion", algorithm_version, copied=False, where=where)
    content_description = fit_text(
        "ContentDescription",
        f"{algorithm_name} {algorithm_version}" + (f" model {model_id}" if model_id else ""),
        copied=False,
        where=where,
        what="algorithm name, version and model_id",
    )
    for segment in segments:
        what = f"segment {segment.label}"
        fit_text("SegmentLabel", segment.name, copied=False, where=where, what=what)
        fit_text(
            "SegmentDescription",
            segment.standard_name or segment.name,
            copied=False,
            where=where,
            what=what,
        )
    sources = _source_datasets(reference, out_path)

    array = np.asarray(labels.array)
    present = np.zeros(int(array.max()) + 1, dtype=bool)
    present[np.unique(array)] = True
    absent = [s.name for s in segments if s.label >= len(present) or not present[s.label]]
    if absent:
        # highdicom would write a segment without frames, which many viewers reject
        raise ExportError(f"{out_path}: segment(s) {absent} have no voxels; leave them out")
    # label-map style input: pixel value = segment number (1..N), 0 elsewhere
    lookup = np.zeros(max(len(present), max(s.label for s in segments) + 1), dtype=np.uint16)
    for number, segment in enumerate(segments, start=1):
        lookup[segment.label] = number
    numbered = lookup[array].astype(np.uint8 if len(segments) < 256 else np.uint16)

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm_version,
    )
    descriptions = []
    for number, segment in enumerate(segments, start=1):
        category, property_type, modifier = segment_codes(segment)
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.name,
            segmented_property_category=category,
            segmented_property_type=property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*segment.display_color),
        )
        if modifier is not None:  # laterality, inside the property type item (PS3.3 C.8.20.2)
            description.SegmentedPropertyTypeCodeSequence[
                0
            ].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(modifier.value, modifier.scheme_designator, modifier.meaning)
            ]
        description.SegmentDescription = segment.standard_name or segment.name
        descriptions.append(description)

    header = reference.source.dicom_header
    with warnings.catch_warnings():
        # highdicom warns that 'medseg' is not a DICOM-registered coding scheme etc.; those
        # concern its own defaults, and dciodvfy is the check that matters
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=numbered,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(),
            series_number=_series_number(header),
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="medseg",
            manufacturer_model_name="medseg",
            software_versions=software_versions,
            device_serial_number="none",
            content_label="MEDSEG",
            content_description=content_description,
            # frames only where a segment has voxels: highdicom then logs (INFO) that the
            # frame positions are not regularly spaced, which is expected; each frame still
            # carries its own ImagePositionPatient, which read_seg maps to its slice
            omit_empty_frames=True,
        )
    _fit_copied_text(seg, header, where)
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return out_path


def _fit_copied_text(seg: Dataset, header: Any, where: str) -> None:
    """Cut, with a warning, every top-level text of ``seg`` that highdicom copied from the
    reference's header (its Patient and Study modules) and that is longer than DICOM allows
    (:func:`medseg.io.dicom.fit_text`); composed values were checked before."""
    for element in seg:
        keyword = element.keyword
        if (
            keyword  # not a private tag
            and element.VR in TEXT_VR_MAX_CHARACTERS
            and keyword in header
            and element.value == header[keyword].value
        ):
            element.value = fit_text(keyword, element.value, copied=True, where=where)


def _series_number(header: Any) -> int:
    """A series number after the reference's, so the SEG sorts after its image series."""
    try:
        return int(header.get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        return 1000


def _source_datasets(reference: Volume, out_path: Path) -> list[Dataset]:
    """One header per reference slice, in array order, for highdicom."""
    src = reference.source
    header = src.dicom_header
    where = src.describe()
    if header is None:
        raise ExportError(
            f"{out_path}: reference {where} was not read from DICOM; a SEG must reference a "
            "DICOM image series"
        )
    for keyword, value in (
        ("StudyInstanceUID (0020,000D)", src.study_instance_uid),
        ("SeriesInstanceUID (0020,000E)", src.series_instance_uid),
        ("FrameOfReferenceUID (0020,0052)", src.frame_of_reference_uid),
    ):
        if not value:
            raise ExportError(
                f"{out_path}: reference series {where} has an empty {keyword}; a SEG "
                "referencing it would be invalid"
            )
    g = reference.geometry
    if len(src.sop_instance_uids) != g.shape[0]:
        raise ExportError(
            f"{out_path}: reference {where} has {len(src.sop_instance_uids)} SOP Instance "
            f"UIDs for {g.shape[0]} slices"
        )
    sop_class = str(header.get("SOPClassUID", "") or "")
    if not sop_class:
        meta = getattr(header, "file_meta", None)
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta else ""
    if not sop_class:
        raise ExportError(f"{out_path}: reference header {where} has no SOPClassUID")
    positions = geo.slice_positions_mm(g)
    orientation = [format_ds(v) for v in geo.dicom_orientation(g)]
    spacing = [format_ds(v) for v in geo.dicom_pixel_spacing(g)]
    datasets = []
    for k, uid in enumerate(src.sop_instance_uids):
        ds = copy.deepcopy(header)  # Dataset.copy() shares its element dict
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = src.study_instance_uid
        ds.SeriesInstanceUID = src.series_instance_uid
        ds.FrameOfReferenceUID = src.frame_of_reference_uid
        ds.ImagePositionPatient = [format_ds(float(v)) for v in positions[k]]
        ds.ImageOrientationPatient = orientation
        ds.PixelSpacing = spacing
        ds.Rows, ds.Columns = g.shape[1], g.shape[2]
        if not ds.get("SliceThickness"):
            ds.SliceThickness = format_ds(g.spacing_mm[0])
        ds.InstanceNumber = k + 1
        datasets.append(ds)
    return datasets


def read_seg(
    path: Path, reference: Volume, *, ingest: IngestConfig | None = None
) -> dict[str, Volume]:
    """Read every segment of a DICOM SEG onto the reference image grid.

    Args:
        path: SEG file (binary or fractional; fractional frames are thresholded at half
            their maximum value).
        reference: the image volume the segmentation was made on (array order
            ``(slice, row, column)``).
        ingest: the largest frame stack decoded (``max_voxels``, ``max_bytes``; default
            ``IngestConfig()``), checked against NumberOfFrames x Rows x Columns first.

    Returns:
        SegmentLabel -> LABELS volume (uint8, 0/1) on ``reference``'s grid, in segment-number
        order; a segment without frames gives an all-zero volume.

    Raises:
        UnreadableScanError: not a readable DICOM SEG.
        ResourceLimitError: the SEG's frames (NumberOfFrames x Rows x Columns), or its
            segments' masks on the reference grid, are over ``ingest``'s limits.
        GeometryError: another frame of reference, orientation or pixel spacing, or a frame
            that does not lie on a slice of the reference grid.
    """
    path = Path(path)
    try:
        # parsed from memory: a corrupt element length cannot make pydicom reserve the bytes
        # it declares; highdicom checks the SEG module while building its frame index
        seg = hd.seg.segread(io.BytesIO(path.read_bytes()))
        n_frames = header_value(seg, "NumberOfFrames", integer, 1, path)
        rows = header_value(seg, "Rows", integer, 0, path)
        columns = header_value(seg, "Columns", integer, 0, path)
    except (InvalidDicomError, *HEADER_ERRORS) as exc:
        raise UnreadableScanError(f"{path}: cannot be read as a DICOM SEG ({exc})") from exc
    require_within_limits(path, (n_frames, rows, columns), 1, ingest)
    try:
        return _read_segments(seg, path, reference, ingest)
    except HEADER_ERRORS as exc:
        raise UnreadableScanError(f"{path}: DICOM SEG cannot be read ({exc})") from exc


def _read_segments(
    seg: Any, path: Path, reference: Volume, ingest: IngestConfig | None
) -> dict[str, Volume]:
    g = reference.geometry
    ref_frame = reference.source.frame_of_reference_uid
    frame = str(seg.get("FrameOfReferenceUID", "")) or None
    if ref_frame and frame and frame != ref_frame:
        raise GeometryError(
            f"{path}: SEG is in frame of reference {frame}, but the reference image "
            f"{reference.source.describe()} is in {ref_frame}"
        )
    shared = seg.SharedFunctionalGroupsSequence[0]
    _require_plane(path, shared, g)
    pixels = np.asarray(seg.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[None]
    numbers = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    # one uint8 mask on the reference grid per segment
    require_within_limits(path, (len(numbers), *g.shape), 1, ingest)
    masks = {number: np.zeros(g.shape, dtype=np.uint8) for number in numbers}
    threshold = (
        0
        if str(seg.SegmentationType) == "BINARY"
        else int(seg.get("MaximumFractionalValue", 1)) / 2
    )
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        if "PlaneOrientationSequence" in item:
            _require_plane(path, item, g)
        # attributes common to every frame (one segment, one frame) sit in the shared groups
        ident = item if "SegmentIdentificationSequence" in item else shared
        plane = item if "PlanePositionSequence" in item else shared
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = np.asarray(plane.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        k = _slice_index(path, i, position, g)
        masks[number][k] |= (pixels[i] > threshold).astype(np.uint8)
    out: dict[str, Volume] = {}
    for number, label in sorted(numbers.items()):
        name = label if label not in out else f"{label} #{number}"
        out[name] = Volume(
            masks[number],
            g,
            VolumeKind.LABELS,
            SourceInfo(
                path=path,
                study_instance_uid=str(seg.get("StudyInstanceUID", "")) or None,
                series_instance_uid=str(seg.get("SeriesInstanceUID", "")) or None,
                frame_of_reference_uid=ref_frame or frame,
                sop_instance_uids=reference.source.sop_instance_uids,
                modality="SEG",
            ),
        )
    return out


def _require_plane(path: Path, group: Dataset, g: geo.Geometry) -> None:
    """GeometryError unless a functional group's orientation and spacing are the grid's."""
    if "PlaneOrientationSequence" in group:
        iop = np.asarray(group.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
        expected = np.asarray(geo.dicom_orientation(g))
        if iop.shape != expected.shape or not (
            np.abs(iop - expected).max() <= geo.DIRECTION_TOLERANCE  # False for NaN
        ):
            raise GeometryError(
                f"{path}: SEG ImageOrientationPatient {iop.tolist()} differs from the "
                f"reference's {expected.tolist()}"
            )
    if "PixelMeasuresSequence" in group:
        spacing = np.asarray(group.PixelMeasuresSequence[0].PixelSpacing, dtype=float)
        expected = np.asarray(geo.dicom_pixel_spacing(g))
        if spacing.shape != expected.shape or not (
            np.abs(spacing - expected).max() <= geo.SPACING_RELATIVE_TOLERANCE * expected.max()
        ):
            raise GeometryError(
                f"{path}: SEG PixelSpacing {spacing.tolist()} differs from the reference's "
                f"{expected.tolist()}"
            )


def _slice_index(path: Path, frame: int, position_mm: NDArray[np.float64], g: geo.Geometry) -> int:
    """The reference slice whose first voxel is at ``position_mm``, or GeometryError."""
    if position_mm.shape != (3,) or not np.all(np.isfinite(position_mm)):
        raise GeometryError(
            f"{path}: frame {frame + 1} ImagePositionPatient must be 3 finite values, got "
            f"{position_mm.tolist()}"
        )
    index = geo.world_to_index(g, position_mm)
    k = int(np.round(index[0]))
    off_mm = np.abs(index - np.array([k, 0.0, 0.0])) * np.asarray(g.spacing_mm)
    if not 0 <= k < g.shape[0] or off_mm.max() > SEG_POSITION_TOLERANCE_MM:
        raise GeometryError(
            f"{path}: frame {frame + 1} at {position_mm.tolist()} mm is not on a slice of the "
            f"reference grid (index {np.round(index, 3).tolist()})"
        )
    return k
