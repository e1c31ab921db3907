"""NIfTI (nibabel) and NRRD/MetaImage (SimpleITK) volumes.

NIfTI stores RAS; it is converted to our LPS once, here, through ``medseg.geometry``.

A ``.nii.gz`` is read through an :class:`~medseg.io.limits.InflatedReader`: its header and
extensions may inflate to :data:`NIFTI_HEADER_MAX_BYTES`, and once the header's declared size
has passed ``require_within_limits``, the stream is inflated only up to the end of the voxel
data it declares (a stream holding more is never inflated further; one holding less is an
UnreadableScanError), straight into the one array nibabel allocates for the voxels.
"""

from __future__ import annotations

import math
import warnings
import zlib
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from medseg import geometry as geo
from medseg.config import IngestConfig
from medseg.errors import ExportError, GeometryError, InputError, UnreadableScanError
from medseg.io.files import atomic_path
from medseg.io.limits import GZIP_WBITS, InflatedReader, require_within_limits
from medseg.volume import SourceInfo, Volume, VolumeKind

__all__ = ["is_image_file", "load", "save"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")

# nibabel raises these (and its own two) for unreadable headers and short or corrupt data
_NIBABEL_ERRORS = (
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
    OSError,
    EOFError,
    ValueError,
    OverflowError,
    TypeError,
    zlib.error,
)

#: The most the header and extensions of a ``.nii.gz`` may inflate to, before its declared
#: size is known (extensions are metadata: DICOM headers, CIFTI XML; a few MB at most).
NIFTI_HEADER_MAX_BYTES = 64 * 2**20

#: Bytes per voxel of SimpleITK's scalar pixel types.
_SITK_BYTES = {
    sitk.sitkUInt8: 1,
    sitk.sitkInt8: 1,
    sitk.sitkUInt16: 2,
    sitk.sitkInt16: 2,
    sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4,
    sitk.sitkUInt64: 8,
    sitk.sitkInt64: 8,
    sitk.sitkFloat32: 4,
    sitk.sitkFloat64: 8,
}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*_NIFTI_SUFFIXES, *_SITK_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file with a suffix :func:`load` reads (NIfTI, NRRD, MHA/MHD)."""
    path = Path(path)
    return path.is_file() and _suffix(path) in (*_NIFTI_SUFFIXES, *_SITK_SUFFIXES)


def _as_kind(array: NDArray[Any], kind: VolumeKind, path: Path) -> NDArray[Any]:
    if kind is not VolumeKind.LABELS or np.issubdtype(array.dtype, np.integer):
        return array
    if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
        raise InputError(
            f"{path}: a label map must hold integer values, got non-integer {array.dtype}"
        )
    if array.min() < 0 or array.max() > 65535:
        raise InputError(
            f"{path}: label values must be in 0..65535, got {array.min()}..{array.max()}"
        )
    return array.astype(np.uint16 if array.max() > 255 else np.uint8)


def _open_nifti(path: Path) -> tuple[nib.Nifti1Image, InflatedReader | None]:
    """The image with its voxels not read, and for a ``.nii.gz`` the reader they come from
    (inflating at most NIFTI_HEADER_MAX_BYTES until the caller raises its ``limit``)."""
    if _suffix(path) != ".nii.gz":
        return cast(nib.Nifti1Image, nib.load(str(path))), None
    stream = InflatedReader(
        path,
        wbits=GZIP_WBITS,
        limit=NIFTI_HEADER_MAX_BYTES,
        limit_name="the bound on a NIfTI header and its extensions",
    )
    head = stream.read(nib.Nifti2Header.sizeof_hdr)
    # the classes nib.load tries for a .nii file, by the same test of the header bytes
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        if klass.header_class.may_contain_header(head):
            stream.seek(0)
            # no mmap: numpy's memmap would seek to the end of the stream to find its size
            file_map = klass.make_file_map(
                {klass.files_types[0][0]: stream}  # type: ignore[dict-item]  # a file object
            )
            return cast(nib.Nifti1Image, klass.from_file_map(file_map, mmap=False)), stream
    raise UnreadableScanError(
        f"{path}: not a NIfTI file (the {len(head)} inflated bytes of its start hold no "
        "NIfTI-1 or NIfTI-2 header)"
    )


def _load_nifti(path: Path, ingest: IngestConfig) -> tuple[NDArray[Any], geo.Geometry]:
    try:
        image, stream = _open_nifti(path)
        shape = tuple(int(n) for n in image.shape)
        # dataobj applies scl_slope/scl_inter in floating point (float64 at most); nibabel
        # moves them from the header to the array proxy on load
        slope = float(getattr(image.dataobj, "slope", 1.0))
        inter = float(getattr(image.dataobj, "inter", 0.0))
        stored = np.dtype(image.get_data_dtype()).itemsize
    except _NIBABEL_ERRORS as exc:
        raise UnreadableScanError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3D image, got shape {shape}")
    scaled = slope != 1.0 or inter != 0.0
    require_within_limits(path, shape, 8 if scaled else stored, ingest)
    offset = int(getattr(image.dataobj, "offset", 0))
    needed = offset + math.prod(shape) * stored
    if stream is not None:  # inflate no further than the voxel data the header declares
        stream.limit = needed
        stream.limit_name = f"what its header declares (voxel data from byte {offset})"
    elif _suffix(path) == ".nii":  # a short file is refused before its voxels are allocated
        size = path.stat().st_size
        if size < needed:
            raise UnreadableScanError(
                f"{path}: the header declares {needed} bytes (voxel data from byte {offset}), "
                f"the file holds {size} (truncated file?)"
            )
    try:
        data = np.asanyarray(image.dataobj)
    except _NIBABEL_ERRORS as exc:
        raise UnreadableScanError(f"{path}: NIfTI voxel data cannot be read ({exc})") from exc
    data = data.reshape(shape)
    # nibabel silently "fixes" a zero pixdim to 1 on load; read the raw header to refuse it.
    header_class: Any = type(image.header)
    if stream is not None:
        stream.seek(0)
        raw = stream.read(header_class.sizeof_hdr)
        stream.release()
    else:
        with open(path, "rb") as fh:
            raw = fh.read(header_class.sizeof_hdr)
    raw_header = header_class(raw, check=False)
    zooms = raw_header["pixdim"][1:4]
    if any(not np.isfinite(z) or z <= 0 for z in zooms):
        raise GeometryError(
            f"{path}: voxel spacing (pixdim) must be > 0, got {tuple(map(float, zooms))}"
        )
    try:
        geometry = _qform_sform_geometry(image, data.shape, path)
    except _NIBABEL_ERRORS as exc:  # e.g. quaternion b, c, d of norm > 1: no rotation
        raise GeometryError(f"{path}: qform/sform cannot be read ({exc})") from exc
    except GeometryError as exc:
        if str(path) in str(exc):
            raise
        raise GeometryError(f"{path}: {exc}") from exc
    return geo.nifti_array_to_array_order(data), geometry


def _qform_sform_geometry(
    image: nib.Nifti1Image, shape: tuple[int, ...], path: Path
) -> geo.Geometry:
    """The grid nibabel and ITK agree on, warning when qform and sform disagree.

    nibabel uses the sform whenever ``sform_code > 0``; ITK (SimpleITK 2.x) uses it when
    ``sform_code`` is 1 (scanner) or the qform is unset, and the qform otherwise. Where the
    two affines place the grid differently and both readers take the same one, that one is
    used with a warning naming both; where they would take different ones, no reader's
    choice is safe and the file is refused.

    Raises:
        GeometryError: the two transforms differ and nibabel and ITK would pick different
            ones (sform_code 2-4 with a qform set).
    """
    header = image.header
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    geometry = geo.from_nifti_affine(image.affine, shape, what=str(path))
    if not qcode or not scode or qform is None or sform is None:
        return geometry
    from_q = geo.from_nifti_affine(qform, shape, what=f"{path} qform")
    from_s = geo.from_nifti_affine(sform, shape, what=f"{path} sform")
    if geo.geometries_equal(from_q, from_s):
        return geometry
    both = (
        f"qform (code {int(qcode)}) places voxel 0 at LPS {from_q.origin_mm} with direction "
        f"{from_q.direction}, sform (code {int(scode)}) at LPS {from_s.origin_mm} with direction "
        f"{from_s.direction}"
    )
    if int(scode) != 1:
        raise GeometryError(
            f"{path}: conflicting qform and sform: {both}; nibabel would use the sform and "
            "ITK/SimpleITK the qform, so the file is ambiguous (rewrite it with one transform)"
        )
    warnings.warn(
        f"{path}: conflicting qform and sform: {both}; using the sform (scanner), as nibabel "
        "and ITK/SimpleITK do",
        stacklevel=4,
    )
    return geometry


def _load_sitk(path: Path, ingest: IngestConfig) -> tuple[NDArray[Any], geo.Geometry]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UnreadableScanError(f"{path}: not a readable image ({exc})") from exc
    size = reader.GetSize()
    components = reader.GetNumberOfComponents()
    if len(size) != 3 or components != 1:
        raise InputError(
            f"{path}: expected a 3D scalar image, got dimension {len(size)} with "
            f"{components} components"
        )
    require_within_limits(path, size, _SITK_BYTES.get(reader.GetPixelID(), 8), ingest)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise UnreadableScanError(f"{path}: not a readable image ({exc})") from exc
    try:
        geometry = geo.from_sitk(
            image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
        )
    except GeometryError as exc:
        raise GeometryError(f"{path}: {exc}") from exc
    return sitk.GetArrayFromImage(image), geometry


def load(
    path: Path, kind: VolumeKind = VolumeKind.IMAGE, ingest: IngestConfig | None = None
) -> Volume:
    """Read a NIfTI (``.nii``, ``.nii.gz``) or NRRD/MetaImage file into a Volume.

    Args:
        path: the file.
        kind: what the values are (``LABELS`` must be integers).
        ingest: the largest image read (``max_voxels``, ``max_bytes``; default
            ``IngestConfig()``), checked against the header before any voxel is read.

    Returns:
        A volume in array order ``(slice, row, column)``, LPS geometry in mm. For ``LABELS``
        the values must be integers (stored as float is accepted only if exactly integral).

    Raises:
        UnreadableScanError: missing or unreadable file.
        GeometryError: zero/negative spacing, sheared or non-finite affine.
        InputError: not 3D, or non-integer labels.
        ResourceLimitError: the header declares more voxels or bytes than ``ingest`` allows.
    """
    path = Path(path)
    ingest = ingest or IngestConfig()
    if not path.is_file():
        raise UnreadableScanError(f"{path}: no such file")
    suffix = _suffix(path)
    if suffix in _NIFTI_SUFFIXES:
        array, geometry = _load_nifti(path, ingest)
    elif suffix in _SITK_SUFFIXES:
        array, geometry = _load_sitk(path, ingest)
    else:
        raise UnreadableScanError(
            f"{path}: unknown image format {suffix!r}; expected one of "
            f"{', '.join(_NIFTI_SUFFIXES + _SITK_SUFFIXES)}"
        )
    return Volume(_as_kind(array, kind, path), geometry, kind, SourceInfo(path=path))


def save(volume: Volume, path: Path) -> Path:
    """Write a 3D volume as NIfTI (``.nii``/``.nii.gz``) or NRRD, atomically.

    NIfTI gets both qform and sform set (code 1, scanner) to the RAS affine of the grid, and
    millimetre units, so every reader (nibabel, SimpleITK, ITK-SNAP, Slicer) places it alike.

    Raises:
        ExportError: unsupported suffix or a non-3D (probability) volume.
    """
    path = Path(path)
    if volume.array.ndim != 3:
        raise ExportError(f"{path}: only 3D volumes can be saved, got shape {volume.array.shape}")
    suffix = _suffix(path)
    with atomic_path(path) as tmp:
        if suffix in _NIFTI_SUFFIXES:
            image = nib.Nifti1Image(
                geo.array_to_nifti_order(np.asarray(volume.array)),
                geo.to_nifti_affine(volume.geometry),
            )
            image.set_qform(image.affine, code=1)
            image.set_sform(image.affine, code=1)
            image.header.set_xyzt_units("mm", "sec")
            # nibabel picks the format from the file name, so the temporary keeps the suffix
            named = tmp.with_name(tmp.name + suffix)
            nib.save(image, str(named))
            named.replace(tmp)
        elif suffix in _SITK_SUFFIXES:
            sitk_image = sitk.GetImageFromArray(np.asarray(volume.array))
            _size, spacing, origin, direction = geo.to_sitk(volume.geometry)
            sitk_image.SetSpacing(spacing)
            sitk_image.SetOrigin(origin)
            sitk_image.SetDirection(direction)
            named = tmp.with_name(tmp.name + suffix)
            sitk.WriteImage(sitk_image, str(named), True)
            named.replace(tmp)
        else:
            raise ExportError(f"{path}: unknown output format {suffix!r}")
    return path
