"""The exception tree of medseg.

::

    MedsegError                      anything medseg raises on purpose
    ├── InputError                   the input cannot be used as given
    │   ├── UnreadableScanError      no readable image: empty folder, not DICOM, corrupt file
    │   └── GeometryError            geometry is invalid, inconsistent or does not match
    ├── ConfigError                  a config file or CLI option is invalid
    ├── ModelError                   a model checkpoint / URI cannot be loaded or does not fit
    └── ExportError                  an output would be invalid and was not written

Messages say what was expected, what arrived and which file or case it concerns. They never
contain patient-identifying DICOM attributes (names, IDs, birth dates).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ExportError",
    "GeometryError",
    "InputError",
    "MedsegError",
    "ModelError",
    "UnreadableScanError",
]


class MedsegError(Exception):
    """Base class of every error medseg raises on purpose."""


class InputError(MedsegError):
    """The input cannot be used as given."""


class UnreadableScanError(InputError):
    """No readable image at the path: empty folder, no DICOM, corrupt or truncated file."""


class GeometryError(InputError):
    """Geometry is invalid (spacing <= 0, non-orthonormal direction) or two volumes disagree."""


class ConfigError(MedsegError):
    """A config file or command-line option is invalid."""


class ModelError(MedsegError):
    """A model checkpoint or MLflow model URI cannot be loaded or does not fit the config."""


class ExportError(MedsegError):
    """An output object would be invalid, so it was not written."""
