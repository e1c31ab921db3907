"""Reading DICOM header values that may be malformed, and files whose lengths may lie.

pydicom converts an element's raw bytes when it is first accessed, so a corrupt value (a length
that does not fit its VR, an unknown VR, a sequence whose items do not parse) raises at the
access, anywhere in the loaders. :func:`header_value` is the one way the loaders read a value
they convert: any failure becomes an :class:`~medseg.errors.UnreadableScanError` naming the
file. :class:`BoundedReader` keeps a corrupt element length from reserving memory.

:func:`read_dicom` is the one way medseg opens a DICOM file it scans or loads: through a
BoundedReader, and for the Deflated Explicit VR Little Endian transfer syntax through an
:class:`~medseg.io.limits.InflatedReader` (pydicom itself would inflate the whole data set
into memory first, so 1.4 MB of deflated zeros cost 1.4 GB before any check could run).
"""

from __future__ import annotations

import io
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import BytesLengthException
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from medseg.config import IngestConfig
from medseg.errors import MedsegError, UnreadableScanError
from medseg.io.limits import RAW_DEFLATE_WBITS, InflatedReader

__all__ = [
    "DEFLATED_HEADER_MAX_BYTES",
    "DEFLATED_MAX_BYTES",
    "HEADER_ERRORS",
    "BoundedReader",
    "finite",
    "header_value",
    "integer",
    "read_dicom",
]

#: What parsing the header of a deflated DICOM file may read into memory: every element
#: except the large ones pydicom defers (pixel data), i.e. sequences and undefined-length
#: values too. 256 MiB holds the largest real headers (enhanced multi-frame functional groups,
#: RT-STRUCT contour data are a few MB to tens of MB); more is a ResourceLimitError.
DEFLATED_HEADER_MAX_BYTES = 256 * 2**20

#: The most a deflated DICOM data set may inflate to: the largest image loading admits by
#: default (``IngestConfig().max_bytes``) plus a header of DEFLATED_HEADER_MAX_BYTES. Bytes
#: skipped are inflated and dropped a chunk at a time, so this bounds time (about a second
#: per GB), not memory; more is a ResourceLimitError.
DEFLATED_MAX_BYTES = IngestConfig().max_bytes + DEFLATED_HEADER_MAX_BYTES

#: What reading a malformed header value raises: pydicom converting the raw bytes on access
#: (BytesLengthException for a length that does not fit the VR, NotImplementedError for an
#: unknown VR, OSError/EOFError/struct.error for sequence items that do not parse, ValueError
#: for undecodable text), or Python converting the value to the number expected (TypeError
#: for a list where one value belongs, ValueError for "abc", OverflowError for 1e309). Caught
#: where a header value is read, and reported as that file's problem.
HEADER_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    AttributeError,
    KeyError,
    IndexError,
    BytesLengthException,
    OSError,
    EOFError,
    struct.error,
    NotImplementedError,
)


def header_value(ds: Dataset, keyword: str, convert: Any, default: Any, where: object) -> Any:
    """``convert(ds.keyword)``, ``default`` where it is absent or empty.

    Raises:
        UnreadableScanError: the value cannot be read or converted (names ``where``).
    """
    try:
        value = ds.get(keyword)
        if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
            return default
        return convert(value)
    except HEADER_ERRORS as exc:
        raise UnreadableScanError(f"{where}: {keyword} cannot be read ({exc})") from exc


def integer(value: Any) -> int:
    """An integer header value (US/SS/IS, or text of a whole number); ValueError otherwise."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"{value!r} is not a whole number")
    return int(number)


def finite(value: Any) -> float:
    """A finite number; ValueError for NaN or infinity."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{number} is not a finite number")
    return number


class BoundedReader(io.BufferedReader):
    """A file opened for reading whose ``read(n)`` never asks for more than the bytes left.

    A file object's ``read(n)`` reserves ``n`` bytes before reading, and pydicom reads the
    file meta elements (which it never defers) with the length they declare: a corrupt length
    of 4 GiB in a 1 KB file would reserve 4 GiB.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(str(path), "rb"))  # pydicom reopens deferred reads by a str name
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1, /) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(0, self._size - self.tell()))
        return super().read(size)


def read_dicom(
    path: Path,
    defer_size: int,
    *,
    where: object = None,
    max_bytes: int = DEFLATED_MAX_BYTES,
    header_max_bytes: int = DEFLATED_HEADER_MAX_BYTES,
) -> FileDataset:
    """The data set of a DICOM file, elements longer than ``defer_size`` read on access.

    A deflated file's data set is inflated as pydicom parses it (the deferred elements are
    skipped, not kept) and again, from the start, when a deferred element is read; the
    returned data set keeps its :class:`~medseg.io.limits.InflatedReader` as ``buffer``.

    Args:
        path: the file.
        defer_size: elements longer than this are read on first access.
        where: names the file in errors (default: ``path``).
        max_bytes: the most the deflated data set may inflate to.
        header_max_bytes: the most parsing a deflated data set may read into memory.

    Raises:
        InvalidDicomError, and the HEADER_ERRORS pydicom raises, for a file that is not
            DICOM or whose header does not parse (as ``pydicom.dcmread``).
        ResourceLimitError: a deflated data set over ``max_bytes``, or a header over
            ``header_max_bytes``.
        UnreadableScanError: a deflated data set that does not inflate (corrupt, truncated).
    """
    with BoundedReader(path) as fh:
        preamble = read_preamble(fh, False)
        file_meta = _read_file_meta_info(fh)
        if file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            fh.seek(0)
            return pydicom.dcmread(fh, defer_size=defer_size)
        start = fh.tell()
    stream = InflatedReader(
        path,
        wbits=RAW_DEFLATE_WBITS,
        start=start,
        limit=max_bytes,
        what=path if where is None else where,
        limit_name="the bound on a deflated DICOM data set",
    )
    stream.set_budget(header_max_bytes, "the bound on a deflated DICOM header")
    try:
        dataset = read_dataset(
            stream.as_binary_io(),
            is_implicit_VR=False,
            is_little_endian=True,
            defer_size=defer_size,
        )
    except HEADER_ERRORS as exc:
        if isinstance(stream.failure, MedsegError):  # pydicom turned ours into an OSError
            raise stream.failure from exc
        raise
    finally:
        stream.set_budget(None)
        stream.release()
    ds = FileDataset(stream.as_binary_io(), dataset, preamble, file_meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds
