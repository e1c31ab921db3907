"""Synthetic CT cases with known spherical tumours, for the demo and for property tests.

A case is a seeded, reproducible chest-like CT: an elliptical-cylinder body of soft tissue
(40 HU) under a fat layer (-90 HU), two lungs (-800 HU), a vertebral column (+700 HU) and
smoothed noise, with ``n_tumours`` spheres of +60..+120 HU contrast placed in soft tissue away
from lungs, bone, the skin and each other. Labels mark voxels whose centre lies inside a
sphere; the image edge of each sphere is blurred (a Gaussian edge of ``EDGE_SIGMA_MM``), so
the label boundary is the image's half-contrast surface.

The anatomy is laid out in patient (LPS) axes around the centre of the grid, so an oblique
grid cuts the same patient obliquely, as a tilted scan would. Every array is in array order
``(slice, row, column)``; positions are LPS millimetres, volumes millilitres, values HU.

Example:
    >>> case = make_case(0, n_tumours=1)
    >>> case.image.array.dtype.name, case.labels.array.dtype.name, len(case.tumours)
    ('int16', 'uint8', 1)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, special

from medseg import geometry as geo
from medseg.errors import ConfigError
from medseg.geometry import Geometry
from medseg.io import dicom, nifti
from medseg.io.files import atomic_dir, atomic_path
from medseg.synthetic.phantom_oar import ct_from_label_maps  # CT-like images from organ label maps
from medseg.volume import SourceInfo, Volume, VolumeKind

__all__ = [
    "AIR_HU",
    "BONE_HU",
    "EDGE_SIGMA_MM",
    "FAT_HU",
    "LABEL_NAMES",
    "LUNG_HU",
    "TISSUE_HU",
    "TUMOUR_LABEL",
    "PhantomCase",
    "PhantomPaths",
    "Tumour",
    "ct_from_label_maps",
    "make_case",
    "make_dataset",
    "write_case",
]

AIR_HU = -1000
FAT_HU = -90
TISSUE_HU = 40
LUNG_HU = -800
BONE_HU = 700

#: Label value of every tumour in ``PhantomCase.labels``.
TUMOUR_LABEL = 1
LABEL_NAMES: dict[int, str] = {TUMOUR_LABEL: "tumour"}


#: Standard deviation (mm) of the Gaussian edge of each tumour in the image.
EDGE_SIGMA_MM = 1.0

#: Smoothing (mm) of the anatomy, standing in for the scanner's point-spread function.
_ANATOMY_BLUR_MM = 0.8
#: Smoothing (voxels) of the noise field, so neighbouring voxels are correlated as in CT.
_NOISE_BLUR_VOXELS = 0.7
#: Thickness (mm) of the subcutaneous fat layer.
_FAT_MM = 5.0
#: Beyond this distance (mm) from its surface a tumour's edge adds < 1e-6 of its contrast.
_EDGE_REACH_MM = 5.0 * EDGE_SIGMA_MM
#: Clearance (mm) kept between a tumour surface and anything that is not soft tissue.
_CLEARANCE_MM = 3.0
#: CT values are clipped to the 12-bit range scanners store.
_HU_RANGE = (-1024, 3071)


@dataclass(frozen=True, slots=True)
class Tumour:
    """One spherical tumour of a phantom.

    Attributes:
        id: 1-based index in placement order.
        centre_mm: LPS position (mm) of the sphere centre, ``(x, y, z)``.
        radius_mm: sphere radius in mm.
        contrast_hu: HU above the surrounding soft tissue.
        voxel_count: labelled voxels (voxel centre within the sphere).
        volume_ml: ``voxel_count`` times the grid's voxel volume, in mL: the truth a
            segmentation of the label map is compared with.
        analytic_volume_ml: ``4/3 pi r^3`` in mL.
    """

    id: int
    centre_mm: tuple[float, float, float]
    radius_mm: float
    contrast_hu: float
    voxel_count: int
    volume_ml: float
    analytic_volume_ml: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "id": self.id,
            "label": TUMOUR_LABEL,
            "centre_mm": list(self.centre_mm),
            "radius_mm": self.radius_mm,
            "contrast_hu": self.contrast_hu,
            "voxel_count": self.voxel_count,
            "volume_ml": self.volume_ml,
            "analytic_volume_ml": self.analytic_volume_ml,
        }


@dataclass(frozen=True, slots=True)
class PhantomCase:
    """A synthetic CT and its ground truth.

    Attributes:
        seed: the seed it was made from.
        image: IMAGE volume, int16 HU, array order ``(slice, row, column)``.
        labels: LABELS volume on the same grid, uint8, ``TUMOUR_LABEL`` inside tumours.
        tumours: the tumours, in placement order.
    """

    seed: int
    image: Volume
    labels: Volume
    tumours: tuple[Tumour, ...]


@dataclass(frozen=True, slots=True)
class PhantomPaths:
    """Where :func:`write_case` put a case.

    Attributes:
        case_dir: the case folder.
        ct_dir: the CT DICOM series (one file per slice).
        labels_path: the label map (NIfTI, ``.nii.gz``).
        tumours_path: JSON list of :meth:`Tumour.to_dict` plus the seed.
        series_instance_uid: SeriesInstanceUID of the written CT.
    """

    case_dir: Path
    ct_dir: Path
    labels_path: Path
    tumours_path: Path
    series_instance_uid: str


def make_case(
    seed: int,
    *,
    shape: Sequence[int] = (48, 96, 96),
    spacing_mm: Sequence[float] = (2.5, 1.5, 1.5),
    origin_mm: Sequence[float] = (-72.0, -72.0, -60.0),
    direction: Sequence[float] = geo.AXIAL_DIRECTION,
    n_tumours: int = 2,
    radius_range_mm: tuple[float, float] = (6.0, 15.0),
    contrast_range_hu: tuple[float, float] = (60.0, 120.0),
    noise_sd_hu: float = 20.0,
) -> PhantomCase:
    """Make one synthetic CT with known tumours.

    The same arguments always give identical arrays (``numpy.random.default_rng(seed)``).

    Args:
        seed: random seed.
        shape: grid size in array order ``(slice, row, column)``.
        spacing_mm: voxel spacing (mm), array order.
        origin_mm: LPS position (mm) of the centre of voxel ``(0, 0, 0)``.
        direction: 3x3 row-major direction (see :class:`~medseg.geometry.Geometry`); the
            default is an axial grid. Any orthonormal matrix gives an oblique phantom.
        n_tumours: number of tumours (0 is allowed).
        radius_range_mm: tumour radii are drawn uniformly from this range (mm), capped by the
            room left in soft tissue.
        contrast_range_hu: tumour contrast over soft tissue is drawn from this range (HU).
        noise_sd_hu: standard deviation (HU) of the smoothed noise inside the body.

    Returns:
        The case: int16 HU image, uint8 labels and the tumour list.

    Raises:
        ConfigError: an invalid range or count, or no room in soft tissue for a tumour of
            the minimum radius.
        GeometryError: an invalid shape, spacing, origin or direction.
    """
    r_min, r_max = (float(v) for v in radius_range_mm)
    c_min, c_max = (float(v) for v in contrast_range_hu)
    if n_tumours < 0:
        raise ConfigError(f"n_tumours must be >= 0, got {n_tumours}")
    if not 0 < r_min <= r_max:
        raise ConfigError(f"radius_range_mm must satisfy 0 < min <= max, got {radius_range_mm}")
    if not c_min <= c_max:
        raise ConfigError(f"contrast_range_hu must satisfy min <= max, got {contrast_range_hu}")
    if not (math.isfinite(noise_sd_hu) and noise_sd_hu >= 0):
        raise ConfigError(f"noise_sd_hu must be a finite value >= 0, got {noise_sd_hu}")
    geometry = Geometry(
        shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
        spacing_mm=tuple(float(s) for s in spacing_mm),  # type: ignore[arg-type]
        origin_mm=tuple(float(o) for o in origin_mm),  # type: ignore[arg-type]
        direction=tuple(float(d) for d in direction),
    )
    rng = np.random.default_rng(seed)
    world = geo.index_to_world(
        geometry, np.indices(geometry.shape, dtype=float).transpose(1, 2, 3, 0)
    )
    centre = geo.index_to_world(geometry, (np.asarray(geometry.shape, dtype=float) - 1.0) / 2.0)
    rel = world - centre  # patient axes (x, y, z), mm, relative to the grid centre
    anatomy = _Anatomy.for_grid(geometry)
    masks = anatomy.masks(rel)

    hu = np.full(geometry.shape, float(AIR_HU), dtype=np.float32)
    hu[masks["body"]] = FAT_HU
    hu[masks["tissue"]] = TISSUE_HU
    hu[masks["lungs"]] = LUNG_HU
    hu[masks["bone"]] = BONE_HU
    sigma_voxels = [_ANATOMY_BLUR_MM / s for s in geometry.spacing_mm]
    hu = ndimage.gaussian_filter(hu, sigma_voxels, mode="nearest")

    labels = np.zeros(geometry.shape, dtype=np.uint8)
    tumours: list[Tumour] = []
    free = masks["tissue"] & ~masks["lungs"] & ~masks["bone"]
    for number in range(1, n_tumours + 1):
        tumour_centre, radius = _place_tumour(free, geometry, rng, r_min, r_max, number)
        contrast = float(rng.uniform(c_min, c_max))
        box = _sphere_box(geometry, tumour_centre, radius + _EDGE_REACH_MM)
        distance = np.linalg.norm(world[box] - tumour_centre, axis=-1)
        # Gaussian edge: the image reaches half the contrast exactly on the label surface.
        edge = 0.5 * special.erfc((distance - radius) / (math.sqrt(2.0) * EDGE_SIGMA_MM))
        hu[box] += (contrast * edge).astype(np.float32)
        inside = distance <= radius
        labels[box][inside] = TUMOUR_LABEL
        free[box] &= distance > radius + _CLEARANCE_MM
        voxel_count = int(inside.sum())
        tumours.append(
            Tumour(
                id=number,
                centre_mm=(
                    float(tumour_centre[0]),
                    float(tumour_centre[1]),
                    float(tumour_centre[2]),
                ),
                radius_mm=radius,
                contrast_hu=contrast,
                voxel_count=voxel_count,
                volume_ml=voxel_count * geo.voxel_volume_ml(geometry),
                analytic_volume_ml=4.0 / 3.0 * math.pi * radius**3 / 1000.0,
            )
        )

    if noise_sd_hu > 0:
        noise = ndimage.gaussian_filter(rng.standard_normal(geometry.shape), _NOISE_BLUR_VOXELS)
        noise *= noise_sd_hu / float(noise.std())
        hu[masks["body"]] += noise[masks["body"]].astype(np.float32)
    image = np.clip(np.rint(hu), *_HU_RANGE).astype(np.int16)
    source = SourceInfo(modality="CT")
    return PhantomCase(
        seed=seed,
        image=Volume(image, geometry, VolumeKind.IMAGE, source),
        labels=Volume(labels, geometry, VolumeKind.LABELS, source),
        tumours=tuple(tumours),
    )


@dataclass(frozen=True, slots=True)
class _Anatomy:
    """Sizes (mm) of the body parts, scaled to the grid's extent along the patient axes."""

    body_x: float
    body_y: float
    lung_x: float
    lung_y: float
    lung_z: float
    lung_offset_x: float
    lung_offset_y: float
    spine_offset_y: float
    spine_radius: float

    @classmethod
    def for_grid(cls, geometry: Geometry) -> _Anatomy:
        # extent of the grid's bounding box along each patient axis
        extent = np.abs(geometry.direction_matrix) @ (
            np.asarray(geometry.shape, dtype=float) * np.asarray(geometry.spacing_mm)
        )
        body_x, body_y = 0.42 * extent[0], 0.33 * extent[1]
        return cls(
            body_x=body_x,
            body_y=body_y,
            lung_x=0.22 * body_x,
            lung_y=0.42 * body_y,
            lung_z=0.30 * extent[2],
            lung_offset_x=0.5 * body_x,
            lung_offset_y=-0.05 * body_y,
            spine_offset_y=0.62 * body_y,
            spine_radius=0.18 * body_y,
        )

    def masks(self, rel: NDArray[np.float64]) -> dict[str, NDArray[np.bool_]]:
        """Boolean maps of body, inner soft tissue, lungs and bone; ``rel`` is LPS mm."""
        x, y, z = rel[..., 0], rel[..., 1], rel[..., 2]
        body = (x / self.body_x) ** 2 + (y / self.body_y) ** 2 <= 1.0
        tissue = (x / (self.body_x - _FAT_MM)) ** 2 + (y / (self.body_y - _FAT_MM)) ** 2 <= 1.0
        lungs = np.zeros_like(body)
        for side in (-1.0, 1.0):
            lungs |= (
                ((x - side * self.lung_offset_x) / self.lung_x) ** 2
                + ((y - self.lung_offset_y) / self.lung_y) ** 2
                + (z / self.lung_z) ** 2
            ) <= 1.0
        bone = x**2 + (y - self.spine_offset_y) ** 2 <= self.spine_radius**2
        return {"body": body, "tissue": tissue, "lungs": lungs & tissue, "bone": bone & tissue}


def _place_tumour(
    free: NDArray[np.bool_],
    geometry: Geometry,
    rng: np.random.Generator,
    r_min: float,
    r_max: float,
    number: int,
) -> tuple[NDArray[np.float64], float]:
    """Draw a radius and a centre whose sphere (plus clearance) lies in ``free`` voxels."""
    # Distance (mm) from each free voxel to the nearest non-free voxel; the padding makes the
    # grid border count as non-free, so spheres never leave the field of view.
    padded = np.pad(free, 1, constant_values=False)
    room_mm = ndimage.distance_transform_edt(padded, sampling=geometry.spacing_mm)[1:-1, 1:-1, 1:-1]
    # a sub-voxel jitter of the centre moves it by at most half a voxel diagonal
    jitter_mm = 0.5 * float(np.linalg.norm(geometry.spacing_mm))
    margin_mm = _CLEARANCE_MM + jitter_mm
    largest = float(room_mm.max()) - margin_mm
    if largest < r_min:
        raise ConfigError(
            f"no room for tumour {number}: the largest sphere that fits in the remaining soft "
            f"tissue has radius {max(largest, 0.0):.1f} mm < radius_range_mm minimum {r_min} mm "
            f"(grid {geometry.shape} at {geometry.spacing_mm} mm)"
        )
    radius = float(rng.uniform(r_min, min(r_max, largest)))
    candidates = np.flatnonzero(room_mm >= radius + margin_mm)
    index = np.asarray(np.unravel_index(candidates[rng.integers(len(candidates))], free.shape))
    centre_index = index + rng.uniform(-0.5, 0.5, size=3)
    return geo.index_to_world(geometry, centre_index), radius


def _sphere_box(
    geometry: Geometry, centre_mm: NDArray[np.float64], radius_mm: float
) -> tuple[slice, slice, slice]:
    """Array-order slices of the grid that contain the ball of ``radius_mm`` around a point."""
    centre_index = geo.world_to_index(geometry, centre_mm)
    # a ball is an axis-aligned ellipsoid in index space whatever the direction
    half = radius_mm / np.asarray(geometry.spacing_mm) + 1.0
    lo = np.clip(np.floor(centre_index - half).astype(int), 0, geometry.shape)
    hi = np.clip(np.ceil(centre_index + half).astype(int) + 1, 0, geometry.shape)
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def write_case(
    case: PhantomCase,
    out_dir: Path,
    *,
    patient_id: str,
    patient_name: str | None = None,
    series_description: str = "medseg phantom CT",
    uid_seed: str | None = None,
) -> PhantomPaths:
    """Write a case as a CT DICOM series, a NIfTI label map and a tumour table.

    Layout: ``out_dir/ct/CT_00001.dcm ...``, ``out_dir/labels.nii.gz``,
    ``out_dir/tumours.json``. Each part is written atomically by its writer.

    Args:
        case: the phantom.
        out_dir: case folder (created; ``out_dir/ct`` must not exist yet).
        patient_id: PatientID; use an obviously synthetic value such as ``"PHANTOM-001"``.
        patient_name: PatientName; defaults to ``"PHANTOM^<patient_id>"``.
        series_description: SeriesDescription of the CT.
        uid_seed: seed for the DICOM UIDs; defaults to one built from the case seed and
            ``patient_id``, so rewriting the same case gives the same UIDs.

    Returns:
        The written paths and the SeriesInstanceUID.

    Raises:
        ExportError: if ``out_dir/ct`` exists or the writers refuse the data.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = patient_name if patient_name is not None else f"PHANTOM^{patient_id}"
    written = dicom.write_series(
        case.image,
        out_dir / "ct",
        modality="CT",
        series_description=series_description,
        patient_name=name,
        patient_id=patient_id,
        uid_seed=uid_seed if uid_seed is not None else f"medseg-phantom:{case.seed}:{patient_id}",
    )
    labels_path = nifti.save(case.labels, out_dir / "labels.nii.gz")
    tumours_path = out_dir / "tumours.json"
    table = {
        "seed": case.seed,
        "coordinates": "DICOM patient LPS, mm",
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "tumours": [t.to_dict() for t in case.tumours],
    }
    with atomic_path(tumours_path) as tmp:
        tmp.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return PhantomPaths(
        case_dir=out_dir,
        ct_dir=out_dir / "ct",
        labels_path=labels_path,
        tumours_path=tumours_path,
        series_instance_uid=str(written.source.series_instance_uid),
    )


def make_dataset(out_dir: Path, n_cases: int, seed: int, **case_options: Any) -> Path:
    """Write ``n_cases`` phantoms and a Decathlon-style ``dataset.json`` for them.

    Case ``i`` (0-based) is ``make_case(seed + i, **case_options)`` written to
    ``out_dir/case_{i:03d}`` with PatientID ``PHANTOM-{i+1:03d}`` and PatientName
    ``PHANTOM^{i+1:03d}`` (patients are numbered from 1). The whole folder is written
    atomically.

    Args:
        out_dir: dataset folder; must not exist.
        n_cases: number of cases (>= 1).
        seed: seed of the first case.
        **case_options: keyword arguments for :func:`make_case`.

    Returns:
        Path of ``dataset.json``, whose ``training`` entries hold paths relative to it:
        ``{"image": "case_000/ct", "label": "case_000/labels.nii.gz"}``.

    Raises:
        ConfigError: if ``n_cases`` < 1.
        ExportError: if ``out_dir`` exists.
    """
    if n_cases < 1:
        raise ConfigError(f"n_cases must be >= 1, got {n_cases}")
    out_dir = Path(out_dir)
    training = []
    with atomic_dir(out_dir) as tmp:
        for i in range(n_cases):
            case_name = f"case_{i:03d}"
            write_case(
                make_case(seed + i, **case_options),
                tmp / case_name,
                patient_id=f"PHANTOM-{i + 1:03d}",
                patient_name=f"PHANTOM^{i + 1:03d}",
            )
            training.append({"image": f"{case_name}/ct", "label": f"{case_name}/labels.nii.gz"})
        dataset = {
            "name": "medseg-phantom",
            "description": (
                f"synthetic CT phantoms with spherical tumours, seeds {seed}..{seed + n_cases - 1}"
            ),
            "modality": {"0": "CT"},
            "labels": {"0": "background", **{str(k): v for k, v in LABEL_NAMES.items()}},
            "numTraining": n_cases,
            "training": training,
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    return out_dir / "dataset.json"
