"""The dataset fingerprint: what :mod:`medseg.planning.rules` plans an experiment from.

It holds what nnU-Net v2's ``DatasetFingerprintExtractor`` writes into
``dataset_fingerprint.json`` (per case spacing and shape after cropping to the non-zero
region; intensity statistics of a sample of the voxels inside the labels), computed through
medseg's own loaders, plus per label voxel counts and volumes in mL. Every per-axis value is
in medseg's array order ``(slice, row, column)``, which for an axial scan is nnU-Net's
``(z, y, x)``.

:func:`compute_fingerprint` follows nnU-Net v2.8.1 (``DatasetFingerprintExtractor``,
``crop_to_nonzero``):

- the crop is the bounding box of the image's non-zero voxels. nnU-Net fills the holes of that
  mask first, but a hole lies inside the box of the mask (a voxel outside it shares a plane of
  zeros with the array's border), so the box, and the shape after cropping, are the same; the
  label map is cut with the image and does not widen the box.
- the foreground sample: per case, ``samples_per_case`` voxels drawn with replacement
  (``RandomState(seed).choice``, a fresh generator per case as nnU-Net's) from the float32
  intensities of the voxels with label > 0 inside the crop, in C order; the statistics are
  numpy's mean, std and percentiles of all cases' samples together. nnU-Net draws
  ``10e7 // n_cases`` voxels per case; with the same seed its first ``samples_per_case`` draws
  are this sample, so the statistics estimate the same distribution (each case weighted
  alike) from fewer draws.
- image and label map are read one slab of slices at a time: no float copy of a whole image.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medseg.errors import InputError
from medseg.geometry import voxel_volume_ml
from medseg.volume import Volume, require_same_geometry

__all__ = [
    "FOREGROUND_PERCENTILES",
    "SLAB_VOXELS",
    "CaseFingerprint",
    "Fingerprint",
    "IntensityStats",
    "compute_fingerprint",
]

_log = logging.getLogger(__name__)

#: nnU-Net's percentiles of the foreground sample: 0.5 (the CT clip's lower bound), the
#: median, 99.5 (the upper bound).
FOREGROUND_PERCENTILES = (0.5, 50.0, 99.5)
#: Voxels read at once (whole slices): bounds the temporaries of one case (masks, the label
#: counts' intp copy) to about 8 MB whatever the image size.
SLAB_VOXELS = 1 << 20


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


def _slab_slices(shape: tuple[int, int, int]) -> int:
    return max(1, SLAB_VOXELS // max(1, shape[1] * shape[2]))


def _where(volume: Volume, case_id: str) -> str:
    return str(volume.source.path) if volume.source.path is not None else f"case {case_id}"


def _label_counts(labels: Volume, case_id: str, values: Mapping[int, str]) -> NDArray[np.int64]:
    """Voxel count per label value ``0..max(values)``, slab by slab; refuses other values."""
    top = max(values, default=0)
    allowed = np.zeros(top + 1, dtype=bool)
    allowed[0] = True
    allowed[list(values)] = True
    counts = np.zeros(top + 1, dtype=np.int64)
    array = labels.array
    step = _slab_slices(labels.geometry.shape)
    for start in range(0, array.shape[0], step):
        slab = np.asarray(array[start : start + step])
        low, high = int(slab.min()), int(slab.max())
        if low < 0 or high > top:
            bad = low if low < 0 else high
            raise InputError(
                f"{_where(labels, case_id)}: label value {bad} is not one of the labels "
                f"{[0, *sorted(values)]}"
            )
        counts += np.bincount(slab.ravel(), minlength=top + 1)[: top + 1]
    unknown = np.flatnonzero((counts > 0) & ~allowed)
    if unknown.size:
        raise InputError(
            f"{_where(labels, case_id)}: label value {int(unknown[0])} is not one of the labels "
            f"{[0, *sorted(values)]}"
        )
    return counts


def _nonzero_box(image: Volume) -> tuple[slice, slice, slice]:
    """nnU-Net's crop: the bounding box of the non-zero voxels (the whole grid if none)."""
    shape = image.geometry.shape
    any_slice = np.zeros(shape[0], dtype=bool)
    any_row = np.zeros(shape[1], dtype=bool)
    any_column = np.zeros(shape[2], dtype=bool)
    step = _slab_slices(shape)
    for start in range(0, shape[0], step):
        nonzero = np.asarray(image.array[start : start + step]) != 0
        any_slice[start : start + step] = nonzero.any(axis=(1, 2))
        any_row |= nonzero.any(axis=(0, 2))
        any_column |= nonzero.any(axis=(0, 1))
    box = []
    for flags, n in zip((any_slice, any_row, any_column), shape, strict=True):
        hits = np.flatnonzero(flags)
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, n))
    return box[0], box[1], box[2]


def _foreground(image: Volume, labels: Volume, box: tuple[slice, slice, slice]) -> NDArray[Any]:
    """float32 intensities of the labelled voxels inside ``box``, in C order of the crop."""
    step = _slab_slices(image.geometry.shape)
    parts = []
    for start in range(box[0].start, box[0].stop, step):
        stop = min(start + step, box[0].stop)
        mask = np.asarray(labels.array[start:stop, box[1], box[2]]) > 0
        if mask.any():
            values = np.asarray(image.array[start:stop, box[1], box[2]])[mask]
            parts.append(values.astype(np.float32, copy=False))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _case(
    case_id: str,
    image: Volume,
    labels: Volume,
    values: Mapping[int, str],
    seed: int,
    samples_per_case: int,
) -> tuple[CaseFingerprint, NDArray[Any]]:
    require_same_geometry(image, labels)
    counts = _label_counts(labels, case_id, values)
    box = _nonzero_box(image)
    foreground = _foreground(image, labels, box)
    if foreground.size and not np.all(np.isfinite(foreground)):
        raise InputError(f"{_where(image, case_id)}: non-finite intensities inside the labels")
    sample = (
        np.random.RandomState(seed).choice(foreground, samples_per_case, replace=True)
        if foreground.size
        else foreground
    )
    ml = voxel_volume_ml(image.geometry)
    shape = image.geometry.shape
    crop = tuple(s.stop - s.start for s in box)
    case = CaseFingerprint(
        case_id=case_id,
        spacing=tuple(float(s) for s in image.geometry.spacing_mm),  # type: ignore[arg-type]
        shape=shape,
        shape_after_crop=crop,  # type: ignore[arg-type]
        label_voxels={v: int(counts[v]) for v in sorted(values)},
        label_volume_ml={v: int(counts[v]) * ml for v in sorted(values)},
    )
    return case, sample


def compute_fingerprint(
    cases: Iterable[tuple[str, Volume, Volume]],
    *,
    modality: str,
    labels: Mapping[int, str],
    seed: int = 1234,
    samples_per_case: int = 10000,
) -> Fingerprint:
    """The fingerprint of labelled cases, as nnU-Net v2's ``DatasetFingerprintExtractor``
    computes it (see the module docstring), plus per label voxel counts and volumes.

    Args:
        cases: ``(case_id, image, labels)`` per case: an IMAGE volume and a LABELS volume on
            the same grid, array order ``(slice, row, column)``, intensities in the image's
            units (HU for CT). Consumed one at a time; a generator keeps one case in memory.
        modality: ``"CT"``, ``"MR"``, ... (nnU-Net's channel name).
        labels: label value (> 0) -> structure name; every other non-zero value is refused.
        seed: seed of each case's foreground draw.
        samples_per_case: foreground voxels drawn per case (with replacement).

    Raises:
        GeometryError: a case's image and label map are on different grids.
        InputError: a label value not in ``labels``, no case, or no labelled voxel at all.
    """
    if any(v <= 0 for v in labels):
        raise InputError(f"label values must be > 0 (0 is background), got {sorted(labels)}")
    if samples_per_case <= 0:
        raise InputError(f"samples_per_case must be > 0, got {samples_per_case}")
    found: list[CaseFingerprint] = []
    samples: list[NDArray[Any]] = []
    for case_id, image, label_map in cases:
        case, sample = _case(case_id, image, label_map, labels, seed, samples_per_case)
        _log.debug(
            "fingerprinted %s: shape %s, cropped %s", case_id, case.shape, case.shape_after_crop
        )
        found.append(case)
        samples.append(sample)
    if not found:
        raise InputError("no cases to fingerprint (the dataset is empty)")
    pooled = np.concatenate(samples)
    if not pooled.size:
        raise InputError(f"no labelled voxel in any of the {len(found)} cases")
    low, median, high = np.percentile(pooled, FOREGROUND_PERCENTILES)
    relative = [math.prod(c.shape_after_crop) / math.prod(c.shape) for c in found]
    return Fingerprint(
        modality=modality,
        labels={int(v): str(labels[v]) for v in sorted(labels)},
        cases=tuple(found),
        foreground=IntensityStats(
            mean=float(np.mean(pooled)),
            median=float(median),
            std=float(np.std(pooled)),
            min=float(np.min(pooled)),
            max=float(np.max(pooled)),
            percentile_00_5=float(low),
            percentile_99_5=float(high),
        ),
        median_relative_size_after_cropping=float(np.median(relative)),
    )
