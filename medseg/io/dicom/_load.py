"""DICOM image series: loading one CT/MR series as a Volume.

Discovery and selection live in :mod:`medseg.io.dicom`, the geometry checks of a series'
slices in :mod:`medseg.io.dicom`; this module decodes the selected series' pixels, applies
the rescale and pixel padding. Writing CT series lives in :mod:`medseg.io.dicom`
(re-exported here: ``format_ds``, ``file_meta``, ``write_series``).

Reading is lenient (pydicom's default), writing is strict: a written CT series carries every
Type 1 and Type 2 attribute of the CT Image IOD so ``dciodvfy`` reports no errors.

Compressed transfer syntaxes (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE) are
decoded by pydicom's plugins: pylibjpeg (with pylibjpeg-libjpeg, -openjpeg, -rle), pyjpegls
and Pillow. Big-endian is handled by pydicom itself. A deflated file is inflated in bounded
chunks by :func:`medseg.io.dicom.read_dicom`; its uncompressed pixel data are read, like
those of any uncompressed file, as exactly the bytes the header declares (once the declared
size has passed the limits), never as whatever length the pixel data element claims.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medseg import geometry as geo
from medseg.config import IngestConfig, SeriesSelection
from medseg.errors import ResourceLimitError, UnreadableScanError
from medseg.io.dicom._discovery import SeriesKind, _scan, select_series
from medseg.io.dicom._headers import HEADER_ERRORS, header_value, integer
from medseg.io.dicom._slices import (
    ProblemKind,
    _Frame,
    _raise_first,
    _Record,
    _Regrid,
    _regrid,
)
from medseg.io.limits import InflatedReader, require_within_limits
from medseg.volume import SourceInfo, Volume, VolumeKind

__all__ = [
    "load_series",
]

#: Uncompressed transfer syntaxes whose pixel bytes are read directly (from the file, or for a
#: deflated file from its InflatedReader), with their byte order.
_NATIVE_BYTE_ORDER = {
    ImplicitVRLittleEndian: "<",
    ExplicitVRLittleEndian: "<",
    DeflatedExplicitVRLittleEndian: "<",
    ExplicitVRBigEndian: ">",
}

# pydicom's decoders and plugins raise all of these; we name the file instead.
_DECODE_ERRORS = (*HEADER_ERRORS, RuntimeError, NotImplementedError, OSError, EOFError)


def _decode(record: _Record) -> NDArray[Any]:
    """Stored values of every frame of one file, shape ``(frames, rows, columns)``."""
    ds = record.header
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        syntax = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
        order = _NATIVE_BYTE_ORDER.get(UID(syntax))
        bits = int(ds.get("BitsAllocated", 0) or 0)
        if (
            order is not None
            and bits in (8, 16, 32)
            and "PixelData" in ds
            and int(ds.get("SamplesPerPixel", 1)) == 1
        ):
            # What pydicom's native decoder does, without its per-call overhead (~0.7 ms/slice).
            kind = "i" if int(ds.get("PixelRepresentation", 0)) == 1 else "u"
            dtype = np.dtype(f"{order}{kind}{bits // 8}")
            count = n_frames * rows * columns
            layout = _deferred_layout(ds, dtype)
            length = len(ds.PixelData) if layout is None else layout[1]
            if length < count * dtype.itemsize:
                raise UnreadableScanError(
                    f"{record.path}: pixel data has {length} bytes, expected "
                    f"{count * dtype.itemsize} for {n_frames} x {rows} x {columns} pixels of "
                    f"{bits} bits (truncated file?)"
                )
            if layout is not None:  # the declared frames only, whatever the element claims
                out = np.empty((n_frames, rows, columns), dtype.newbyteorder("="))
                _read_native_into(record, layout, out)
                return out
            arr = np.frombuffer(ds.PixelData, dtype, count=count).reshape(n_frames, rows, columns)
            return arr.astype(dtype.newbyteorder("="), copy=False)
        arr = ds.pixel_array
        _release(record)
    except _DECODE_ERRORS as exc:
        raise UnreadableScanError(f"{record.path}: pixel data cannot be decoded ({exc})") from exc
    except BaseException as exc:
        # pylibjpeg-rle (Rust) panics on some corrupt RLE segments; pyo3 raises that as a
        # PanicException, which derives from BaseException. Anything else goes on.
        if type(exc).__name__ != "PanicException":
            raise
        raise UnreadableScanError(f"{record.path}: pixel data cannot be decoded ({exc})") from exc
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != (n_frames, rows, columns):
        raise UnreadableScanError(
            f"{record.path}: expected greyscale pixels of shape {(n_frames, rows, columns)}, "
            f"got {arr.shape}"
        )
    return arr


#: Threads that read the pixel data of a series' files (file reads and copies release the GIL).
_READ_THREADS = 4

_PIXEL_DATA_TAG = 0x7FE00010


def _native_layout(record: _Record) -> tuple[int, int, np.dtype[Any]] | None:
    """(file offset, byte length, stored dtype) of an uncompressed single-frame file's pixel
    data that pydicom deferred while scanning; None where pydicom must decode.

    Raises:
        UnreadableScanError: a header value it needs cannot be read (names the file).
    """
    try:
        return _native_layout_of(record)
    except HEADER_ERRORS as exc:
        raise UnreadableScanError(
            f"{record.path}: pixel data attributes cannot be read ({exc})"
        ) from exc


def _native_layout_of(record: _Record) -> tuple[int, int, np.dtype[Any]] | None:
    ds = record.header
    if int(ds.get("NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    syntax = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
    order = _NATIVE_BYTE_ORDER.get(UID(syntax))
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if order is None or bits not in (8, 16, 32):
        return None
    kind = "i" if int(ds.get("PixelRepresentation", 0)) == 1 else "u"
    return _deferred_layout(ds, np.dtype(f"{order}{kind}{bits // 8}"))


def _deferred_layout(ds: Dataset, dtype: np.dtype[Any]) -> tuple[int, int, np.dtype[Any]] | None:
    """(offset, byte length, dtype) of pixel data pydicom deferred with a defined length: the
    offset in the file, or for a deflated file in its inflated data set; None otherwise."""
    if _PIXEL_DATA_TAG not in ds:
        return None
    raw = ds.get_item(_PIXEL_DATA_TAG, keep_deferred=True)
    if not isinstance(raw, RawDataElement) or raw.value is not None or raw.length == 0xFFFFFFFF:
        return None
    return raw.value_tell, raw.length, dtype


def _inflated(record: _Record) -> InflatedReader | None:
    """The reader of a deflated file's data set (see ``medseg.io.dicom.read_dicom``)."""
    stream = getattr(record.header, "buffer", None)
    return stream if isinstance(stream, InflatedReader) else None


def _release(record: _Record) -> None:
    """Close a deflated file's reader after a read (a series may have thousands)."""
    stream = _inflated(record)
    if stream is not None:
        stream.release()


def _require_length(
    record: _Record, layout: tuple[int, int, np.dtype[Any]], rows: int, columns: int
) -> None:
    """UnreadableScanError unless the pixel data element holds rows x columns stored values."""
    _offset, length, dtype = layout
    needed = rows * columns * dtype.itemsize
    if length < needed:
        raise UnreadableScanError(
            f"{record.path}: pixel data has {length} bytes, expected {needed} for "
            f"{rows} x {columns} pixels of {dtype.itemsize * 8} bits"
        )


def _read_native_into(
    record: _Record, layout: tuple[int, int, np.dtype[Any]], out: NDArray[Any]
) -> None:
    """Read one uncompressed slice's stored values straight from its file into ``out``
    (whose size :func:`_require_length` has checked against the element's length)."""
    offset, _length, dtype = layout
    needed = out.size * dtype.itemsize
    stream = _inflated(record)
    if stream is not None:
        try:
            stream.seek(offset)
            got = stream.readinto(out)
        finally:
            stream.release()
    else:
        with open(record.path, "rb", buffering=0) as fh:
            fh.seek(offset)
            got = fh.readinto(memoryview(out).cast("B"))  # type: ignore[arg-type]
    if got != needed:
        raise UnreadableScanError(
            f"{record.path}: pixel data ends after {got} of {needed} bytes (truncated file?)"
        )
    if dtype.byteorder == ">":
        out.byteswap(inplace=True)


def _stored_values(frames: Sequence[_Frame]) -> NDArray[Any]:
    """Stored values of every frame in array order, ``(slice, row, column)``.

    Uncompressed single-frame files (the common CT/MR export) are read straight into the
    output array by a few threads; everything else is decoded by pydicom, one file at a time.
    """
    first = frames[0]
    layouts = [None if f.index is not None else _native_layout(f.record) for f in frames]
    dtypes = {layout[2].newbyteorder("=") for layout in layouts if layout is not None}
    if all(layout is not None for layout in layouts) and len(dtypes) == 1:
        for frame, layout in zip(frames, layouts, strict=True):
            assert layout is not None
            _require_length(frame.record, layout, first.rows, first.columns)
        native = np.empty((len(frames), first.rows, first.columns), dtypes.pop())

        def read(k: int) -> None:
            layout = layouts[k]
            assert layout is not None
            _read_native_into(frames[k].record, layout, native[k])

        with ThreadPoolExecutor(min(_READ_THREADS, len(frames))) as pool:
            list(pool.map(read, range(len(frames))))
        return native
    out: NDArray[Any] | None = None
    cache: dict[Path, NDArray[Any]] = {}  # multi-frame files are decoded once
    for k, frame in enumerate(frames):
        if frame.index is None:
            pixels = _decode(frame.record)[0]
        else:
            if frame.record.path not in cache:
                cache[frame.record.path] = _decode(frame.record)
            pixels = cache[frame.record.path][frame.index]
        if out is None:
            out = np.empty((len(frames), first.rows, first.columns), pixels.dtype)
        elif pixels.dtype != out.dtype:
            out = out.astype(np.result_type(out.dtype, pixels.dtype))
        out[k] = pixels
    assert out is not None
    return out


def _padding(value: Any) -> int | None:
    """A padding value; None where pydicom left it as bytes (US or SS not resolved)."""
    return None if isinstance(value, bytes) else integer(value)


def _padding_mask(frames: Sequence[_Frame], stored: NDArray[Any]) -> NDArray[np.bool_] | None:
    """Voxels equal to PixelPaddingValue (or within it and PixelPaddingRangeLimit)."""
    mask: NDArray[np.bool_] | None = None
    for k, frame in enumerate(frames):
        header, where = frame.record.header, frame.record.path
        value = header_value(header, "PixelPaddingValue", _padding, None, where)
        if value is None:
            continue
        limit = header_value(header, "PixelPaddingRangeLimit", _padding, None, where)
        lo, hi = sorted((value, value if limit is None else limit))
        if mask is None:
            mask = np.zeros(stored.shape, bool)
        mask[k] = (stored[k] >= lo) & (stored[k] <= hi)
    return mask


def _rescaled(frames: Sequence[_Frame], stored: NDArray[Any]) -> NDArray[Any]:
    """Apply each slice's RescaleSlope/Intercept and replace padding voxels.

    Integer output (int16 when the values fit, else int32/int64) when every slope is 1 and
    every intercept an integer; float32 otherwise. Padding voxels (PixelPaddingValue) become
    the smallest rescaled value among the non-padding voxels, so they read as background
    (air in CT) instead of e.g. -2000 or 63536.
    """
    slopes = np.array([f.slope for f in frames])
    intercepts = np.array([f.intercept for f in frames])
    mask = _padding_mask(frames, stored)
    if np.all(slopes == 1.0) and np.all(intercepts == np.round(intercepts)):
        offsets = intercepts.astype(np.int64)
        lo = min(int(stored.min()) + int(offsets.min()), int(offsets.min()))
        hi = max(int(stored.max()) + int(offsets.max()), int(offsets.max()))
        dtype = next(
            t
            for t in (np.int16, np.int32, np.int64)
            if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max
        )
        # Every result fits dtype, so the wrap-around of an intermediate cast (uint16 > 32767
        # to int16) is undone exactly by the modular addition of the offset.
        values: NDArray[Any] = stored.astype(dtype, copy=False)  # stored is ours to reuse
        if np.any(offsets):
            np.add(values, offsets.astype(dtype)[:, None, None], out=values)
    else:
        values = stored.astype(np.float32)
        np.multiply(values, slopes.astype(np.float32)[:, None, None], out=values)
        np.add(values, intercepts.astype(np.float32)[:, None, None], out=values)
    if mask is not None and mask.any() and not mask.all():
        values[mask] = values[~mask].min()
    return values


def _sop_instance_uids(frames: Sequence[_Frame], where: Path) -> tuple[str, ...]:
    """SOPInstanceUID per slice, falling back to the file meta's MediaStorageSOPInstanceUID.

    Some anonymisers blank (0008,0018) but keep (0002,0003); e.g. TotalSegmentator's example
    series. Reading goes on with one warning per series that names the tag. Frames of one
    multi-frame file share its UID.
    """
    uids = []
    replaced = []
    for frame in frames:
        header, where_file = frame.record.header, frame.record.path
        uid = header_value(header, "SOPInstanceUID", str, "", where_file)
        if not uid:
            meta = getattr(header, "file_meta", None)
            uid = header_value(
                meta if isinstance(meta, Dataset) else Dataset(),
                "MediaStorageSOPInstanceUID",
                str,
                "",
                where_file,
            )
            if not uid:
                raise UnreadableScanError(
                    f"{frame.record.path}: SOPInstanceUID (0008,0018) is missing or empty"
                )
            replaced.append(frame.record.name)
        uids.append(uid)
    if replaced:
        warnings.warn(
            f"{where}: SOPInstanceUID (0008,0018) is empty in {len(replaced)} of {len(frames)} "
            f"slices (first: {replaced[0]}); using MediaStorageSOPInstanceUID (0002,0003) instead",
            stacklevel=3,
        )
    files = {frame.record.path for frame in frames}
    if len(set(uids)) != len(files):
        raise UnreadableScanError(f"{where}: two files share one SOPInstanceUID")
    return tuple(uids)


def _frame_numbers(frames: Sequence[_Frame]) -> tuple[int | None, ...]:
    """1-based frame number of every slice taken from a multi-frame file; () when none is."""
    if all(frame.index is None for frame in frames):
        return ()
    return tuple(None if frame.index is None else frame.index + 1 for frame in frames)


def _resampled(array: NDArray[Any], plan: _Regrid) -> NDArray[np.float32]:
    """``array`` (sorted acquired slices) interpolated onto ``plan.geometry`` (float32)."""
    from scipy import ndimage

    values = array.astype(np.float32)
    fill = float(values.min())
    for k in np.nonzero(np.any(plan.shift_px != 0.0, axis=1))[0]:
        values[k] = ndimage.shift(values[k], plan.shift_px[k], order=1, mode="constant", cval=fill)
    w = plan.weight.astype(np.float32)[:, None, None]
    return (1.0 - w) * values[plan.lower] + w * values[plan.lower + 1]


def _require_within_limits(
    frames: Sequence[_Frame],
    geometry: geo.Geometry,
    resampled: bool,
    ingest: IngestConfig,
    folder: Path,
) -> None:
    """ResourceLimitError if the series' declared size is over ``ingest``'s limits.

    Counts the larger of the acquired and the loaded stack, and per voxel the larger of the
    stored bytes (BitsAllocated x SamplesPerPixel) and the loaded ones (float32 when rescaled
    by a non-unit slope or a fractional intercept, or resampled).
    """
    first = frames[0]
    header, where = first.record.header, first.record.path
    bits = header_value(header, "BitsAllocated", integer, 16, where)
    samples = header_value(header, "SamplesPerPixel", integer, 1, where)
    stored = max(1, -(-bits // 8)) * max(1, samples)
    fractional = any(f.slope != 1.0 or not float(f.intercept).is_integer() for f in frames)
    loaded = 4 if resampled or fractional else stored
    n_slices = max(len(frames), geometry.shape[0])
    require_within_limits(
        folder, (n_slices, first.rows, first.columns), max(stored, loaded), ingest
    )


def load_series(
    folder: Path, selection: SeriesSelection | None = None, ingest: IngestConfig | None = None
) -> Volume:
    """Read one CT/MR image series from ``folder`` (any nesting, any file names).

    Every DICOM header under ``folder`` is parsed once; the series is chosen by ``selection``
    (default: ``SeriesSelection()``, i.e. the one CT/MR series that is not a localizer), and
    only its pixel data is read. Enhanced multi-frame CT/MR files give one slice per frame.

    Args:
        folder: a folder tree holding the series, possibly among other series and objects.
        selection: which series to load when there are several.
        ingest: whether uneven spacing, missing slices and gantry tilt are refused (the
            default) or resampled onto a regular orthogonal grid with a warning, and the
            largest series (``max_voxels``, ``max_bytes``) that is read.

    Returns:
        An IMAGE volume in array order ``(slice, row, column)``; slices sorted along the slice
        normal. Values are rescaled (HU for CT); integer when every RescaleSlope is 1 and every
        intercept an integer, float32 otherwise. Voxels equal to PixelPaddingValue are set to
        the smallest non-padding value of the volume. A volume resampled because ``ingest``
        allows it is float32, has no SOP Instance UIDs, and its loading warns with the
        slices and the reason.

    Raises:
        UnreadableScanError: no DICOM image files, a DICOM file that cannot be parsed, or a
            slice whose pixels cannot be decoded (each names the file).
        InputError: no series, or several series, match ``selection`` (they are listed).
        ResourceLimitError: slices x rows x columns, or the bytes they need, are over
            ``ingest.max_voxels`` or ``ingest.max_bytes`` (checked before any pixel is read).
        GeometryError: MissingSliceError, DuplicateSliceError, UnevenSpacingError,
            MixedOrientationError, MixedPixelSpacingError, GantryTiltError, or missing
            geometry attributes; each names the folder and the files.
    """
    folder = Path(folder)
    scan = _scan(folder)
    inventory = scan.inventory
    if inventory.problems:
        shown = "; ".join(p.message for p in inventory.problems[:5])
        more = f"; and {len(inventory.problems) - 5} more" if len(inventory.problems) > 5 else ""
        too_large = any(p.kind is ProblemKind.TOO_LARGE for p in inventory.problems)
        raise (ResourceLimitError if too_large else UnreadableScanError)(
            f"{folder}: {len(inventory.problems)} file(s) cannot be read: {shown}{more}"
        )
    if not any(s.kind is SeriesKind.VOLUME for s in inventory.series):
        n = inventory.n_files
        what = "the folder is empty" if n == 0 else f"none of its {n} files is a DICOM image"
        raise UnreadableScanError(f"{folder}: no DICOM CT/MR image slices found ({what})")
    entry = select_series(inventory, selection)
    stack = scan.stacks.get(entry.series_instance_uid)
    if stack is None:  # not one readable slice with geometry
        _raise_first(entry.problems, folder)
    ingest = ingest or IngestConfig()
    allow = set()
    if ingest.irregular_slices == "resample":
        allow |= {ProblemKind.UNEVEN_SPACING, ProblemKind.MISSING_SLICES}
    if ingest.gantry_tilt == "resample":
        allow.add(ProblemKind.GANTRY_TILT)
    plan = None
    if stack.problems and allow and all(p.kind in allow for p in stack.problems):
        plan = _regrid(stack, allow, ingest.max_interpolated_slices, folder)
        geometry = plan.geometry
    else:
        geometry = stack.require_geometry(folder)
    frames = stack.frames
    _require_within_limits(frames, geometry, plan is not None, ingest, folder)
    array = _rescaled(frames, _stored_values(frames))
    sop_uids = _sop_instance_uids(frames, folder)
    frame_numbers = _frame_numbers(frames)
    if plan is not None:
        array = _resampled(array, plan)
        sop_uids, frame_numbers = (), ()
        warnings.warn(plan.summary, stacklevel=2)
    header = frames[0].record.header.copy()
    for keyword in (
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "PerFrameFunctionalGroupsSequence",
    ):
        if keyword in header:
            del header[keyword]
    where = frames[0].record.path

    def text(keyword: str) -> str | None:
        return header_value(header, keyword, str, None, where)  # type: ignore[no-any-return]

    source = SourceInfo(
        path=folder,
        study_instance_uid=text("StudyInstanceUID"),
        series_instance_uid=text("SeriesInstanceUID"),
        frame_of_reference_uid=text("FrameOfReferenceUID"),
        sop_instance_uids=sop_uids,
        modality=text("Modality"),
        frame_numbers=frame_numbers,
        dicom_header=header,
    )
    return Volume(array, geometry, VolumeKind.IMAGE, source)
