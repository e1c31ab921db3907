"""Post-processing of label volumes: connected lesions, per-label volumes, a volumes report.

Every function takes a ``LABELS`` :class:`~medseg.volume.Volume` whose array is in array order
``(slice, row, column)``. Volumes are in millilitres and come from the volume's geometry
(:func:`medseg.geometry.voxel_volume_ml`), never from assumed spacing; positions are DICOM
patient LPS in millimetres (:func:`medseg.geometry.index_to_world`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import cc3d
import numpy as np
from numpy.typing import NDArray

from medseg import geometry as geo
from medseg.errors import ConfigError, InputError
from medseg.volume import Volume, VolumeKind

__all__ = [
    "CONNECTIVITIES",
    "Lesion",
    "find_lesions",
    "label_volumes_ml",
    "volumes_report",
]

#: The neighbourhoods :func:`find_lesions` accepts: 6 (faces), 18 (faces and edges),
#: 26 (faces, edges and corners).
CONNECTIVITIES: tuple[int, ...] = (6, 18, 26)

Connectivity = Literal[6, 18, 26]


@dataclass(frozen=True, slots=True)
class Lesion:
    """One connected component of one label.

    Attributes:
        id: 1-based rank of the lesion within its label, largest first.
        label: the label value the component belongs to.
        voxel_count: number of voxels in the component.
        volume_ml: ``voxel_count`` times the voxel volume of the grid, in mL.
        centroid_mm: LPS position (mm) of the mean voxel-centre position, as ``(x, y, z)``.
    """

    id: int
    label: int
    voxel_count: int
    volume_ml: float
    centroid_mm: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (plain ``int``/``float``/``list``)."""
        return {
            "id": self.id,
            "label": self.label,
            "voxel_count": self.voxel_count,
            "volume_ml": self.volume_ml,
            "centroid_mm": list(self.centroid_mm),
        }


def _require_labels(labels: Volume, what: str) -> NDArray[Any]:
    """The label array, after checking kind and sign (labels are counted with bincount)."""
    where = labels.source.describe()
    if labels.kind is not VolumeKind.LABELS:
        raise InputError(f"{where}: {what} needs a labels volume, got a {labels.kind.value} volume")
    array = labels.array
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.size and int(array.min()) < 0:
        raise InputError(f"{where}: label values must be >= 0, found {int(array.min())}")
    return array


def _voxel_counts(array: NDArray[Any]) -> NDArray[np.int64]:
    """Voxel count of every label value ``0..max`` (index = label value)."""
    if array.size == 0:
        return np.zeros(1, dtype=np.int64)
    return np.bincount(array.ravel().astype(np.int64, copy=False)).astype(np.int64)


def label_volumes_ml(labels: Volume, names: Mapping[int, str]) -> dict[str, float]:
    """Total volume of each named label.

    Args:
        labels: a ``LABELS`` volume, array order ``(slice, row, column)``.
        names: label value -> structure name, e.g. ``{1: "GTV", 2: "Parotid-Lt"}``.

    Returns:
        Structure name -> volume in mL (voxel count times
        :func:`~medseg.geometry.voxel_volume_ml`); a label absent from the array gives 0.0.

    Raises:
        InputError: if ``labels`` is not a labels volume or has negative values.
        ConfigError: if two label values share one name (the result would lose one).
    """
    array = _require_labels(labels, "label_volumes_ml")
    _require_unique_names(names)
    counts = _voxel_counts(array)
    voxel_ml = geo.voxel_volume_ml(labels.geometry)
    return {
        name: float(counts[value]) * voxel_ml if 0 <= value < len(counts) else 0.0
        for value, name in names.items()
    }


def find_lesions(labels: Volume, label: int, *, connectivity: Connectivity = 26) -> list[Lesion]:
    """Connected components of one label, largest first.

    Args:
        labels: a ``LABELS`` volume, array order ``(slice, row, column)``.
        label: the label value whose components are wanted.
        connectivity: 6 (voxels sharing a face are connected), 18 (a face or an edge) or
            26 (a face, an edge or a corner). Neighbourhoods are in voxels, whatever the
            spacing.

    Returns:
        One :class:`Lesion` per component, sorted by voxel count descending (ties by
        centroid index, so the order is deterministic); ``id`` is the 1-based rank. Volumes
        in mL, centroids in LPS mm. Empty if the label is absent.

    Raises:
        InputError: if ``labels`` is not a labels volume or has negative values.
        ConfigError: if ``connectivity`` is not 6, 18 or 26.
    """
    if connectivity not in CONNECTIVITIES:
        raise ConfigError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity!r}")
    array = _require_labels(labels, "find_lesions")
    mask = np.ascontiguousarray(array == label)
    if not mask.any():
        return []
    components = cc3d.connected_components(mask, connectivity=connectivity)
    stats = cc3d.statistics(components)
    counts = np.asarray(stats["voxel_counts"], dtype=np.int64)[1:]  # index 0 is background
    centroids_index = np.asarray(stats["centroids"], dtype=float)[1:]
    centroids_mm = geo.index_to_world(labels.geometry, centroids_index)
    order = sorted(
        range(len(counts)), key=lambda c: (-int(counts[c]), *(float(v) for v in centroids_index[c]))
    )
    voxel_ml = geo.voxel_volume_ml(labels.geometry)
    return [
        Lesion(
            id=rank,
            label=int(label),
            voxel_count=int(counts[c]),
            volume_ml=float(counts[c]) * voxel_ml,
            centroid_mm=(
                float(centroids_mm[c, 0]),
                float(centroids_mm[c, 1]),
                float(centroids_mm[c, 2]),
            ),
        )
        for rank, c in enumerate(order, start=1)
    ]


def volumes_report(
    labels: Volume, names: Mapping[int, str], *, connectivity: Connectivity = 26
) -> dict[str, Any]:
    """A JSON-able summary of every named label: total volume, voxel count and lesions.

    Args:
        labels: a ``LABELS`` volume, array order ``(slice, row, column)``.
        names: label value -> structure name.
        connectivity: neighbourhood used to split each label into lesions (see
            :func:`find_lesions`).

    Returns:
        ``{"source", "axis_order", "coordinates", "shape", "spacing_mm", "voxel_volume_ml",
        "connectivity", "labels": {name: {"label", "voxel_count", "volume_ml", "n_lesions",
        "lesions": [Lesion.to_dict(), ...]}}}``, with volumes in mL and centroids in LPS mm.
        A label absent from the array is reported with zero voxels and no lesions.

    Raises:
        InputError: if ``labels`` is not a labels volume or has negative values.
        ConfigError: on an invalid connectivity or two label values sharing one name.
    """
    if connectivity not in CONNECTIVITIES:
        raise ConfigError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity!r}")
    array = _require_labels(labels, "volumes_report")
    _require_unique_names(names)
    counts = _voxel_counts(array)
    voxel_ml = geo.voxel_volume_ml(labels.geometry)
    per_label: dict[str, Any] = {}
    for value, name in names.items():
        count = int(counts[value]) if 0 <= value < len(counts) else 0
        lesions = find_lesions(labels, value, connectivity=connectivity) if count else []
        per_label[name] = {
            "label": int(value),
            "voxel_count": count,
            "volume_ml": count * voxel_ml,
            "n_lesions": len(lesions),
            "lesions": [lesion.to_dict() for lesion in lesions],
        }
    return {
        "source": labels.source.describe(),
        "axis_order": ["slice", "row", "column"],
        "coordinates": "DICOM patient LPS, mm",
        "shape": list(labels.geometry.shape),
        "spacing_mm": list(labels.geometry.spacing_mm),
        "voxel_volume_ml": voxel_ml,
        "connectivity": int(connectivity),
        "labels": per_label,
    }


def _require_unique_names(names: Mapping[int, str]) -> None:
    seen: dict[str, int] = {}
    for value, name in names.items():
        if name in seen:
            raise ConfigError(f"label name {name!r} is used for both {seen[name]} and {value}")
        seen[name] = value
