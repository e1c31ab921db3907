"""medseg: 3D medical volume segmentation from DICOM to RT-STRUCT.

The top level holds the core types and errors only, so ``import medseg`` stays light (no
torch, MONAI or MLflow); stage modules are imported by name, e.g. ``medseg.io.dicom``.
"""

__version__ = "0.1.0"

from medseg import _compat
from medseg.errors import (
    ConfigError,
    ExportError,
    GeometryError,
    InputError,
    MedsegError,
    ModelError,
    UnreadableScanError,
)
from medseg.geometry import Geometry
from medseg.structures import InterpretedType, Structure
from medseg.volume import SourceInfo, Volume, VolumeKind, require_same_geometry

_compat.install()  # old module paths (medseg.train, medseg.io.discovery, ...) until 0.2

__all__ = [
    "ConfigError",
    "ExportError",
    "Geometry",
    "GeometryError",
    "InputError",
    "InterpretedType",
    "MedsegError",
    "ModelError",
    "SourceInfo",
    "Structure",
    "UnreadableScanError",
    "Volume",
    "VolumeKind",
    "__version__",
    "require_same_geometry",
]
