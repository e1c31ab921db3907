"""RT-STRUCT readers (and rt-utils' exporter) that need pydicom < 3; run in the side venv.

``benchmarks/readers.py`` runs this file with the side virtualenv's python (see
``requirements.txt``); it never imports medseg. Two commands:

``read --rtss F --ct DIR --out DIR --readers rt-utils,platipy,dicompyler``
    For each reader, ``OUT/<reader>/manifest.json`` holds the reader's grid (SimpleITK
    conventions: size, spacing, origin and direction in (x, y, z) = (column, row, slice)) and per
    ROI either ``{"mask": "<n>.npy"}`` (uint8, axes (slice, row, column) on that grid),
    ``{"volume_ml": v}`` (dicompyler: volume only) or ``{"error": "..."}``. A reader that fails
    as a whole writes ``{"error": "..."}``.

``export-rt-utils --ct DIR --masks DIR --out FILE``
    Writes the masks in ``DIR/manifest.json`` (uint8 ``.npy`` files, axes (slice, row,
    column) in the order of ``sop_instance_uids``) with rt-utils' ``RTStructBuilder``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pydicom

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
#: Uniform dose written on the CT grid: 100 stored x 0.01 Gy = 1 Gy, so every voxel inside a
#: structure falls in one DVH bin and the DVH's total volume is the structure's volume.
DOSE_STORED, DOSE_SCALING_GY = 100, "0.01"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:300]


def _write_manifest(folder: Path, manifest: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def grid_of_sorted_slices(datasets: list) -> dict:
    """SimpleITK-style grid of slices already in the reader's order (first = index 0)."""
    first = datasets[0]
    row_dir = np.array(first.ImageOrientationPatient[:3], dtype=float)  # +column index
    col_dir = np.array(first.ImageOrientationPatient[3:], dtype=float)  # +row index
    normal = np.cross(row_dir, col_dir)
    if len(datasets) > 1:
        step = (
            np.array(datasets[-1].ImagePositionPatient, float)
            - np.array(first.ImagePositionPatient, float)
        ) / (len(datasets) - 1)
        slice_dir, slice_mm = step / np.linalg.norm(step), float(np.linalg.norm(step))
    else:
        slice_dir, slice_mm = normal, float(getattr(first, "SliceThickness", 1.0) or 1.0)
    direction = np.column_stack([row_dir, col_dir, slice_dir])
    row_mm, column_mm = (float(v) for v in first.PixelSpacing)
    return {
        "size_xyz": [int(first.Columns), int(first.Rows), len(datasets)],
        "spacing_xyz": [column_mm, row_mm, slice_mm],
        "origin_xyz": [float(v) for v in first.ImagePositionPatient],
        "direction_xyz": [float(v) for v in direction.ravel()],
    }


def grid_of_sitk(image) -> dict:
    return {
        "size_xyz": list(image.GetSize()),
        "spacing_xyz": list(image.GetSpacing()),
        "origin_xyz": list(image.GetOrigin()),
        "direction_xyz": list(image.GetDirection()),
    }


# ---------------------------------------------------------------------------------------------
# readers


def read_rt_utils(rtss: Path, ct_dir: Path, out: Path) -> dict:
    """``RTStructBuilder.create_from(...).get_roi_mask_by_name(name)`` for every ROI.

    rt-utils sorts the series by position along cross(row, column) direction (ascending) and
    returns masks indexed ``[row, column, slice]`` in that order (its docs say rows, cols,
    slices; the array is allocated as (Columns, Rows, n), which is the same for square images);
    they are transposed here to (slice, row, column).
    """
    from rt_utils import RTStructBuilder

    rt = RTStructBuilder.create_from(dicom_series_path=str(ct_dir), rt_struct_path=str(rtss))
    manifest = {"grid": grid_of_sorted_slices(rt.series_data), "rois": {}}
    for n, name in enumerate(rt.get_roi_names()):
        try:
            mask = rt.get_roi_mask_by_name(name)
        except Exception as exc:  # noqa: BLE001 - the benchmark reports a reader's failure
            manifest["rois"][name] = {"error": _error(exc)}
            continue
        np.save(
            out / f"{n}.npy", np.ascontiguousarray(np.transpose(mask, (2, 0, 1))).astype(np.uint8)
        )
        manifest["rois"][name] = {"mask": f"{n}.npy"}
    return manifest


def read_platipy(rtss: Path, ct_dir: Path, out: Path) -> dict:
    """platipy's ``transform_point_set_from_dicom_struct`` (what ``convert_rtstruct`` calls).

    The image is read as platipy reads it (SimpleITK/GDCM series reader); masks come back as
    SimpleITK images on that grid. platipy skips ROIs without contours and renames ROIs
    (``"_".join(name.split())``); names are mapped back here.
    """
    import SimpleITK as sitk
    from platipy.dicom.io.rtstruct_to_nifti import (
        read_dicom_image,
        read_dicom_struct_file,
        transform_point_set_from_dicom_struct,
    )

    image = read_dicom_image(ct_dir)
    ds = read_dicom_struct_file(rtss)
    masks, names = transform_point_set_from_dicom_struct(image, ds)
    original = {"_".join(r.ROIName.split()): r.ROIName for r in ds.StructureSetROISequence}
    manifest = {"grid": grid_of_sitk(image), "rois": {}}
    for n, (mask, name) in enumerate(zip(masks, names, strict=True)):
        np.save(out / f"{n}.npy", sitk.GetArrayFromImage(mask).astype(np.uint8))
        manifest["rois"][original.get(name, name)] = {"mask": f"{n}.npy"}
    for roi in ds.StructureSetROISequence:
        manifest["rois"].setdefault(roi.ROIName, {"skipped": "no mask returned by platipy"})
    return manifest


def _ct_headers(ct_dir: Path) -> list:
    """CT headers sorted by position along the slice normal (ascending), no pixel data."""
    headers = []
    for path in sorted(p for p in ct_dir.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if "ImagePositionPatient" in ds:
            headers.append(ds)
    normal = np.cross(*(np.array(headers[0].ImageOrientationPatient, float).reshape(2, 3)))
    return sorted(
        headers, key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float)))
    )


def write_uniform_dose(ct_dir: Path, path: Path) -> float:
    """An RT Dose of 1 Gy everywhere on the CT grid; returns the CT slice spacing (mm)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    headers = _ct_headers(ct_dir)
    first = headers[0]
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in headers])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RT_DOSE_STORAGE, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = RT_DOSE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTDOSE"
    ds.FrameOfReferenceUID = first.get("FrameOfReferenceUID", generate_uid())
    ds.PatientPosition = first.get("PatientPosition", "HFS")
    ds.ImagePositionPatient = list(first.ImagePositionPatient)
    ds.ImageOrientationPatient = list(first.ImageOrientationPatient)
    ds.PixelSpacing = list(first.PixelSpacing)
    ds.Rows, ds.Columns, ds.NumberOfFrames = int(first.Rows), int(first.Columns), len(headers)
    ds.GridFrameOffsetVector = [f"{v:.6g}" for v in z - z[0]]
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.DoseGridScaling = DOSE_SCALING_GY
    ds.PixelData = np.full((len(headers), ds.Rows, ds.Columns), DOSE_STORED, np.uint16).tobytes()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.save_as(str(path), write_like_original=False)
    return float(abs(z[-1] - z[0]) / (len(z) - 1)) if len(z) > 1 else 1.0


def read_dicompyler(rtss: Path, ct_dir: Path, out: Path) -> dict:
    """``dvhcalc.get_dvh(rtss, uniform_dose, roi).volume`` (mL) for every ROI.

    dicompyler takes the slab thickness of a structure from the smallest gap between its
    planes, which is 0 for a structure on one slice; there the CT slice spacing is passed as
    ``thickness``. dicompyler's own ``CalculateStructureVolume`` is not used: it counts the end
    slices at half area.
    """
    from dicompylercore import dicomparser, dvhcalc

    dose_path = out / "uniform-dose.dcm"
    slice_mm = write_uniform_dose(ct_dir, dose_path)
    parser = dicomparser.DicomParser(str(rtss))
    manifest: dict = {"grid": None, "rois": {}, "notes": []}
    for number, structure in parser.GetStructures().items():
        try:
            planes = parser.GetStructureCoordinates(number)
            thickness = slice_mm if len(planes) == 1 else None
            if thickness:
                manifest["notes"].append(f"{structure['name']}: one plane, thickness {slice_mm} mm")
            dvh = dvhcalc.get_dvh(str(rtss), str(dose_path), number, thickness=thickness)
            manifest["rois"][structure["name"]] = {"volume_ml": float(dvh.volume)}
        except Exception as exc:  # noqa: BLE001 - the benchmark reports a reader's failure
            manifest["rois"][structure["name"]] = {"error": _error(exc)}
    return manifest


READERS = {"rt-utils": read_rt_utils, "platipy": read_platipy, "dicompyler": read_dicompyler}
DISTRIBUTIONS = {"rt-utils": "rt-utils", "platipy": "platipy", "dicompyler": "dicompyler-core"}


def command_read(args: argparse.Namespace) -> None:
    for name in args.readers.split(","):
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        version = metadata.version(DISTRIBUTIONS[name])
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                manifest = READERS[name](args.rtss, args.ct, folder)
        except Exception as exc:  # noqa: BLE001 - the benchmark reports a reader's failure
            manifest = {"error": _error(exc), "traceback": traceback.format_exc()[-2000:]}
        manifest.update(
            reader=name,
            version=version,
            pydicom=pydicom.__version__,
            seconds=time.perf_counter() - start,
        )
        _write_manifest(folder, manifest)


# ---------------------------------------------------------------------------------------------
# rt-utils exporter (baseline)


def command_export_rt_utils(args: argparse.Namespace) -> None:
    """rt-utils wants each mask as (row, column, slice) in its own slice order."""
    from rt_utils import RTStructBuilder

    spec = json.loads((args.masks / "manifest.json").read_text())
    builder = RTStructBuilder.create_new(dicom_series_path=str(args.ct))
    position = {ds.SOPInstanceUID: i for i, ds in enumerate(builder.series_data)}
    order = [position[uid] for uid in spec["sop_instance_uids"]]  # ours -> rt-utils slice
    if sorted(order) != list(range(len(builder.series_data))):
        raise SystemExit(f"slices do not match rt-utils' series: {order}")
    skipped = []
    for roi in spec["rois"]:
        ours = np.load(args.masks / roi["file"]).astype(bool)
        if not ours.any():
            skipped.append(roi["name"])  # rt-utils refuses empty masks
            continue
        theirs = np.zeros((ours.shape[1], ours.shape[2], ours.shape[0]), dtype=bool)
        theirs[:, :, order] = np.transpose(ours, (1, 2, 0))
        builder.add_roi(mask=theirs, name=roi["name"], color=list(roi["color"]))
    builder.save(str(args.out))
    print(json.dumps({"skipped_empty": skipped, "version": metadata.version("rt-utils")}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    read = sub.add_parser("read")
    read.add_argument("--rtss", type=Path, required=True)
    read.add_argument("--ct", type=Path, required=True)
    read.add_argument("--out", type=Path, required=True)
    read.add_argument("--readers", default=",".join(READERS))
    export = sub.add_parser("export-rt-utils")
    export.add_argument("--ct", type=Path, required=True)
    export.add_argument("--masks", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    {"read": command_read, "export-rt-utils": command_export_rt_utils}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
