"""DICOM image series: discovery, sorting, decoding, geometry checks, and writing CT series.

Reading is lenient (pydicom's default), writing is strict: a written CT series carries every
Type 1 and Type 2 attribute of the CT Image IOD so ``dciodvfy`` reports no errors.

Slices are sorted by ImagePositionPatient projected on the slice normal, never by
InstanceNumber or file name, and the spacing between slices comes from those positions, never
from SliceThickness.
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

import medseg
from medseg import geometry as geo
from medseg.errors import ExportError, GeometryError, InputError, UnreadableScanError
from medseg.io.files import atomic_dir
from medseg.volume import SourceInfo, Volume, VolumeKind

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "SLICE_SPACING_RELATIVE_TOLERANCE",
    "file_meta",
    "format_ds",
    "load_series",
    "write_series",
]

#: Largest relative deviation of one slice step from the mean step that still counts as a
#: uniformly spaced series. 1% of a 3 mm step is 0.03 mm, below any clinical significance,
#: and above the rounding of positions written with 6 significant digits.
SLICE_SPACING_RELATIVE_TOLERANCE = 0.01

#: Largest angle (degrees) between the slice-stacking direction and the slice normal that is
#: not reported as gantry tilt; positions are rounded in files, so a tiny angle is noise.
TILT_TOLERANCE_DEG = 0.01

#: Storage SOP classes we read as image slices (single-frame).
_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4": "MR",  # MR Image Storage
}

# A UUID-derived UID (ISO/IEC 9834-8 arc 2.25) that identifies medseg as the implementation.
IMPLEMENTATION_CLASS_UID = UID("2.25.208501962560291471238227467631826952322")


@dataclass(frozen=True, slots=True)
class _Slice:
    path: Path
    header: Dataset


def _iter_files(folder: Path) -> Iterable[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "DICOMDIR":
            yield path


def _read_headers(folder: Path) -> tuple[list[_Slice], int]:
    """Read the header of every DICOM image file under ``folder``; skip everything else."""
    slices: list[_Slice] = []
    n_files = 0
    for path in _iter_files(folder):
        n_files += 1
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as exc:
            if _has_dicm_preamble(path):
                raise UnreadableScanError(f"{path}: DICOM file cannot be parsed ({exc})") from exc
            continue
        if str(header.get("SOPClassUID", "")) in _IMAGE_SOP_CLASSES or (
            "ImagePositionPatient" in header and header.get("Modality") in ("CT", "MR")
        ):
            slices.append(_Slice(path, header))
    return slices, n_files


def _has_dicm_preamble(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _floats(header: Dataset, keyword: str, count: int, path: Path) -> NDArray[np.float64]:
    value = header.get(keyword)
    if value is None:
        raise GeometryError(f"{path}: missing {keyword}")
    try:
        arr = np.asarray([float(v) for v in (value if count > 1 else [value])], dtype=float)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{path}: {keyword} is not numeric: {value!r}") from exc
    if arr.shape != (count,) or not np.all(np.isfinite(arr)):
        raise GeometryError(f"{path}: {keyword} must have {count} finite values, got {value!r}")
    return arr


def _sorted_geometry(slices: Sequence[_Slice], where: Path) -> tuple[list[_Slice], geo.Geometry]:
    """Sort slices along the normal and check they form one regular grid."""
    first = slices[0]
    iop = _floats(first.header, "ImageOrientationPatient", 6, first.path)
    spacing = _floats(first.header, "PixelSpacing", 2, first.path)
    rows, cols = int(first.header.Rows), int(first.header.Columns)
    for s in slices[1:]:
        other = _floats(s.header, "ImageOrientationPatient", 6, s.path)
        if np.abs(other - iop).max() > geo.DIRECTION_TOLERANCE:
            raise GeometryError(
                f"{s.path}: ImageOrientationPatient {other.tolist()} differs from "
                f"{iop.tolist()} in {first.path} (mixed orientations in one series)"
            )
        other_sp = _floats(s.header, "PixelSpacing", 2, s.path)
        if np.abs(other_sp - spacing).max() > geo.SPACING_RELATIVE_TOLERANCE * spacing.max():
            raise GeometryError(
                f"{s.path}: PixelSpacing {other_sp.tolist()} differs from {spacing.tolist()} "
                f"in {first.path} (mixed pixel spacings in one series)"
            )
        if (int(s.header.Rows), int(s.header.Columns)) != (rows, cols):
            raise GeometryError(
                f"{s.path}: {s.header.Rows}x{s.header.Columns} pixels differs from "
                f"{rows}x{cols} in {first.path}"
            )
    normal = geo.slice_normal(iop)
    positions = np.stack([_floats(s.header, "ImagePositionPatient", 3, s.path) for s in slices])
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    ordered = [slices[i] for i in order]
    positions = positions[order]
    distance = distance[order]
    if len(ordered) > 1:
        steps = np.diff(distance)
        dup = np.nonzero(steps < geo.POSITION_TOLERANCE_MM)[0]
        if dup.size:
            i = int(dup[0])
            raise GeometryError(
                f"{where}: duplicate slice position {distance[i]:.3f} mm along the normal in "
                f"{ordered[i].path.name} and {ordered[i + 1].path.name}"
            )
        mean_step = (distance[-1] - distance[0]) / (len(distance) - 1)
        worst = int(np.argmax(np.abs(steps - mean_step)))
        if abs(steps[worst] - mean_step) > SLICE_SPACING_RELATIVE_TOLERANCE * mean_step:
            raise GeometryError(
                f"{where}: uneven slice spacing: step {steps[worst]:.3f} mm between "
                f"{ordered[worst].path.name} and {ordered[worst + 1].path.name}, mean "
                f"{mean_step:.3f} mm (missing or extra slices?)"
            )
        stack = positions[-1] - positions[0]
        cos_angle = float(abs(stack @ normal) / np.linalg.norm(stack))
        tilt_deg = math.degrees(math.acos(min(1.0, cos_angle)))
        if tilt_deg > TILT_TOLERANCE_DEG:
            raise GeometryError(
                f"{where}: gantry tilt or sheared stack of {tilt_deg:.2f} degrees: slices are "
                "not stacked along their normal"
            )
    return ordered, geo.from_dicom(iop, positions, spacing, rows, cols)


def _pixels(s: _Slice) -> NDArray[Any]:
    try:
        ds = pydicom.dcmread(s.path)
        raw = ds.pixel_array
    except (ValueError, TypeError, AttributeError, KeyError, RuntimeError, NotImplementedError,
            OSError, EOFError) as exc:  # pydicom's decoders raise all of these; we name the file
        raise UnreadableScanError(f"{s.path}: pixel data cannot be decoded ({exc})") from exc
    if raw.ndim != 2:
        raise UnreadableScanError(
            f"{s.path}: expected a single-frame greyscale slice, got pixel array {raw.shape}"
        )
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope == 1.0 and intercept.is_integer():
        return raw.astype(np.int32) + int(intercept)
    return raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _sop_instance_uids(slices: Sequence[_Slice], where: Path) -> tuple[str, ...]:
    """SOPInstanceUIDs, falling back to the file meta's MediaStorageSOPInstanceUID.

    Some anonymisers blank (0008,0018) but keep (0002,0003); e.g. TotalSegmentator's example
    series. Reading goes on with one warning per series that names the tag.
    """
    uids = []
    replaced = []
    for s in slices:
        uid = str(s.header.get("SOPInstanceUID", "") or "")
        if not uid:
            meta = getattr(s.header, "file_meta", Dataset())
            uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
            if not uid:
                raise UnreadableScanError(f"{s.path}: SOPInstanceUID (0008,0018) is missing or empty")
            replaced.append(s.path.name)
        uids.append(uid)
    if replaced:
        warnings.warn(
            f"{where}: SOPInstanceUID (0008,0018) is empty in {len(replaced)} of {len(slices)} "
            f"files (first: {replaced[0]}); using MediaStorageSOPInstanceUID (0002,0003) instead",
            stacklevel=3,
        )
    if len(set(uids)) != len(uids):
        raise UnreadableScanError(f"{where}: two slices share one SOPInstanceUID")
    return tuple(uids)


def load_series(folder: Path) -> Volume:
    """Read the single image series under ``folder`` (any nesting, any file names).

    Returns:
        An IMAGE volume in array order ``(slice, row, column)``; slices sorted along the slice
        normal. Values are rescaled (HU for CT); integer when RescaleSlope is 1 and the
        intercept is an integer, float32 otherwise.

    Raises:
        UnreadableScanError: no DICOM image files, or a slice that cannot be decoded.
        InputError: more than one image series in the folder.
        GeometryError: missing, duplicate or unevenly spaced slices, mixed orientation or
            pixel spacing, gantry tilt.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UnreadableScanError(f"{folder}: not a directory")
    slices, n_files = _read_headers(folder)
    if not slices:
        what = "the folder is empty" if n_files == 0 else f"none of its {n_files} files"
        raise UnreadableScanError(
            f"{folder}: no DICOM CT/MR image slices found ({what}"
            f"{' is a DICOM image' if n_files else ''})"
        )
    by_series: dict[str, list[_Slice]] = defaultdict(list)
    for s in slices:
        by_series[str(s.header.get("SeriesInstanceUID", ""))].append(s)
    if len(by_series) > 1:
        described = ", ".join(
            f"{uid} ({len(v)} slices, {v[0].header.get('Modality', '?')})"
            for uid, v in by_series.items()
        )
        raise InputError(f"{folder}: {len(by_series)} image series found, expected one: {described}")
    ordered, geometry = _sorted_geometry(slices, folder)
    array = np.stack([_pixels(s) for s in ordered])
    if array.dtype == np.int32 and array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)
    sop_uids = _sop_instance_uids(ordered, folder)
    header = ordered[0].header.copy()
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            del header[keyword]
    source = SourceInfo(
        path=folder,
        study_instance_uid=str(header.get("StudyInstanceUID", "")) or None,
        series_instance_uid=str(header.get("SeriesInstanceUID", "")) or None,
        frame_of_reference_uid=str(header.get("FrameOfReferenceUID", "")) or None,
        sop_instance_uids=sop_uids,
        modality=str(header.get("Modality", "")) or None,
        dicom_header=header,
    )
    return Volume(array, geometry, VolumeKind.IMAGE, source)


# ---------------------------------------------------------------------------------------------
# writing


def format_ds(value: float) -> str:
    """Format a number as a DICOM Decimal String of at most 16 characters.

    Uses the most significant digits that fit; a plain ``repr`` of a float can reach 20+
    characters, which ``dciodvfy`` and strict planning systems reject.
    """
    if not math.isfinite(value):
        raise ExportError(f"cannot write a non-finite number ({value}) as a DICOM DS")
    if value == 0:
        return "0"
    for digits in range(12, 0, -1):
        text = f"{value:.{digits}g}"
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{int(exponent)}"
        if len(text) <= 16:
            return text
    raise ExportError(f"cannot format {value} as a DICOM DS of 16 characters")


def _uid(seed: str | None, *parts: object) -> str:
    if seed is None:
        return str(generate_uid())
    return str(generate_uid(entropy_srcs=[seed, *[str(p) for p in parts]]))


def _to_stored(array: NDArray[Any], where: str) -> tuple[NDArray[np.int16], float, float]:
    """Convert HU values to int16 stored values plus (slope, intercept)."""
    values = np.asarray(array)
    if not np.all(np.isfinite(values)):
        raise ExportError(f"{where}: image contains NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    integral = np.issubdtype(values.dtype, np.integer) or bool(np.all(values == np.round(values)))
    if integral and lo >= -32768 and hi <= 32767:
        return values.astype(np.int16), 1.0, 0.0
    # Real-valued or out-of-range images are stored with a rescale that keeps 16 bits of range.
    intercept = (hi + lo) / 2.0
    slope = max((hi - lo) / 65000.0, 1e-6)
    stored = np.round((values - intercept) / slope).astype(np.int16)
    return stored, slope, intercept


def file_meta(ds: Dataset) -> FileMetaDataset:
    """File meta information for a dataset medseg writes (explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    return meta


def write_series(
    volume: Volume,
    out_dir: Path,
    *,
    modality: str = "CT",
    series_description: str = "medseg",
    patient_name: str = "ANONYMOUS",
    patient_id: str = "ANON",
    study_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    uid_seed: str | None = None,
    overwrite: bool = False,
) -> Volume:
    """Write an IMAGE volume as a single-frame CT Image Storage series, one file per slice.

    The folder is written atomically: it appears complete or not at all. Every Type 1 and
    Type 2 attribute of the CT Image IOD is present, so ``dciodvfy`` reports no errors.
    Oblique grids are written with their direction cosines; slice ``k``'s
    ImagePositionPatient is ``index_to_world((k, 0, 0))``.

    Args:
        volume: IMAGE volume, array order ``(slice, row, column)``, values in HU.
        out_dir: folder to create (must not exist unless ``overwrite``).
        modality: only ``"CT"`` is written for now.
        uid_seed: when given, UIDs are derived from it, so the output is reproducible.

    Returns:
        The same volume with ``source`` describing the written series.

    Raises:
        ExportError: unsupported modality, non-IMAGE volume, non-finite values, existing folder.
    """
    if modality != "CT":
        raise ExportError(f"{out_dir}: writing modality {modality!r} is not supported (only CT)")
    if volume.kind is not VolumeKind.IMAGE:
        raise ExportError(f"{out_dir}: only IMAGE volumes are written as CT, got {volume.kind.value}")
    g = volume.geometry
    where = str(out_dir)
    stored, slope, intercept = _to_stored(volume.array, where)
    study_uid = study_instance_uid or _uid(uid_seed, "study")
    series_uid = _uid(uid_seed, "series", series_number)
    frame_uid = frame_of_reference_uid or _uid(uid_seed, "frame")
    sop_uids = tuple(_uid(uid_seed, "sop", series_number, k) for k in range(g.shape[0]))
    positions = geo.slice_positions_mm(g)
    orientation = [format_ds(v) for v in geo.dicom_orientation(g)]
    pixel_spacing = [format_ds(v) for v in geo.dicom_pixel_spacing(g)]
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    normal = geo.slice_normal([float(v) for v in geo.dicom_orientation(g)])
    header: Dataset | None = None
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        for k in range(g.shape[0]):
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = sop_uids[k]
            ds.StudyDate = date
            ds.SeriesDate = date
            ds.ContentDate = date
            ds.StudyTime = time
            ds.SeriesTime = time
            ds.ContentTime = time
            ds.AccessionNumber = ""
            ds.Modality = "CT"
            ds.Manufacturer = "medseg"
            ds.ReferringPhysicianName = ""
            ds.StationName = ""
            ds.SeriesDescription = series_description
            ds.ManufacturerModelName = "medseg"
            ds.SoftwareVersions = medseg.__version__
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.BodyPartExamined = ""
            ds.SliceThickness = format_ds(g.spacing_mm[0])
            ds.KVP = ""
            ds.PatientPosition = "HFS"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = ""
            ds.SeriesNumber = series_number
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [format_ds(v) for v in positions[k]]
            ds.ImageOrientationPatient = orientation
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            ds.Laterality = ""
            ds.SliceLocation = format_ds(float(positions[k] @ normal))
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = g.shape[1]
            ds.Columns = g.shape[2]
            ds.PixelSpacing = pixel_spacing
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = format_ds(intercept)
            ds.RescaleSlope = format_ds(slope)
            ds.RescaleType = "HU"
            ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
            ds.file_meta = file_meta(ds)
            ds.save_as(tmp / f"CT_{k + 1:05d}.dcm", enforce_file_format=True)
            if header is None:
                header = ds.copy()
                del header.PixelData
    source = SourceInfo(
        path=Path(out_dir),
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        frame_of_reference_uid=frame_uid,
        sop_instance_uids=sop_uids,
        modality="CT",
        dicom_header=header,
    )
    return Volume(volume.array, g, VolumeKind.IMAGE, source)

