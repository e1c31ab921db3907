"""Reading DICOM header values that may be malformed, and files whose lengths may lie.

pydicom converts an element's raw bytes when it is first accessed, so a corrupt value (a length
that does not fit its VR, an unknown VR, a sequence whose items do not parse) raises at the
access, anywhere in the loaders. :func:`header_value` is the one way the loaders read a value
they convert: any failure becomes an :class:`~medseg.errors.UnreadableScanError` naming the
file. :class:`BoundedReader` keeps a corrupt element length from reserving memory.
"""

from __future__ import annotations

import io
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException

from medseg.errors import UnreadableScanError

__all__ = ["HEADER_ERRORS", "BoundedReader", "finite", "header_value", "integer"]

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
