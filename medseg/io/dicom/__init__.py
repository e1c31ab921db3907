"""DICOM image series: find them in a folder tree, check their slices, load one, write one.

The scan path, in reading order:

- :func:`scan_folder` walks a tree (any nesting, any file names), parses every DICOM header
  once and returns an :class:`Inventory`: studies, their series, and the :class:`Problem`\\ s of
  each (missing, duplicate or unevenly spaced slices, mixed orientations, gantry tilt).
- :func:`select_series` applies a :class:`~medseg.config.SeriesSelection` to an inventory.
- :func:`load_series` decodes the selected series' pixels into a :class:`~medseg.volume.Volume`,
  raising the named error of its first problem.
- :func:`write_series` writes a CT series strictly (``dciodvfy`` reports no errors).

:func:`fit_text` is the one policy every medseg DICOM writer (CT, RT-STRUCT, SEG) applies to
length-limited text: a composed value that is too long is refused, one copied from the source
header is cut with a warning.

Every DICOM file medseg scans or loads is opened by :func:`read_dicom` (bounded reads, streamed
inflation), and every header value it converts is read by :func:`header_value`, so a corrupt
file is an :class:`~medseg.errors.UnreadableScanError` naming it. The modules behind this
package are private; import from ``medseg.io.dicom``.
"""

from __future__ import annotations

from medseg.io.dicom._discovery import (
    Inventory,
    SeriesEntry,
    SeriesKind,
    StudyEntry,
    scan_folder,
    select_series,
)
from medseg.io.dicom._headers import (
    DEFLATED_HEADER_MAX_BYTES,
    DEFLATED_MAX_BYTES,
    HEADER_ERRORS,
    BoundedReader,
    finite,
    header_value,
    integer,
    read_dicom,
)
from medseg.io.dicom._load import load_series
from medseg.io.dicom._slices import (
    MISSING_SLICE_RATIO_TOLERANCE,
    SLICE_SPACING_RELATIVE_TOLERANCE,
    TILT_TOLERANCE_DEG,
    Orientation,
    Problem,
    ProblemKind,
)
from medseg.io.dicom._write import (
    IMPLEMENTATION_CLASS_UID,
    TEXT_VR_MAX_CHARACTERS,
    file_meta,
    fit_text,
    format_ds,
    is_medseg_dicom,
    write_series,
)

__all__ = [
    "DEFLATED_HEADER_MAX_BYTES",
    "DEFLATED_MAX_BYTES",
    "HEADER_ERRORS",
    "IMPLEMENTATION_CLASS_UID",
    "MISSING_SLICE_RATIO_TOLERANCE",
    "SLICE_SPACING_RELATIVE_TOLERANCE",
    "TEXT_VR_MAX_CHARACTERS",
    "TILT_TOLERANCE_DEG",
    "BoundedReader",
    "Inventory",
    "Orientation",
    "Problem",
    "ProblemKind",
    "SeriesEntry",
    "SeriesKind",
    "StudyEntry",
    "file_meta",
    "finite",
    "fit_text",
    "format_ds",
    "header_value",
    "integer",
    "is_medseg_dicom",
    "load_series",
    "read_dicom",
    "scan_folder",
    "select_series",
    "write_series",
]
