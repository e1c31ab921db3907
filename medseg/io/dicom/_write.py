"""DICOM CT series writing: strict, so a written series passes ``dciodvfy``.

Every Type 1 and Type 2 attribute of the CT Image IOD is written; numbers are formatted as
DICOM Decimal Strings of at most 16 characters. :mod:`medseg.io.dicom` re-exports these names.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

import medseg
from medseg import geometry as geo
from medseg.errors import ExportError
from medseg.io.files import atomic_dir
from medseg.volume import SourceInfo, Volume, VolumeKind

__all__ = ["IMPLEMENTATION_CLASS_UID", "file_meta", "format_ds", "is_medseg_dicom", "write_series"]

# A UUID-derived UID (ISO/IEC 9834-8 arc 2.25) that identifies medseg as the implementation.
IMPLEMENTATION_CLASS_UID = UID("2.25.208501962560291471238227467631826952322")


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
        ExportError: unsupported modality, non-IMAGE volume, non-finite values, existing folder.
    """
    if modality != "CT":
        raise ExportError(f"{out_dir}: writing modality {modality!r} is not supported (only CT)")
    if volume.kind is not VolumeKind.IMAGE:
        raise ExportError(
            f"{out_dir}: only IMAGE volumes are written as CT, got {volume.kind.value}"
        )
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
