"""The dataset fingerprint: what :mod:`medseg.planning.rules` plans an experiment from.

It holds what nnU-Net v2's ``DatasetFingerprintExtractor`` writes into
``dataset_fingerprint.json`` (per case spacing and shape after cropping to the non-zero
region; intensity statistics of a sample of the voxels inside the labels), computed through
medseg's own loaders, plus per label voxel counts and volumes in mL. Every per-axis value is
in medseg's array order ``(slice, row, column)``, which for an axial scan is nnU-Net's
``(z, y, x)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CaseFingerprint", "Fingerprint", "IntensityStats"]


@dataclass(frozen=True, slots=True)
class IntensityStats:
    """Statistics of the sampled foreground intensities (nnU-Net's
    ``foreground_intensity_properties_per_channel``)."""

    mean: float
    median: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True, slots=True)
class CaseFingerprint:
    """One training case.

    Attributes:
        case_id: the case's id in the dataset (never a patient name: the dataset's own ids).
        spacing: voxel spacing in mm, ``(slice, row, column)``.
        shape: the image's shape in voxels.
        shape_after_crop: the shape after cropping to the non-zero region (nnU-Net's
            ``crop_to_nonzero``).
        label_voxels: label value -> voxel count.
        label_volume_ml: label value -> volume in mL.
    """

    case_id: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    shape_after_crop: tuple[int, int, int]
    label_voxels: dict[int, int]
    label_volume_ml: dict[int, float]


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A dataset's fingerprint.

    Attributes:
        modality: ``"CT"`` (normalised with the dataset's statistics) or anything else, e.g.
            ``"MR"`` (normalised per image).
        labels: label value -> structure name (background 0 excluded).
        cases: one :class:`CaseFingerprint` per training case, in the dataset's order.
        foreground: statistics of the foreground intensity sample of all cases.
        median_relative_size_after_cropping: median over cases of
            ``prod(shape_after_crop) / prod(shape)``.
    """

    modality: str
    labels: dict[int, str]
    cases: tuple[CaseFingerprint, ...]
    foreground: IntensityStats
    median_relative_size_after_cropping: float

    @property
    def spacings(self) -> list[tuple[float, float, float]]:
        """Per case spacing, ``(slice, row, column)`` mm."""
        return [case.spacing for case in self.cases]

    @property
    def shapes_after_crop(self) -> list[tuple[int, int, int]]:
        """Per case shape after cropping, ``(slice, row, column)`` voxels."""
        return [case.shape_after_crop for case in self.cases]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (label keys as strings)."""
        raw = asdict(self)
        raw["labels"] = {str(k): v for k, v in self.labels.items()}
        for case in raw["cases"]:
            case["label_voxels"] = {str(k): v for k, v in case["label_voxels"].items()}
            case["label_volume_ml"] = {str(k): v for k, v in case["label_volume_ml"].items()}
        return raw

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON (what ``fingerprint.json`` holds)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Fingerprint:
        """The inverse of :meth:`to_dict`."""
        cases = tuple(
            CaseFingerprint(
                case_id=str(c["case_id"]),
                spacing=tuple(float(s) for s in c["spacing"]),  # type: ignore[arg-type]
                shape=tuple(int(s) for s in c["shape"]),  # type: ignore[arg-type]
                shape_after_crop=tuple(int(s) for s in c["shape_after_crop"]),  # type: ignore[arg-type]
                label_voxels={int(k): int(v) for k, v in c["label_voxels"].items()},
                label_volume_ml={int(k): float(v) for k, v in c["label_volume_ml"].items()},
            )
            for c in raw["cases"]
        )
        return cls(
            modality=str(raw["modality"]),
            labels={int(k): str(v) for k, v in raw["labels"].items()},
            cases=cases,
            foreground=IntensityStats(**{k: float(v) for k, v in raw["foreground"].items()}),
            median_relative_size_after_cropping=float(raw["median_relative_size_after_cropping"]),
        )
