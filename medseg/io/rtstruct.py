"""RT Structure Set read (contours -> masks) and write (masks -> contours).

Writing is strict: the object carries every module of the RT Structure Set IOD so
``dciodvfy`` reports no errors, every number is a Decimal String of at most 16 characters, and
every contour lies exactly in its slice's plane (points come from
``geometry.index_to_world((k, row, column))``) and references that slice's SOP Instance UID.
Contours are traced on voxel edges (see :mod:`medseg.contours`), so a rasteriser that takes
"voxel centre inside the polygon" gives the mask back exactly, and holes are keyhole polygons
so union readers (plastimatch) keep them too.

Reading is lenient: contours are matched to slices by their referenced SOP Instance UID when
present and by position along the slice normal otherwise (``lung-gtv-ct`` has no
ContourImageSequence), and filled with the even-odd rule as the standard says.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RTStructureSetStorage, generate_uid

import medseg
from medseg import contours
from medseg import geometry as geo
from medseg.errors import ExportError, GeometryError, UnreadableScanError
from medseg.io.dicom import file_meta, format_ds
from medseg.io.files import atomic_path
from medseg.volume import SourceInfo, Volume, VolumeKind, require_same_geometry

__all__ = [
    "INTERPRETED_TYPES",
    "MAX_CONTOUR_DATA_BYTES",
    "MAX_OFF_PLANE_SLICES",
    "RoiSpec",
    "read",
    "write",
]

#: RT ROI Interpreted Types defined by DICOM PS3.3 C.8.8.8.1.
INTERPRETED_TYPES = frozenset(
    [
        "EXTERNAL",
        "PTV",
        "CTV",
        "GTV",
        "TREATED_VOLUME",
        "IRRAD_VOLUME",
        "OAR",
        "BOLUS",
        "AVOIDANCE",
        "ORGAN",
        "MARKER",
        "REGISTRATION",
        "ISOCENTER",
        "CONTRAST_AGENT",
        "CAVITY",
        "BRACHY_CHANNEL",
        "BRACHY_ACCESSORY",
        "BRACHY_SRC_APP",
        "BRACHY_CHNL_SHLD",
        "SUPPORT",
        "FIXATION",
        "DOSE_REGION",
        "CONTROL",
        "DOSE_MEASUREMENT",
    ]
)

#: Largest value length of one ContourData element. Explicit VR gives DS a 16-bit length
#: field, so 65534 (even) bytes is the most a contour can hold; longer polygons are split.
MAX_CONTOUR_DATA_BYTES = 65534

#: Detached Study Management SOP Class, the ReferencedSOPClassUID of RTReferencedStudySequence
#: items by convention (DICOM PS3.3 C.8.8.5 examples; every TPS writes it).
_STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"

#: Largest distance (in slices) of a contour point from the slice plane it is assigned to.
MAX_OFF_PLANE_SLICES = 0.5

_MAX_LO = 64
_MAX_SH = 16

# Copied from the image header so the structure set lands in the same patient and study.
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


@dataclass(frozen=True, slots=True)
class RoiSpec:
    """One structure to export: which label value, under which name and type.

    Attributes:
        name: ROIName (1-64 characters, no backslash).
        label: label value in the labels volume (>= 1).
        color: ROIDisplayColor as (red, green, blue), each 0-255.
        interpreted_type: RTROIInterpretedType, one of :data:`INTERPRETED_TYPES`.

    Raises:
        ExportError: on any invalid field.
    """

    name: str
    label: int
    color: tuple[int, int, int] = (255, 0, 0)
    interpreted_type: str = "ORGAN"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ExportError(f"ROI name must be a non-empty string, got {self.name!r}")
        if len(self.name) > _MAX_LO or "\\" in self.name:
            raise ExportError(
                f"ROI {self.name!r}: name must be at most {_MAX_LO} characters without '\\', "
                f"got {len(self.name)} characters"
            )
        if isinstance(self.label, bool) or int(self.label) != self.label or self.label < 1:
            raise ExportError(
                f"ROI {self.name!r}: label must be an integer >= 1, got {self.label!r}"
            )
        color = tuple(self.color)
        if len(color) != 3 or any(int(c) != c or not 0 <= c <= 255 for c in color):
            raise ExportError(
                f"ROI {self.name!r}: color must be 3 integers 0-255, got {self.color}"
            )
        if self.interpreted_type not in INTERPRETED_TYPES:
            raise ExportError(
                f"ROI {self.name!r}: interpreted_type {self.interpreted_type!r} is not an RT ROI "
                f"Interpreted Type; expected one of {sorted(INTERPRETED_TYPES)}"
            )
        object.__setattr__(self, "label", int(self.label))
        object.__setattr__(self, "color", tuple(int(c) for c in color))


# ---------------------------------------------------------------------------------------------
# write


def write(
    labels: Volume,
    reference: Volume,
    rois: Sequence[RoiSpec],
    out_path: Path,
    *,
    algorithm_name: str = "medseg",
    algorithm_version: str = medseg.__version__,
    model_id: str | None = None,
    empty: Literal["keep", "omit"] = "keep",
    tolerance_mm: float = contours.DEFAULT_TOLERANCE_MM,
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
        empty: a ROI whose label is absent is kept without contours (``"keep"``, with a
            warning naming it) or left out (``"omit"``, also warned).
        tolerance_mm: largest deviation of simplified contours from the voxel boundary
            (see :func:`medseg.contours.mask_to_polygons`).

    Returns:
        ``out_path``.

    Raises:
        GeometryError: if ``labels`` and ``reference`` are not on the same grid and frame.
        ExportError: a non-LABELS volume, no or duplicate ROIs, a reference without the
            DICOM provenance needed, or a description that does not fit DICOM's limits.
    """
    out_path = Path(out_path)
    if labels.kind is not VolumeKind.LABELS:
        raise ExportError(
            f"{out_path}: RT-STRUCT export needs a LABELS volume, got {labels.kind.value}"
        )
    if empty not in ("keep", "omit"):
        raise ExportError(f"{out_path}: empty must be 'keep' or 'omit', got {empty!r}")
    require_same_geometry(labels, reference)
    src = reference.source
    header = src.dicom_header
    missing = [
        what
        for what, value in (
            ("StudyInstanceUID", src.study_instance_uid),
            ("SeriesInstanceUID", src.series_instance_uid),
            ("FrameOfReferenceUID", src.frame_of_reference_uid),
            ("a DICOM header", header),
        )
        if not value
    ]
    if missing:
        raise ExportError(
            f"{out_path}: reference {src.describe()} was not read from DICOM (missing "
            f"{', '.join(missing)}); an RT-STRUCT must reference a DICOM image series"
        )
    n_slices = reference.geometry.shape[0]
    if len(src.sop_instance_uids) != n_slices:
        raise ExportError(
            f"{out_path}: reference {src.describe()} has {len(src.sop_instance_uids)} SOP "
            f"Instance UIDs for {n_slices} slices"
        )
    if not rois:
        raise ExportError(f"{out_path}: no ROIs to write")
    names = [r.name for r in rois]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ExportError(f"{out_path}: duplicate ROI names {duplicates}")
    description = f"{algorithm_name} {algorithm_version}" + (
        f" model {model_id}" if model_id else ""
    )
    if len(description) > _MAX_LO:
        raise ExportError(
            f"{out_path}: ROIGenerationDescription {description!r} is {len(description)} "
            f"characters, DICOM allows {_MAX_LO}; shorten model_id"
        )
    image_sop_class = str(header.get("SOPClassUID", "")) or None
    if image_sop_class is None:
        raise ExportError(f"{out_path}: reference header {src.describe()} has no SOPClassUID")

    ds = _base_dataset(reference, header, algorithm_version)
    frame_uid = str(src.frame_of_reference_uid)
    ds.ReferencedFrameOfReferenceSequence = DicomSequence(
        [
            _referenced_frame(
                frame_uid,
                str(src.study_instance_uid),
                str(src.series_instance_uid),
                image_sop_class,
                src.sop_instance_uids,
            )
        ]
    )
    roi_items: list[Dataset] = []
    contour_items: list[Dataset] = []
    observation_items: list[Dataset] = []
    label_array = np.asarray(labels.array)
    spacing_rc = labels.geometry.spacing_mm[1:]
    number = 0
    for roi in rois:
        mask = label_array == roi.label
        present = bool(mask.any())
        if not present:
            warnings.warn(
                f"{out_path}: ROI {roi.name!r} (label {roi.label}) is empty"
                + (" and written without contours" if empty == "keep" else " and omitted"),
                stacklevel=2,
            )
            if empty == "omit":
                continue
        number += 1
        item = Dataset()
        item.ROINumber = number
        item.ReferencedFrameOfReferenceUID = frame_uid
        item.ROIName = roi.name
        item.ROIGenerationAlgorithm = "AUTOMATIC"
        item.ROIGenerationDescription = description
        roi_items.append(item)

        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(roi.color)
        roi_contour.ReferencedROINumber = number
        contour_sequence: list[Dataset] = []
        if present:
            for k in np.nonzero(mask.any(axis=(1, 2)))[0]:
                polygons = contours.mask_to_polygons(mask[k], spacing_rc, tolerance_mm=tolerance_mm)
                for polygon in polygons:
                    for values in _contour_values(labels.geometry, int(k), polygon):
                        contour = Dataset()
                        image = Dataset()
                        image.ReferencedSOPClassUID = image_sop_class
                        image.ReferencedSOPInstanceUID = src.sop_instance_uids[int(k)]
                        contour.ContourImageSequence = DicomSequence([image])
                        contour.ContourGeometricType = "CLOSED_PLANAR"
                        contour.NumberOfContourPoints = len(values) // 3
                        contour.ContourNumber = len(contour_sequence) + 1
                        contour.ContourData = values
                        contour_sequence.append(contour)
        if contour_sequence:  # Type 3 with 1-n items: an empty ROI has none at all
            roi_contour.ContourSequence = DicomSequence(contour_sequence)
        contour_items.append(roi_contour)

        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.ROIObservationLabel = roi.name[:_MAX_SH]
        observation.RTROIInterpretedType = roi.interpreted_type
        observation.ROIInterpreter = ""
        observation_items.append(observation)
    if not roi_items:
        raise ExportError(f"{out_path}: every ROI is empty and empty='omit'; nothing to write")
    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.RTROIObservationsSequence = DicomSequence(observation_items)

    with atomic_path(out_path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return out_path


def _base_dataset(reference: Volume, header: Any, software_version: str) -> Dataset:
    """Patient, General Study, RT Series, Frame of Reference, Equipment, SOP Common modules."""
    src = reference.source
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = Dataset()
    ds.SpecificCharacterSet = header.get("SpecificCharacterSet", "ISO_IR 100")
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = generate_uid()
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in header:
            setattr(ds, keyword, header[keyword].value)
    for keyword in _TYPE2_PATIENT_STUDY:  # Type 2: present, possibly empty
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.StudyInstanceUID = src.study_instance_uid
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = None  # Type 2; a structure set has no natural number in the study
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.SeriesDescription = "medseg structures"
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = src.frame_of_reference_uid
    ds.PositionReferenceIndicator = header.get("PositionReferenceIndicator", "")
    ds.Manufacturer = "medseg"
    ds.ManufacturerModelName = "medseg"
    ds.SoftwareVersions = software_version
    ds.StructureSetLabel = "medseg"
    ds.StructureSetName = "medseg"
    ds.StructureSetDate = date
    ds.StructureSetTime = time
    ds.InstanceNumber = 1

    ds.file_meta = file_meta(ds)
    return ds


def _referenced_frame(
    frame_uid: str, study_uid: str, series_uid: str, sop_class: str, sop_uids: Sequence[str]
) -> Dataset:
    """ReferencedFrameOfReferenceSequence item listing every image slice."""
    images = []
    for uid in sop_uids:
        image = Dataset()
        image.ReferencedSOPClassUID = sop_class
        image.ReferencedSOPInstanceUID = uid
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
    :data:`MAX_CONTOUR_DATA_BYTES` bytes once joined with backslashes.
    """
    index = np.column_stack([np.full(len(polygon), float(k)), polygon])
    world = geo.index_to_world(geometry, index)
    values = [format_ds(float(v)) for v in world.ravel()]
    if len(polygon) < 3:  # pragma: no cover - contours.mask_to_polygons never returns these
        raise ExportError(f"a polygon on slice {k} has {len(polygon)} points (< 3)")
    if sum(len(v) for v in values) + len(values) - 1 <= MAX_CONTOUR_DATA_BYTES:
        return [values]
    # 16 characters + separator per value, 3 values per point, worst case
    max_points = MAX_CONTOUR_DATA_BYTES // (3 * (_MAX_SH + 1))
    out: list[list[str]] = []
    for piece in contours.split_polygon(polygon, max_points):
        out.extend(_contour_values(geometry, k, piece))
    return out


# ---------------------------------------------------------------------------------------------
# read


def read(path: Path, reference: Volume) -> dict[str, Volume]:
    """Rasterise every ROI of an RT Structure Set onto the reference image grid.

    A voxel belongs to a ROI if its centre is inside an odd number of the ROI's closed
    contours on that slice (even-odd rule, so an inner contour makes a hole).

    Args:
        path: RT-STRUCT file.
        reference: the image volume the structures were drawn on (array order
            ``(slice, row, column)``).

    Returns:
        ROI name -> LABELS volume (uint8, 0/1) on ``reference``'s grid. A ROI without
        contours gives an all-zero volume. Duplicate names get ``" #<ROINumber>"`` appended
        (with a warning).

    Raises:
        UnreadableScanError: not a readable DICOM file, or not an RT Structure Set.
        GeometryError: the structure set's frame of reference differs from the reference's,
            or a contour lies off every slice plane (by more than half a slice) or off its
            referenced slice.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as exc:
        raise UnreadableScanError(f"{path}: cannot be read as DICOM ({exc})") from exc
    if str(ds.get("Modality", "")) != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise UnreadableScanError(
            f"{path}: not an RT Structure Set (Modality {ds.get('Modality', '')!r})"
        )
    g = reference.geometry
    ref_frame = reference.source.frame_of_reference_uid
    frames = {
        str(f.FrameOfReferenceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        if "FrameOfReferenceUID" in f
    }
    if "FrameOfReferenceUID" in ds and ds.FrameOfReferenceUID:
        frames.add(str(ds.FrameOfReferenceUID))
    uid_to_slice = {uid: k for k, uid in enumerate(reference.source.sop_instance_uids)}
    contours_by_roi = {
        int(item.ReferencedROINumber): item.get("ContourSequence", [])
        for item in ds.get("ROIContourSequence", [])
        if "ReferencedROINumber" in item
    }
    out: dict[str, Volume] = {}
    for roi in ds.StructureSetROISequence:
        number = int(roi.ROINumber)
        name = str(roi.get("ROIName", "")) or f"ROI {number}"
        roi_frame = str(roi.get("ReferencedFrameOfReferenceUID", "")) or None
        for frame in {roi_frame} if roi_frame else frames:
            if ref_frame and frame and frame != ref_frame:
                raise GeometryError(
                    f"{path}: ROI {name!r} is in frame of reference {frame}, but the "
                    f"reference image {reference.source.describe()} is in {ref_frame}"
                )
        if name in out:
            warnings.warn(
                f"{path}: duplicate ROI name {name!r}; ROI {number} read as "
                f"{name + ' #' + str(number)!r}",
                stacklevel=2,
            )
            name = f"{name} #{number}"
        slices: dict[int, list[NDArray[np.float64]]] = {}
        for contour in contours_by_roi.get(number, []):
            kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
            if kind != "CLOSED_PLANAR":
                warnings.warn(
                    f"{path}: ROI {name!r}: skipping a {kind} contour (only "
                    "CLOSED_PLANAR contours enclose voxels)",
                    stacklevel=2,
                )
                continue
            data = np.asarray([float(v) for v in contour.get("ContourData", [])], dtype=float)
            if data.size < 9 or data.size % 3:
                warnings.warn(
                    f"{path}: ROI {name!r}: skipping a contour with {data.size} "
                    "ContourData values (needs 3 per point, >= 3 points)",
                    stacklevel=2,
                )
                continue
            index = geo.world_to_index(g, data.reshape(-1, 3))
            k = _slice_of(contour, index[:, 0], uid_to_slice, g.shape[0], path, name)
            slices.setdefault(k, []).append(index[:, 1:])
        mask = np.zeros(g.shape, dtype=np.uint8)
        for k, polygons in slices.items():
            mask[k] = contours.polygons_to_mask(polygons, g.shape[1:])
        out[name] = Volume(
            mask,
            g,
            VolumeKind.LABELS,
            SourceInfo(
                path=path,
                study_instance_uid=str(ds.get("StudyInstanceUID", "")) or None,
                series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
                frame_of_reference_uid=ref_frame or roi_frame,
                sop_instance_uids=reference.source.sop_instance_uids,
                modality="RTSTRUCT",
            ),
        )
    return out


def _slice_of(
    contour: Dataset,
    k_values: NDArray[np.float64],
    uid_to_slice: dict[str, int],
    n_slices: int,
    path: Path,
    name: str,
) -> int:
    """The slice index of one contour: its referenced SOP UID, else its position."""
    referenced = [
        uid_to_slice.get(str(image.get("ReferencedSOPInstanceUID", "")))
        for image in contour.get("ContourImageSequence", [])
    ]
    known = [k for k in referenced if k is not None]
    k = known[0] if known else int(np.round(np.median(k_values)))
    off = float(np.abs(k_values - k).max())
    if off > MAX_OFF_PLANE_SLICES or not 0 <= k < n_slices:
        where = (
            f"its referenced slice {k}"
            if known
            else f"any slice plane (nearest slice {k} of 0..{n_slices - 1})"
        )
        raise GeometryError(
            f"{path}: ROI {name!r}: a contour lies {off:.3f} slices off {where}; the "
            "structure set does not fit the reference image series"
        )
    return k
