"""Post-processing of label volumes: clean-up, connected lesions and the volumes report.

Every function takes a ``LABELS`` :class:`~medseg.volume.Volume` whose array is in array order
``(slice, row, column)``. Volumes are in millilitres and come from the volume's geometry
(:func:`medseg.geometry.voxel_volume_ml`), never from assumed spacing; positions are DICOM
patient LPS in millimetres (:func:`medseg.geometry.index_to_world`).

The report files of a case (``volumes.json``, ``lesions.csv``) are written by
:mod:`medseg.report.tables` from the :class:`VolumesReport` made here.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import cc3d
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from medseg import geometry as geo
from medseg.config import LabelPostprocessConfig, PostprocessConfig
from medseg.errors import ConfigError, InputError
from medseg.structures import Structure
from medseg.volume import Volume, VolumeKind

__all__ = [
    "CONNECTIVITIES",
    "Lesion",
    "StructureVolume",
    "VolumesReport",
    "apply_postprocess",
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
        bbox_min_mm: smallest LPS ``(x, y, z)`` (mm) covered by the component's voxels, voxel
            extents included (a voxel reaches half a spacing beyond its centre).
        bbox_max_mm: largest LPS ``(x, y, z)`` (mm), likewise.
        longest_axial_diameter_mm: the longest in-plane segment across the lesion on any one
            slice, in mm (RECIST-like; see :func:`find_lesions`).
        first_slice: lowest slice index (array axis 0) holding the lesion.
        last_slice: highest slice index holding the lesion.
        n_slices: number of slices spanned, ``last_slice - first_slice + 1`` (a connected
            component has no gap along the slice axis).
    """

    id: int
    label: int
    voxel_count: int
    volume_ml: float
    centroid_mm: tuple[float, float, float]
    bbox_min_mm: tuple[float, float, float]
    bbox_max_mm: tuple[float, float, float]
    longest_axial_diameter_mm: float
    first_slice: int
    last_slice: int
    n_slices: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (plain ``int``/``float``/``list``)."""
        return {
            "id": self.id,
            "label": self.label,
            "voxel_count": self.voxel_count,
            "volume_ml": self.volume_ml,
            "centroid_mm": list(self.centroid_mm),
            "bbox_min_mm": list(self.bbox_min_mm),
            "bbox_max_mm": list(self.bbox_max_mm),
            "longest_axial_diameter_mm": self.longest_axial_diameter_mm,
            "first_slice": self.first_slice,
            "last_slice": self.last_slice,
            "n_slices": self.n_slices,
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
        in mL, centroids and bounding boxes in LPS mm. Empty if the label is absent.

    The longest axial diameter is measured on the outline a contour export would draw: on
    each slice (array axis 0; axial on an axial scan) the boundary points of the lesion's
    cross-section are the midpoints of the pixel edges between lesion and background (the
    vertices of a marching-squares contour at level 0.5); the diameter is the largest
    distance, in mm with the slice's row and column spacing, between two points of their
    convex hull, and the result is the largest over slices. A single pixel measures one
    pixel width; a disc of radius r measures 2r to within about one pixel.

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
    boxes = list(stats["bounding_boxes"])[1:]
    centroids_mm = geo.index_to_world(labels.geometry, centroids_index)
    order = sorted(
        range(len(counts)), key=lambda c: (-int(counts[c]), *(float(v) for v in centroids_index[c]))
    )
    voxel_ml = geo.voxel_volume_ml(labels.geometry)
    lesions = []
    for rank, c in enumerate(order, start=1):
        box = boxes[c]
        lo = np.array([b.start for b in box], dtype=float)
        hi = np.array([b.stop - 1 for b in box], dtype=float)
        bbox_min, bbox_max = _world_box_mm(labels.geometry, lo, hi)
        component = components[box] == c + 1
        lesions.append(
            Lesion(
                id=rank,
                label=int(label),
                voxel_count=int(counts[c]),
                volume_ml=float(counts[c]) * voxel_ml,
                centroid_mm=_xyz(centroids_mm[c]),
                bbox_min_mm=bbox_min,
                bbox_max_mm=bbox_max,
                longest_axial_diameter_mm=_longest_axial_diameter_mm(
                    component, labels.geometry.spacing_mm[1], labels.geometry.spacing_mm[2]
                ),
                first_slice=int(box[0].start),
                last_slice=int(box[0].stop - 1),
                n_slices=int(box[0].stop - box[0].start),
            )
        )
    return lesions


def _xyz(values: NDArray[np.float64]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def _world_box_mm(
    geometry: geo.Geometry, lo: NDArray[np.float64], hi: NDArray[np.float64]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """LPS min and max (mm) over the 8 outer corners of the voxels ``lo..hi`` (inclusive).

    Taking all corners keeps the box right on oblique grids, where an index box is a
    rotated box in patient space.
    """
    corners = np.array(
        [[(lo if bit == 0 else hi)[axis] + (0.5 if bit else -0.5) for axis, bit in enumerate(bits)]
         for bits in np.ndindex(2, 2, 2)]
    )  # fmt: skip
    world = geo.index_to_world(geometry, corners)
    return _xyz(world.min(axis=0)), _xyz(world.max(axis=0))


def _longest_axial_diameter_mm(
    component: NDArray[np.bool_], row_spacing_mm: float, column_spacing_mm: float
) -> float:
    """Largest in-slice distance (mm) across the component's outline, over all slices."""
    spacing = np.array([row_spacing_mm, column_spacing_mm])
    best = 0.0
    for section in component:
        if not section.any():
            continue
        padded = np.pad(section, 1)
        inside = padded[1:-1, 1:-1]
        points = []
        # an edge midpoint lies half a pixel from the centre of a lesion pixel towards an
        # outside neighbour
        for (dr, dc), neighbour in (
            ((-0.5, 0.0), padded[:-2, 1:-1]),
            ((0.5, 0.0), padded[2:, 1:-1]),
            ((0.0, -0.5), padded[1:-1, :-2]),
            ((0.0, 0.5), padded[1:-1, 2:]),
        ):
            edge = np.argwhere(inside & ~neighbour).astype(float)
            points.append(edge + np.array([dr, dc]))
        points_mm = np.concatenate(points) * spacing
        try:
            hull = points_mm[ConvexHull(points_mm).vertices]
        except QhullError:  # collinear points have no 2D hull; all of them are few
            hull = points_mm
        best = max(best, float(pdist(hull).max()))
    return best


@dataclass(frozen=True, slots=True)
class StructureVolume:
    """The volume and lesions of one named label, one entry of a :class:`VolumesReport`.

    Attributes:
        name: the structure name (the key of its entry in ``volumes.json``).
        label: the label value.
        voxel_count: voxels with that value.
        volume_ml: ``voxel_count`` times the voxel volume of the grid, in mL.
        lesions: the label's connected components, largest first (:func:`find_lesions`);
            empty when the label is absent.
    """

    name: str
    label: int
    voxel_count: int
    volume_ml: float
    lesions: tuple[Lesion, ...] = ()

    @property
    def n_lesions(self) -> int:
        """Number of lesions (connected components)."""
        return len(self.lesions)

    def to_dict(self) -> dict[str, Any]:
        """The entry's JSON-able form in ``volumes.json`` (the name is its key there)."""
        return {
            "label": self.label,
            "voxel_count": self.voxel_count,
            "volume_ml": self.volume_ml,
            "n_lesions": self.n_lesions,
            "lesions": [lesion.to_dict() for lesion in self.lesions],
        }


@dataclass(frozen=True, slots=True)
class VolumesReport:
    """Volumes and lesions of every named label of one label map, computed once per case.

    :func:`predict_case <medseg.pipeline.predict_case>` makes one and hands it to the writers
    of ``volumes.json`` and ``lesions.csv`` (:mod:`medseg.report.tables`) and to the QA page,
    so the connected components of a case are found once and every output shows the same
    numbers.

    Attributes:
        source: the label map's PHI-free description (:meth:`SourceInfo.describe
            <medseg.volume.SourceInfo.describe>`).
        geometry: the label map's grid (array order ``(slice, row, column)``, mm).
        connectivity: the neighbourhood the lesions were split with (6, 18 or 26).
        structures: one entry per named label, in the order the names were given.

    Raises:
        ConfigError: if two structures share one name (``volumes.json`` is keyed by name).
    """

    source: str
    geometry: geo.Geometry
    connectivity: Connectivity
    structures: tuple[StructureVolume, ...]

    #: Fixed fields of ``volumes.json``, saying how to read the numbers.
    AXIS_ORDER: ClassVar[tuple[str, str, str]] = ("slice", "row", "column")
    COORDINATES: ClassVar[str] = "DICOM patient LPS, mm"

    def __post_init__(self) -> None:
        names: dict[str, int] = {}
        for s in self.structures:
            if s.name in names:
                raise ConfigError(
                    f"label name {s.name!r} is used for both {names[s.name]} and {s.label}"
                )
            names[s.name] = s.label

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel of :attr:`geometry`, in mL."""
        return geo.voxel_volume_ml(self.geometry)

    @property
    def total_burden_ml(self) -> float:
        """Summed volume of the named labels, in mL: the total tumour burden when the names
        are the tumour labels only."""
        return float(sum(s.volume_ml for s in self.structures))

    @property
    def n_lesions_total(self) -> int:
        """Number of lesions over all named labels."""
        return int(sum(s.n_lesions for s in self.structures))

    @property
    def volumes_ml(self) -> dict[str, float]:
        """Structure name -> volume in mL."""
        return {s.name: s.volume_ml for s in self.structures}

    def by_name(self) -> dict[str, StructureVolume]:
        """Structure name -> its entry."""
        return {s.name: s for s in self.structures}

    def by_label(self) -> dict[int, StructureVolume]:
        """Label value -> its entry."""
        return {s.label: s for s in self.structures}

    def to_dict(self) -> dict[str, Any]:
        """The ``volumes.json`` document (plain ``int``/``float``/``str``/``list``/``dict``).

        ``{"source", "axis_order", "coordinates", "shape", "spacing_mm", "voxel_volume_ml",
        "connectivity", "total_burden_ml", "n_lesions_total", "labels": {name: {"label",
        "voxel_count", "volume_ml", "n_lesions", "lesions": [Lesion.to_dict(), ...]}}}``, in
        this key order: the format users parse, kept as it was when this was a dict.
        """
        return {
            "source": self.source,
            "axis_order": list(self.AXIS_ORDER),
            "coordinates": self.COORDINATES,
            "shape": list(self.geometry.shape),
            "spacing_mm": list(self.geometry.spacing_mm),
            "voxel_volume_ml": self.voxel_volume_ml,
            "connectivity": int(self.connectivity),
            "total_burden_ml": self.total_burden_ml,
            "n_lesions_total": self.n_lesions_total,
            "labels": {s.name: s.to_dict() for s in self.structures},
        }

    def to_json(self, extra: Mapping[str, Any] | None = None) -> str:
        """The text of ``volumes.json``: :meth:`to_dict` followed by the keys of ``extra``,
        indented, with a final newline."""
        return json.dumps({**self.to_dict(), **(extra or {})}, indent=2, allow_nan=False) + "\n"

    def __getitem__(self, key: str) -> Any:
        """``report["labels"]`` as when :func:`volumes_report` returned a dict (until 0.2)."""
        warnings.warn(
            "volumes_report() returns a VolumesReport; use its attributes, or to_dict() for "
            "the volumes.json document (indexing it goes in medseg 0.2)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.to_dict()[key]


def volumes_report(
    labels: Volume, names: Mapping[int, str], *, connectivity: Connectivity = 26
) -> VolumesReport:
    """Total volume, voxel count and lesions of every named label.

    Args:
        labels: a ``LABELS`` volume, array order ``(slice, row, column)``.
        names: label value -> structure name.
        connectivity: neighbourhood used to split each label into lesions (see
            :func:`find_lesions`).

    Returns:
        A :class:`VolumesReport` with one entry per name, in the order given; volumes in mL,
        positions in LPS mm. A label absent from the array has zero voxels and no lesions.
        Each present label's components are labelled once; :meth:`VolumesReport.to_dict` is
        the ``volumes.json`` document.

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
    structures = []
    for value, name in names.items():
        count = int(counts[value]) if 0 <= value < len(counts) else 0
        lesions = find_lesions(labels, value, connectivity=connectivity) if count else []
        structures.append(
            StructureVolume(
                name=name,
                label=int(value),
                voxel_count=count,
                volume_ml=count * voxel_ml,
                lesions=tuple(lesions),
            )
        )
    return VolumesReport(
        source=labels.source.describe(),
        geometry=labels.geometry,
        connectivity=connectivity,
        structures=tuple(structures),
    )


def _require_unique_names(names: Mapping[int, str]) -> None:
    seen: dict[str, int] = {}
    for value, name in names.items():
        if name in seen:
            raise ConfigError(f"label name {name!r} is used for both {seen[name]} and {value}")
        seen[name] = value


# ---------------------------------------------------------------------------------------------
# clean-up


def apply_postprocess(
    labels: Volume, config: PostprocessConfig, structures: Sequence[Structure] = ()
) -> Volume:
    """Clean up every label of a label map with its rule from ``config``.

    For each label value present (0 is background and is never processed), the rule
    ``config.rule_for(value)`` runs in this order: remove components smaller than
    ``min_component_volume_ml`` (volume from the grid's voxel volume), keep the largest
    component, fill holes in 3D or per slice. Removed voxels become background; only background
    voxels are filled, so one structure never overwrites another. Components use
    ``config.connectivity``; holes are background regions not face-connected (6 in 3D, 4 in a
    slice) to the border, the complement of any foreground connectivity.

    Args:
        labels: a ``LABELS`` volume, array order ``(slice, row, column)``.
        config: the per-label rules.
        structures: the structures of the label map; their interpreted types select
            ``config.types`` rules (a label without a structure gets ``labels`` or
            ``default``).

    Returns:
        A new labels volume on the same grid and source, same dtype.

    Raises:
        InputError: if ``labels`` is not a labels volume or has negative values.
    """
    array = _require_labels(labels, "apply_postprocess")
    out = np.array(array, copy=True)
    voxel_ml = geo.voxel_volume_ml(labels.geometry)
    types = {s.label: s.interpreted_type for s in structures}
    for value in (int(v) for v in np.unique(array) if v != 0):
        rule = config.rule_for(value, types.get(value))
        if rule.is_noop:
            continue
        mask = out == value
        if rule.min_component_volume_ml > 0 or rule.keep_largest_component:
            kept = _kept_components(mask, rule, config.connectivity, voxel_ml)
            out[mask & ~kept] = 0
            mask = kept
        if rule.fill_holes != "none":
            filled = _fill_holes(mask, per_slice=rule.fill_holes == "slice")
            out[filled & (out == 0)] = value
    return labels.with_array(out)


def _kept_components(
    mask: NDArray[np.bool_],
    rule: LabelPostprocessConfig,
    connectivity: Connectivity,
    voxel_ml: float,
) -> NDArray[np.bool_]:
    """The part of ``mask`` whose components pass the size rule (and are the largest)."""
    if not mask.any():
        return mask
    components = cc3d.connected_components(mask, connectivity=connectivity)
    counts = np.bincount(components.ravel())
    keep = counts * voxel_ml >= rule.min_component_volume_ml
    keep[0] = False
    if rule.keep_largest_component and keep.any():
        # argmax returns the first maximum: ties go to the component cc3d numbered first
        largest = int(np.argmax(np.where(keep, counts, -1)))
        keep[:] = False
        keep[largest] = True
    return np.asarray(keep[components])


def _fill_holes(mask: NDArray[np.bool_], *, per_slice: bool) -> NDArray[np.bool_]:
    if not per_slice:
        return np.asarray(ndimage.binary_fill_holes(mask))
    filled = mask.copy()
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        filled[k] = ndimage.binary_fill_holes(mask[k])
    return filled


def __getattr__(name: str) -> Any:
    """The writers of ``volumes.json`` and ``lesions.csv`` moved to :mod:`medseg.report.tables`
    (until 0.2)."""
    if name in ("write_volumes_json", "write_lesions_csv", "LESION_CSV_COLUMNS"):
        from medseg._compat import moved_name

        return moved_name(__name__, name, "medseg.report.tables")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
