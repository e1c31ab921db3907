"""DICOM CT series writing: strict, so a written series passes ``dciodvfy``.

Every Type 1 and Type 2 attribute of the CT Image IOD is written; numbers are formatted as
DICOM Decimal Strings of at most 16 characters, and every length-limited text value passes
:func:`fit_text`, the one policy for over-long text that the RT-STRUCT and SEG writers share.
:mod:`medseg.io.dicom` re-exports these names.
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.datadict import dictionary_VM, dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

import medseg
from medseg import geometry as geo
from medseg.errors import ExportError
from medseg.io.files import atomic_dir
from medseg.volume import SourceInfo, Volume, VolumeKind

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "TEXT_VR_MAX_CHARACTERS",
    "file_meta",
    "fit_text",
    "format_ds",
    "is_medseg_dicom",
    "write_series",
]

# A UUID-derived UID (ISO/IEC 9834-8 arc 2.25) that identifies medseg as the implementation.
IMPLEMENTATION_CLASS_UID = UID("2.25.208501962560291471238227467631826952322")

#: Longest value, in characters, of each length-limited text VR (DICOM PS3.5 Table 6.2-1).
#: The limit holds for each value of a multi-valued attribute, and for PN for each component
#: group (alphabetic, ideographic, phonetic). DS is formatted by :func:`format_ds`; UIDs are
#: generated; UT and UC have no practical limit.
TEXT_VR_MAX_CHARACTERS = {
    "AE": 16,
    "CS": 16,
    "SH": 16,
    "LO": 64,
    "PN": 64,
    "ST": 1024,
    "LT": 10240,
}

# VRs whose value is one text that may hold a backslash (PS3.5 6.2); in every other text VR a
# backslash separates values, and pydicom splits a string there when it is assigned.
_ONE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
# PN component groups are separated by "=" (PS3.5 6.2.1.1).
_PN_GROUP_SEPARATOR = "="


def fit_text(keyword: str, value: Any, *, copied: bool, where: str, what: str = "") -> Any:
    """``value`` for attribute ``keyword``, within its VR's length limit: the one policy for
    over-long DICOM text that every medseg writer (CT series, RT-STRUCT, SEG) follows.

    - **Composed values** (``copied=False``): what the user or medseg writes, such as ROI
      and segment names, descriptions, algorithm names and versions, manufacturer strings
      and a series description or patient name given as an option. Too long is an
      :class:`ExportError` naming the attribute, its VR, the limit and the length, never
      the value (it may be a patient's name). A backslash in a single-valued attribute is
      refused too: pydicom would split it into two values. Silently cutting a composed
      value would write something nobody asked for (and cut names can collide).
    - **Copied values** (``copied=True``): attributes copied from the reference image's
      header into the derived object (PatientName, PatientID, StudyID, AccessionNumber,
      StudyDescription, ReferringPhysicianName, ...). A value already too long there comes
      from a non-conformant source; refusing it would block every export of that scan, so
      each value is cut to the limit, with one warning per attribute naming it (never the
      value). The reference files are not changed.

    The limit is :data:`TEXT_VR_MAX_CHARACTERS` of the attribute's VR (from pydicom's data
    dictionary), for each value of a multi-valued attribute (split at backslashes, as pydicom
    does) and each PN component group; a value of another VR, a bytes value or an empty one
    is returned unchanged. A value that fits is returned as given.

    Args:
        keyword: the DICOM keyword, e.g. ``"StudyDescription"``.
        value: a string, a pydicom ``PersonName`` or ``MultiValue``, a list of strings, or
            ``None``.
        copied: whether the value was copied from the source header (see above).
        where: the file being written, for the message.
        what: for a composed value, where it comes from (e.g. ``"algorithm name, version
            and model_id"``), named in the message so the user knows what to shorten.

    Returns:
        The value, or for a copied one that is too long, the value cut to the limit (a
        string, or a list of strings for several values).

    Raises:
        ExportError: a composed value that is too long, or that holds a backslash where
            the attribute takes one value.
    """
    vr = dictionary_VR(keyword)
    limit = TEXT_VR_MAX_CHARACTERS.get(vr)
    if limit is None or value is None or isinstance(value, bytes | bytearray):
        return value
    if isinstance(value, str) or not isinstance(value, Sequence):
        text = str(value)
        values = [text] if vr in _ONE_TEXT_VRS else text.split("\\")
    else:  # MultiValue, list, tuple
        values = [str(v) for v in value]
    if not copied and len(values) > 1 and dictionary_VM(keyword) == "1":
        raise ExportError(
            f"{where}: {keyword}{f' ({what})' if what else ''} holds a backslash, which DICOM "
            "reads as a value separator, but takes one value"
        )
    separator = _PN_GROUP_SEPARATOR if vr == "PN" else None
    longest = max(len(part) for v in values for part in (v.split(separator) if separator else [v]))
    if longest <= limit:
        return value
    per = " per component group" if vr == "PN" else (" per value" if len(values) > 1 else "")
    problem = f"is {longest} characters, more than DICOM allows for {vr} ({limit}{per})"
    if not copied:
        raise ExportError(f"{where}: {keyword}{f' ({what})' if what else ''} {problem}")
    warnings.warn(
        f"{where}: {keyword} copied from the reference image {problem}; written cut to "
        f"{limit} characters (the reference is not conformant and is not changed)",
        stacklevel=2,
    )
    cut = [
        separator.join(part[:limit] for part in v.split(separator)) if separator else v[:limit]
        for v in values
    ]
    return cut[0] if len(cut) == 1 else cut


def is_medseg_dicom(path: Path, sop_class_uid: str | None = None) -> bool:
    """Whether ``path`` is a DICOM file medseg wrote (its file meta names medseg's
    implementation class UID) and, if ``sop_class_uid`` is given, of that SOP class: the only
    kind of existing file ``--overwrite`` replaces."""
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
    except (OSError, InvalidDicomError, ValueError, KeyError, EOFError, TypeError):
        return False
    if str(meta.get("ImplementationClassUID", "")) != IMPLEMENTATION_CLASS_UID:
        return False
    return sop_class_uid is None or str(meta.get("MediaStorageSOPClassUID", "")) == sop_class_uid


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
        ExportError: unsupported modality, non-IMAGE volume, non-finite values, existing
            folder, or a series description, patient name or ID longer than DICOM allows
            (see :func:`fit_text`).
    """
    if modality != "CT":
        raise ExportError(f"{out_dir}: writing modality {modality!r} is not supported (only CT)")
    if volume.kind is not VolumeKind.IMAGE:
        raise ExportError(
            f"{out_dir}: only IMAGE volumes are written as CT, got {volume.kind.value}"
        )
    g = volume.geometry
    where = str(out_dir)
    # given as options, so too long is refused (fit_text) before anything is written
    series_description = fit_text(
        "SeriesDescription", series_description, copied=False, where=where
    )
    patient_name = fit_text("PatientName", patient_name, copied=False, where=where)
    patient_id = fit_text("PatientID", patient_id, copied=False, where=where)
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
    with atomic_dir(Path(out_dir), overwrite=overwrite, marker=False) as tmp:
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
