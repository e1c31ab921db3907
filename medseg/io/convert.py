"""DICOM series (+ RT-STRUCT) -> NIfTI image and one NIfTI mask per ROI.

The job people use dicom2nifti and dcmrtstruct2nii for, with medseg's checks: the series is
chosen by :class:`~medseg.config.SeriesSelection`, loaded with exact geometry (or refused with
a named error, or resampled where :class:`~medseg.config.IngestConfig` allows), and every ROI
is rasterised onto the image grid by :func:`medseg.io.rtstruct.read`. NIfTI is written by
:func:`medseg.io.nifti.save` (RAS converted once, qform and sform both set), so the files
reopen in nibabel and SimpleITK with the DICOM geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.config import IngestConfig, SeriesSelection
from medseg.errors import UnreadableScanError
from medseg.io import nifti
from medseg.io.dicom import load_series
from medseg.io.files import atomic_dir, check_output
from medseg.io.rtstruct import read
from medseg.privacy import unique_filenames

__all__ = ["Conversion", "convert_dicom"]


@dataclass(frozen=True, slots=True)
class Conversion:
    """What :func:`convert_dicom` wrote.

    Attributes:
        out_dir: the output folder.
        image: the image NIfTI (``image.nii.gz``).
        masks: ROI name -> its mask NIfTI (``masks/<name>.nii.gz``, uint8 0/1), in
            StructureSetROISequence order; empty without an RT-STRUCT.
        shape: the image's shape in array order ``(slice, row, column)``.
        series_instance_uid: the series that was converted.
    """

    out_dir: Path
    image: Path
    masks: dict[str, Path]
    shape: tuple[int, int, int]
    series_instance_uid: str | None


def _file_names(names: list[str]) -> list[str]:
    """A distinct, file-system-safe name per ROI name (``Lt Lung`` -> ``Lt_Lung``)."""
    return unique_filenames(names, fallback="roi")


def convert_dicom(
    dicom_dir: Path,
    out_dir: Path,
    *,
    rtstruct: Path | None = None,
    selection: SeriesSelection | None = None,
    ingest: IngestConfig | None = None,
    overwrite: bool = False,
) -> Conversion:
    """Write one DICOM series as ``image.nii.gz`` and an RT-STRUCT's ROIs as ``masks/*.nii.gz``.

    The output folder is written atomically: it appears complete or not at all, and the
    inputs are never written to.

    Args:
        dicom_dir: folder tree holding the image series (other series and objects are
            ignored according to ``selection``).
        out_dir: folder to create (must not exist unless ``overwrite``, and then only a
            folder medseg wrote is replaced).
        rtstruct: an RT-STRUCT drawn on that series; each ROI becomes one mask on the image
            grid (array order ``(slice, row, column)``, same geometry as the image).
        selection: which series to convert when the folder holds several.
        ingest: irregular-stack resampling and partial RT-STRUCT import
            (``unplaced_contours``); default: refuse both.
        overwrite: replace an existing ``out_dir``.

    Raises:
        InputError: from loading the series or reading the RT-STRUCT (named errors: no or
            several series, geometry defects, missing references, another frame of reference).
        OutputError: ``out_dir`` is, contains or lies inside an input, exists without
            ``overwrite`` or is not a medseg output, or cannot be written; checked before any
            work.
    """
    check_output(Path(out_dir), inputs=(dicom_dir, rtstruct), overwrite=overwrite)
    ingest = ingest or IngestConfig()
    if rtstruct is not None and not Path(rtstruct).is_file():
        raise UnreadableScanError(f"{rtstruct}: no such RT-STRUCT file")
    volume = load_series(Path(dicom_dir), selection, ingest)
    masks = (
        {} if rtstruct is None else read(Path(rtstruct), volume, unplaced=ingest.unplaced_contours)
    )
    names = _file_names(list(masks))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        nifti.save(volume, tmp / "image.nii.gz")
        if masks:
            (tmp / "masks").mkdir()
        for file_name, mask in zip(names, masks.values(), strict=True):
            nifti.save(mask, tmp / "masks" / f"{file_name}.nii.gz")
    return Conversion(
        out_dir=out_dir,
        image=out_dir / "image.nii.gz",
        masks={roi: out_dir / "masks" / f"{f}.nii.gz" for roi, f in zip(masks, names, strict=True)},
        shape=volume.geometry.shape,
        series_instance_uid=volume.source.series_instance_uid,
    )
