"""The exception tree of medseg.

::

    MedsegError                      anything medseg raises on purpose
    ├── InputError                   the input cannot be used as given
    │   ├── UnreadableScanError      no readable image: empty folder, not DICOM, corrupt file
    │   ├── ResourceLimitError       the declared image size (voxels or bytes) is over the
    │   │                            configured maximum (IngestConfig.max_voxels / max_bytes)
    │   └── GeometryError            geometry is invalid, inconsistent or does not match
    │       ├── MissingSliceError        a gap of about k x the slice spacing in a DICOM series
    │       ├── DuplicateSliceError      two slices of one series at the same position
    │       ├── UnevenSpacingError       slice positions off a regular grid (not a plain gap)
    │       ├── MixedOrientationError    slices of one series with different orientations
    │       ├── MixedPixelSpacingError   slices of one series with different pixel spacings
    │       ├── GantryTiltError          slices not stacked along their normal (tilt, shear)
    │       └── MissingReferenceError    an RT-STRUCT references a series, slices or frames
    │                                    that the reference image volume does not hold
    ├── ConfigError                  a config file or CLI option is invalid
    ├── ModelError                   a model checkpoint / URI cannot be loaded or does not fit
    ├── CaseTimeoutError             a batch case ran longer than batch.case_timeout_s
    └── ExportError                  an output would be invalid and was not written
        └── OutputError              the output path cannot be used: it overlaps an input,
                                     exists and is not medseg's, or the file system refuses
                                     it (read-only, full, no permission); nothing was written

Messages say what was expected, what arrived and which file or case it concerns. They never
contain patient-identifying DICOM attributes (names, IDs, birth dates).
"""

from __future__ import annotations

__all__ = [
    "CaseTimeoutError",
    "ConfigError",
    "DuplicateSliceError",
    "ExportError",
    "GantryTiltError",
    "GeometryError",
    "InputError",
    "MedsegError",
    "MissingReferenceError",
    "MissingSliceError",
    "MixedOrientationError",
    "MixedPixelSpacingError",
    "ModelError",
    "OutputError",
    "ResourceLimitError",
    "UnevenSpacingError",
    "UnreadableScanError",
]


class MedsegError(Exception):
    """Base class of every error medseg raises on purpose."""


class InputError(MedsegError):
    """The input cannot be used as given."""


class UnreadableScanError(InputError):
    """No readable image at the path: empty folder, no DICOM, corrupt or truncated file."""


class ResourceLimitError(InputError):
    """The image a file declares (rows x columns x frames, or a header's dimensions) is larger
    than ``IngestConfig.max_voxels`` voxels or ``max_bytes`` bytes; refused before any
    allocation. The message gives the size asked for and the limit."""


class GeometryError(InputError):
    """Geometry is invalid (spacing <= 0, non-orthonormal direction) or two volumes disagree."""


class MissingSliceError(GeometryError):
    """A DICOM series has a gap of about k times its slice spacing: k - 1 slices are missing."""


class DuplicateSliceError(GeometryError):
    """Two slices (files or frames) of one DICOM series lie at the same position."""


class UnevenSpacingError(GeometryError):
    """The slices of a DICOM series are not on a regular grid, and not because of a plain gap."""


class MixedOrientationError(GeometryError):
    """The slices of one DICOM series have different ImageOrientationPatient."""


class MixedPixelSpacingError(GeometryError):
    """The slices of one DICOM series have different PixelSpacing."""


class GantryTiltError(GeometryError):
    """The slices of a DICOM series are not stacked along their normal (gantry tilt or shear)."""


class MissingReferenceError(GeometryError):
    """An RT-STRUCT references a series, or contours reference slices or frames, that the
    reference image volume does not hold (so those contours cannot be placed)."""


class ConfigError(MedsegError):
    """A config file or command-line option is invalid."""


class ModelError(MedsegError):
    """A model checkpoint or MLflow model URI cannot be loaded or does not fit the config."""


class CaseTimeoutError(MedsegError):
    """A batch case was still running ``batch.case_timeout_s`` seconds after it started; its
    worker process was stopped and the case recorded as failed with this class's name."""


class ExportError(MedsegError):
    """An output object would be invalid, so it was not written."""


class OutputError(ExportError):
    """The output path cannot be used: it is, contains or lies inside an input; it exists and
    is not an output medseg wrote (or ``--overwrite`` was not given); or the file system
    refuses the write (read-only, full, no permission). Nothing was written, and a previous
    output is unchanged."""
