"""Preprocessing of image volumes: intensity window, body box, and resampling between grids.

Intensity functions change no geometry. Resampling uses SimpleITK with every grid converted by
:mod:`medseg.geometry`; images are interpolated linearly and labels nearest-neighbour, or, for
anisotropic grids with ``preprocess.resample_separate_z``, linearly within each plane and
nearest-neighbour across planes (:func:`separate_z_axis`), as nnU-Net resamples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from medseg import geometry as geo
from medseg.config import PreprocessConfig
from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.volume import Volume, VolumeKind

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "Normaliser",
    "body_box",
    "foreground_box",
    "model_grid",
    "normaliser",
    "reorient",
    "require_finite_image",
    "resample",
    "resample_linear",
    "resample_scores_to_labels",
    "scale_intensity",
    "separate_z_axis",
    "window_intensity",
]

#: Slices of the target grid resampled at once by :func:`resample_scores_to_labels` (and by
#: :mod:`medseg.infer` when it resamples the input): bounds
#: its memory to ``n_classes * SCORE_SLAB_SLICES`` float32 slices of the target grid.
SCORE_SLAB_SLICES = 16

#: Slices thresholded at once by :func:`body_box` (bounds its boolean temporary).
_BODY_SLAB_SLICES = 32

#: Smallest standard deviation ``"zscore"`` divides by (a constant image stays finite).
_MIN_STD = 1e-6
#: Smallest standard deviation ``"image_zscore"`` divides by: nnU-Net's ``ZScoreNormalization``
#: epsilon for float32.
_NNUNET_MIN_STD = 1e-8

#: A grid is anisotropic when its largest spacing is more than this many times its smallest:
#: nnU-Net's ``ANISO_THRESHOLD`` (``nnunetv2.configuration``), used the same way.
ANISOTROPY_THRESHOLD = 3.0


def window_intensity(
    hu: NDArray[np.generic], config: PreprocessConfig, *, out: NDArray[np.float32] | None = None
) -> NDArray[np.float32]:
    """The array form of :func:`scale_intensity`: HU -> float32 in ``[0, 1]``, any shape.

    Written into ``out`` if given (float32, ``hu``'s shape; may be ``hu`` itself). Does not
    check for NaN/inf (the caller validates the volume once).
    """
    lower = np.float32(config.lower_hu)
    width_hu = np.float32(config.upper_hu - config.lower_hu)
    if out is None:
        scaled = np.asarray(hu, dtype=np.float32) - lower
    else:
        scaled = np.subtract(hu, lower, out=out, dtype=np.float32)
    scaled /= width_hu
    np.clip(scaled, 0.0, 1.0, out=scaled)
    return scaled


@dataclass(frozen=True, slots=True)
class Normaliser:
    """The intensity mapping of one image, from :func:`normaliser`: call it on any block.

    Attributes:
        config: the preprocessing it applies.
        shift: subtracted (``"zscore"``, ``"clip_zscore"``, ``"image_zscore"``; 0 for
            ``"window"``), in the image's units.
        scale: then multiplied by (``"zscore"``) or divided by (``"clip_zscore"``,
            ``"image_zscore"``, as nnU-Net does, so float32 results are nnU-Net's).
        air_hu: the input value that stands for air when a volume is padded: ``lower_hu``
            where the mode clips there (so padding maps to what air maps to), the image's
            minimum for ``"image_zscore"`` (which does not clip).
    """

    config: PreprocessConfig
    shift: float = 0.0
    scale: float = 1.0
    air_hu: float = 0.0

    def __call__(self, block: NDArray[np.generic]) -> NDArray[np.float32]:
        """``block`` (any shape) mapped to float32 network input."""
        config = self.config
        if config.intensity == "window":
            return window_intensity(block, config)
        if config.intensity == "image_zscore":
            out = np.array(block, dtype=np.float32)  # a copy: written in place below
        else:
            out = np.clip(np.asarray(block, dtype=np.float32), config.lower_hu, config.upper_hu)
        self._standardise(out)
        return out

    def in_place(self, block: NDArray[np.float32]) -> None:
        """``block`` (float32, any shape, a view included) mapped in place: the same numbers
        as calling this normaliser on it."""
        config = self.config
        if config.intensity == "window":
            window_intensity(block, config, out=block)
            return
        if config.intensity != "image_zscore":
            np.clip(block, config.lower_hu, config.upper_hu, out=block)
        self._standardise(block)

    def _standardise(self, out: NDArray[np.float32]) -> None:
        out -= np.float32(self.shift)
        if self.config.intensity == "zscore":
            out *= np.float32(self.scale)
        else:
            out /= np.float32(self.scale)


def normaliser(hu: NDArray[np.generic], config: PreprocessConfig) -> Normaliser:
    """The intensity mapping of ``config.intensity`` for the image ``hu``, to apply slab by slab.

    Statistics of the image are measured here once, slab by slab in float64, so every slab of
    one image is mapped the same way:

    * ``"window"``: :func:`window_intensity`.
    * ``"zscore"``: clips to ``[lower_hu, upper_hu]`` and standardises with the mean and
      standard deviation of the clipped values of the voxels above ``lower_hu``.
    * ``"clip_zscore"``: nnU-Net's ``CTNormalization``: clip to ``[lower_hu, upper_hu]``, then
      ``(x - intensity_mean) / intensity_std``; no statistics of ``hu``.
    * ``"image_zscore"``: nnU-Net's ``ZScoreNormalization`` (``use_mask_for_norm`` False):
      ``(x - mean) / max(std, 1e-8)`` with the mean and standard deviation of every voxel of
      ``hu``, unclipped. The sums run in two passes (mean, then squared deviations), so an MR
      image with a large offset loses no precision.

    Example:
        >>> from medseg.config import PreprocessConfig
        >>> pre = PreprocessConfig(lower_hu=-100.0, upper_hu=300.0, intensity="clip_zscore",
        ...                        intensity_mean=100.0, intensity_std=50.0)
        >>> hu = np.array([[[-1000.0, 100.0, 150.0, 900.0]]])
        >>> normaliser(hu, pre)(hu).tolist()
        [[[-4.0, 0.0, 1.0, 4.0]]]
    """
    if config.intensity == "window":
        return Normaliser(config, air_hu=config.lower_hu)
    if config.intensity == "clip_zscore":
        # the config refuses clip_zscore without them
        assert config.intensity_mean is not None and config.intensity_std is not None
        return Normaliser(
            config, config.intensity_mean, config.intensity_std, air_hu=config.lower_hu
        )
    array = np.asarray(hu)
    if config.intensity == "image_zscore":
        count, total, lowest = array.size, 0.0, math.inf
        for block in _float64_slabs(array):
            total += float(block.sum())
            lowest = min(lowest, float(block.min()))
        mean = total / count if count else 0.0
        squares = sum(float(np.square(block - mean).sum()) for block in _float64_slabs(array))
        std = math.sqrt(squares / count) if count else 1.0
        return Normaliser(config, mean, max(std, _NNUNET_MIN_STD), air_hu=lowest)
    count, total, squares = 0, 0.0, 0.0
    for block in _float64_slabs(array):
        values = np.minimum(block[block > config.lower_hu], config.upper_hu)
        count += values.size
        total += float(values.sum())
        squares += float(np.square(values).sum())
    mean = total / count if count else float(config.lower_hu)
    std = math.sqrt(max(squares / count - mean * mean, 0.0)) if count else 1.0
    return Normaliser(config, mean, 1.0 / max(std, _MIN_STD), air_hu=config.lower_hu)


def _float64_slabs(array: NDArray[np.generic]) -> Iterable[NDArray[np.float64]]:
    """``array`` as float64 blocks of :data:`_BODY_SLAB_SLICES` slices (no full-size copy)."""
    for first in range(0, array.shape[0], _BODY_SLAB_SLICES):
        yield np.asarray(array[first : first + _BODY_SLAB_SLICES], dtype=np.float64)


def scale_intensity(image: Volume, config: PreprocessConfig) -> Volume:
    """Map intensities as ``config.intensity`` says: by default a CT window onto ``[0, 1]``.

    With ``"window"``, ``config.lower_hu`` becomes 0 and ``config.upper_hu`` becomes 1; values
    outside the window are clipped. The other modes: see :func:`normaliser`. Geometry,
    source and axis order ``(slice, row, column)`` are unchanged.

    Args:
        image: an ``IMAGE`` volume in Hounsfield units, array order ``(slice, row, column)``.
        config: the intensity window.

    Returns:
        An ``IMAGE`` volume of dimensionless float32 intensities (in ``[0, 1]`` for
        ``"window"``) on the same grid.

    Raises:
        InputError: if ``image`` is not an ``IMAGE`` volume or contains NaN/inf.

    Example:
        >>> import numpy as np
        >>> from medseg.config import PreprocessConfig
        >>> from medseg.geometry import Geometry
        >>> grid = Geometry((1, 1, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        >>> ct = Volume(np.array([[[-1000.0, 0.0, 50.0, 400.0]]]), grid)
        >>> scale_intensity(ct, PreprocessConfig(lower_hu=-50.0, upper_hu=150.0)).array.tolist()
        [[[0.0, 0.25, 0.5, 1.0]]]
    """
    require_finite_image(image, "intensity scaling")
    return image.with_array(normaliser(image.array, config)(image.array))


def require_finite_image(image: Volume, what: str) -> None:
    """Raise :class:`InputError` unless ``image`` is an ``IMAGE`` volume of finite values."""
    if image.kind is not VolumeKind.IMAGE:
        raise InputError(
            f"{image.source.describe()}: {what} needs an image volume, got {image.kind.value}"
        )
    array = np.asarray(image.array)
    if np.issubdtype(array.dtype, np.floating):
        for first in range(0, array.shape[0], _BODY_SLAB_SLICES):  # no full-size temporary
            if not np.all(np.isfinite(array[first : first + _BODY_SLAB_SLICES])):
                raise InputError(
                    f"{image.source.describe()}: image contains NaN or infinite values"
                )


def body_box(
    image: Volume, threshold_hu: float, margin_mm: float
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """Bounding box of all voxels above ``threshold_hu``, grown by ``margin_mm`` on every side.

    Every voxel above the threshold, wherever it is (not only in the largest component), is
    inside the box, so a lesion at the edge of the field of view is never cut off. The box is
    found slab by slab from per-axis projections, without a full-size mask.

    Args:
        image: an ``IMAGE`` volume in HU, array order ``(slice, row, column)``.
        threshold_hu: HU above which a voxel is body (e.g. -500: air is about -1000).
        margin_mm: margin in mm, converted to whole voxels per axis with the grid's spacing.

    Returns:
        ``(start, stop)`` voxel indices in array order (``stop`` exclusive, clipped to the
        image), or ``None`` if no voxel is above the threshold.

    Example:
        >>> grid = Geometry((4, 5, 6), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        >>> ct = np.full(grid.shape, -1000.0)
        >>> ct[2, 1, 3] = 40.0
        >>> body_box(Volume(ct, grid), -500.0, 1.0)
        ((1, 0, 2), (4, 3, 5))
    """
    along = _projections(np.asarray(image.array), threshold_hu)
    if not along[0].any():
        return None
    return _grown_box(along, image.geometry, margin_mm)


def foreground_box(
    image: Volume, labels: Volume, threshold_hu: float | None, margin_mm: float
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The box around the voxels above ``threshold_hu`` and every labelled voxel, plus margin.

    Labelled voxels are always inside, wherever they are, so cropping never drops foreground.
    ``threshold_hu`` ``None``: the labelled voxels alone. The whole grid when nothing is above
    the threshold and nothing is labelled.
    """
    along = _projections(np.asarray(labels.array), 0)
    if threshold_hu is not None:
        body = _projections(np.asarray(image.array), threshold_hu)
        along = [a | b for a, b in zip(along, body, strict=True)]
    if not along[0].any():
        shape = image.geometry.shape
        return (0, 0, 0), (shape[0], shape[1], shape[2])
    return _grown_box(along, image.geometry, margin_mm)


def _projections(array: NDArray[np.generic], above: float) -> list[NDArray[np.bool_]]:
    """Per axis, which indices hold a voxel ``> above``: computed slab by slab, so the
    boolean temporary is :data:`_BODY_SLAB_SLICES` slices, never the whole volume."""
    along = [np.zeros(n, dtype=bool) for n in array.shape]
    for first in range(0, array.shape[0], _BODY_SLAB_SLICES):
        hits = np.greater(array[first : first + _BODY_SLAB_SLICES], above)
        along[0][first : first + hits.shape[0]] = hits.any(axis=(1, 2))
        along[1] |= hits.any(axis=(0, 2))
        along[2] |= hits.any(axis=(0, 1))
    return along


def _grown_box(
    along: Sequence[NDArray[np.bool_]], geometry: Geometry, margin_mm: float
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The box from first to last hit along each axis, grown by ``margin_mm`` (whole voxels,
    clipped to the grid)."""
    start, stop = [], []
    for axis, hits in enumerate(along):
        margin = math.ceil(margin_mm / geometry.spacing_mm[axis] - 1e-9)
        found = np.flatnonzero(hits)
        start.append(max(0, int(found[0]) - margin))
        stop.append(min(geometry.shape[axis], int(found[-1]) + 1 + margin))
    return (start[0], start[1], start[2]), (stop[0], stop[1], stop[2])


def reorient(volume: Volume) -> tuple[Volume, geo.Reorientation]:
    """``volume`` stored in canonical LPS axis order (a view; no copy, no interpolation).

    Returns the reoriented volume and the :class:`~medseg.geometry.Reorientation`, whose
    ``restore`` maps arrays on the canonical grid back to the stored order.
    """
    reorientation = geo.canonical_reorientation(volume.geometry)
    if reorientation.is_identity:
        return volume, reorientation
    moved = Volume(
        reorientation.apply(np.asarray(volume.array)),
        reorientation.target,
        volume.kind,
        volume.source,
    )
    return moved, reorientation


def model_grid(geometry: Geometry, spacing_mm: Sequence[float]) -> Geometry:
    """The grid with ``spacing_mm`` that covers ``geometry``: same origin and direction.

    Voxel ``0`` sits on the input's voxel ``0``; the last voxel centre is at or beyond the
    input's last voxel centre along every axis, so resampling back never extrapolates.

    Example:
        >>> grid = Geometry((10, 5, 5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        >>> model_grid(grid, (2.5, 1.0, 2.0)).shape
        (5, 5, 3)
    """
    shape = []
    for n, have, want in zip(geometry.shape, geometry.spacing_mm, spacing_mm, strict=True):
        # round away float noise before ceil: 9 * 1.0 / 2.25 must be 4, not 4.000000001
        shape.append(math.ceil(round((n - 1) * have / want, 6)) + 1)
    return Geometry(
        shape=(shape[0], shape[1], shape[2]),
        spacing_mm=(float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2])),
        origin_mm=geometry.origin_mm,
        direction=geometry.direction,
    )


def _to_sitk_image(array: NDArray[np.generic], geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))  # (slice, row, column) order
    _, spacing, origin, direction = geo.to_sitk(geometry)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _resampler(target: Geometry, interpolator: int) -> sitk.ResampleImageFilter:
    size, spacing, origin, direction = geo.to_sitk(target)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(s) for s in size])
    resampler.SetOutputSpacing(spacing)
    resampler.SetOutputOrigin(origin)
    resampler.SetOutputDirection(direction)
    resampler.SetInterpolator(interpolator)
    resampler.SetUseNearestNeighborExtrapolator(True)  # grid edges: repeat, never invent air
    return resampler


def separate_z_axis(
    source_spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]
) -> int | None:
    """The axis that separate-z resampling treats apart, or ``None``: nnU-Net's
    ``determine_do_sep_z_and_axis`` (with ``force_separate_z`` ``None``).

    If the source spacing is anisotropic (largest over smallest > :data:`ANISOTROPY_THRESHOLD`)
    its coarsest axis is the one; otherwise the target spacing's, if that is anisotropic. Two
    axes sharing the largest spacing (a fine slice axis with coarse pixels) give ``None``, as
    in nnU-Net. Spacings in array order ``(slice, row, column)``, in mm.

    Example:
        >>> separate_z_axis((5.0, 0.8, 0.8), (1.0, 1.0, 1.0)), separate_z_axis((1.0,) * 3, (2.0,) * 3)
        (0, None)
    """
    for spacing in (source_spacing_mm, target_spacing_mm):
        largest, smallest = max(spacing), min(spacing)
        if largest / smallest > ANISOTROPY_THRESHOLD:
            coarse = [
                axis
                for axis, value in enumerate(spacing)
                if value >= largest * (1.0 - geo.SPACING_RELATIVE_TOLERANCE)
            ]
            return coarse[0] if len(coarse) == 1 else None
    return None


def resample(volume: Volume, target: Geometry, *, separate_z: bool = False) -> Volume:
    """``volume`` resampled onto ``target`` (SimpleITK): linear for images, nearest for labels.

    Args:
        volume: an ``IMAGE`` (HU or any unit) or ``LABELS`` volume, array order
            ``(slice, row, column)``.
        target: the grid to sample at (world positions from :mod:`medseg.geometry`).
        separate_z: images on anisotropic grids (:func:`separate_z_axis`) are interpolated
            linearly within each plane and nearest-neighbour across planes
            (``preprocess.resample_separate_z``); ``target`` must then have ``volume``'s
            direction. Labels are nearest-neighbour either way (on grids of one direction,
            nearest in 3-D is nearest along each axis: nnU-Net's ``order_z=0``).

    Returns:
        A volume of the same kind and source on ``target``: float32 for images, the input's
        integer type for labels. Points outside ``volume``'s grid take the nearest voxel.

    Raises:
        InputError: for a ``PROBABILITIES`` volume (use :func:`resample_scores_to_labels`).
        GeometryError: ``separate_z`` on an anisotropic pair of grids of different directions.
    """
    if volume.kind is VolumeKind.PROBABILITIES:
        raise InputError(f"{volume.source.describe()}: resample takes images or labels")
    if geo.geometries_equal(volume.geometry, target):
        return volume
    if volume.kind is VolumeKind.IMAGE and separate_z:
        axis = separate_z_axis(volume.geometry.spacing_mm, target.spacing_mm)
        if axis is not None:
            array = np.asarray(volume.array)
            out = _separate_z(array, volume.geometry, target, axis)
            return Volume(out, target, volume.kind, volume.source)
    if volume.kind is VolumeKind.LABELS:
        interpolator, array = sitk.sitkNearestNeighbor, np.asarray(volume.array)
    else:
        interpolator = sitk.sitkLinear
        array = np.asarray(volume.array, dtype=np.float32)
    resampled = _resampler(target, interpolator).Execute(_to_sitk_image(array, volume.geometry))
    out = sitk.GetArrayFromImage(resampled).astype(array.dtype, copy=False)
    return Volume(out, target, volume.kind, volume.source)


def resample_linear(
    array: NDArray[np.generic], source: Geometry, target: Geometry, *, separate_z: bool = False
) -> NDArray[np.float32]:
    """``array`` (on ``source``) interpolated linearly at ``target``'s voxels, as float32.

    Only the source voxels the interpolation needs are read (a box around ``target``'s
    extent), and they keep their type until SimpleITK computes in double: resampling a small
    ``target`` from a large integer image costs memory for the small box, not a float copy of
    the image. Points outside ``source`` take the nearest voxel, as in :func:`resample`. With
    ``separate_z`` on an anisotropic pair of grids, linear within planes and nearest across
    them, as :func:`resample`.
    """
    low, high = _needed_box(source, target, (0, 0, 0), target.shape)
    chunk = geo.crop_geometry(source, low, high)
    inside = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    values = np.asarray(array)[inside]
    if values.dtype == np.float16:  # not a SimpleITK pixel type
        values = values.astype(np.float32)
    axis = separate_z_axis(source.spacing_mm, target.spacing_mm) if separate_z else None
    if axis is not None:
        return _separate_z(values, chunk, target, axis)
    resampler = _resampler(target, sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    out = resampler.Execute(_to_sitk_image(values, chunk))
    return sitk.GetArrayFromImage(out)


def _separate_z(
    array: NDArray[np.generic], source: Geometry, target: Geometry, axis: int
) -> NDArray[np.float32]:
    """``array`` on ``source`` at ``target``: nearest-neighbour along ``axis``, linear in the
    planes across it (nnU-Net's separate-z resampling with ``order_z=0``, in-plane order 1).

    nnU-Net interpolates within planes first and then picks planes; the two steps act on
    different axes of grids with one direction, so picking first gives the same values and
    keeps the temporary to ``target``'s planes. Each target plane takes the source plane
    nearest to it (half-way: the higher one, as ITK rounds; beyond the grid: the edge plane),
    placed exactly at the target plane's position; SimpleITK's linear interpolation then
    works within planes only. Written here because neither SimpleITK nor MONAI resamples one
    axis with another interpolator than the rest.

    Raises:
        GeometryError: ``source`` and ``target`` have different directions.
    """
    if np.abs(source.direction_matrix - target.direction_matrix).max() > geo.DIRECTION_TOLERANCE:
        raise GeometryError(
            f"separate-z resampling needs grids of one direction, got {source.direction} and "
            f"{target.direction}"
        )
    steps = np.zeros((target.shape[axis], 3))
    steps[:, axis] = np.arange(target.shape[axis])
    along = geo.world_to_index(source, geo.index_to_world(target, steps))[:, axis]
    nearest = np.clip(np.floor(along + 0.5), 0, source.shape[axis] - 1).astype(np.intp)
    picked = np.take(np.asarray(array), nearest, axis=axis)
    if picked.dtype == np.float16:
        picked = picked.astype(np.float32)
    # the picked planes' grid: the source's within planes, the target's across them
    first = geo.world_to_index(source, target.origin_mm)
    start = np.zeros(3)
    start[axis] = first[axis]
    shape, spacing = list(source.shape), list(source.spacing_mm)
    shape[axis], spacing[axis] = target.shape[axis], target.spacing_mm[axis]
    planes = Geometry(
        shape=(shape[0], shape[1], shape[2]),
        spacing_mm=(spacing[0], spacing[1], spacing[2]),
        origin_mm=tuple(float(v) for v in geo.index_to_world(source, start)),  # type: ignore[arg-type]
        direction=source.direction,
    )
    resampler = _resampler(target, sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampler.Execute(_to_sitk_image(picked, planes)))


def _needed_box(
    source: Geometry, target: Geometry, start: Sequence[int], stop: Sequence[int]
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The box of ``source`` voxels that linear interpolation at ``target[start:stop]`` reads.

    The eight corners of the target box are mapped to fractional source indices; the box is
    their bounding box grown to the enclosing voxels plus one (float noise), clipped to
    ``source`` and never empty.
    """
    lowest, highest = geo.index_box_in(target, start, [b - 1 for b in stop], source)
    low, high = [], []
    for axis in range(3):
        n = source.shape[axis]
        a = int(np.clip(math.floor(lowest[axis]) - 1, 0, n - 1))
        low.append(a)
        high.append(int(np.clip(math.ceil(highest[axis]) + 2, a + 1, n)))
    return (low[0], low[1], low[2]), (high[0], high[1], high[2])


def resample_scores_to_labels(
    scores: NDArray[np.floating],
    source: Geometry,
    target: Geometry,
    *,
    relative_to_background: bool = False,
    separate_z: bool = False,
) -> NDArray[np.uint8]:
    """Labels on ``target`` from per-class scores on ``source``, slab by slab.

    Each class's score (logits or probabilities, one channel per label value) is interpolated
    linearly onto :data:`SCORE_SLAB_SLICES` slices of ``target`` at a time and the argmax is
    kept as uint8, so no full-size float map of any class is ever allocated on ``target``.

    Interpolation runs only where the answer can differ from background: a linear
    interpolation is a convex combination of its corner voxels, so if every corner's argmax
    is label 0 (``score_0 >= score_c`` for every class ``c``), the interpolated scores keep
    that order and the label is 0. Target voxels whose corners all lie outside the box of
    non-background argmax voxels (grown by one voxel) are therefore set to 0 without
    interpolating; on a lesion or a few organs this skips most of the grid.

    Args:
        scores: ``(class, slice, row, column)`` on ``source``; any float type.
        source: the grid of ``scores``.
        target: the grid of the labels.
        relative_to_background: ``scores`` holds only classes ``1..n`` as their score minus
            background's (whose score is then 0 everywhere): one channel less to keep, the
            same labels (interpolation is linear, so differences interpolate exactly).
        separate_z: on an anisotropic pair of grids, scores are interpolated linearly within
            planes and nearest-neighbour across them (:func:`resample_linear`), as nnU-Net
            resamples its probabilities; still a convex combination of corner voxels, so the
            background shortcut above holds.

    Returns:
        uint8 labels ``(slice, row, column)`` on ``target``; ties go to the lower label value.
    """
    labels = np.zeros(target.shape, dtype=np.uint8)
    offset = 1 if relative_to_background else 0
    winners = _argmax_labels(scores, offset)
    for first in range(0, target.shape[0], SCORE_SLAB_SLICES):
        last = min(target.shape[0], first + SCORE_SLAB_SLICES)
        low, high = _needed_box(source, target, (first, 0, 0), (last, *target.shape[1:]))
        inside = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        hits = [
            np.flatnonzero(winners[inside].any(axis=others)) for others in ((1, 2), (0, 2), (0, 1))
        ]
        if hits[0].size == 0:  # every corner is background
            continue
        # the non-background box grown by one voxel, in source indices, then in target ones
        box_low = [low[a] + int(h[0]) - 1 for a, h in enumerate(hits)]
        box_high = [low[a] + int(h[-1]) + 1 for a, h in enumerate(hits)]
        lowest, highest = geo.index_box_in(source, box_low, box_high, target)
        start = [first, 0, 0]
        stop = [last, target.shape[1], target.shape[2]]
        for axis in range(3):
            start[axis] = max(start[axis], math.floor(lowest[axis]) - 1)
            stop[axis] = min(stop[axis], math.ceil(highest[axis]) + 2)
        if any(a >= b for a, b in zip(start, stop, strict=True)):
            continue
        part = geo.crop_geometry(target, start, stop)
        channels = (resample_linear(score, source, part, separate_z=separate_z) for score in scores)
        labels[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] = _running_argmax(
            channels, part.shape, offset
        )
    return labels


class StreamedLabels:
    """:func:`resample_scores_to_labels` fed the scores a few source slices at a time, in
    order, so the scores of the whole source grid are never held.

    Every :data:`SCORE_SLAB_SLICES` slices of ``target`` are labelled as soon as the source
    slices their interpolation reads (:func:`_needed_box`) have arrived, by
    :func:`resample_scores_to_labels` on just those slices, and source slices no remaining
    target slab reads are dropped: the same labels as one call on the whole grid, holding
    a few slices of scores instead of all of them (44 MB of float16 for one class of a
    200 x 512 x 512 CT at 2.5 x 1.5 x 1.5 mm).

    Args:
        source: the grid the scores arrive on (slices along its first axis, from 0 up).
        target: the grid of the labels.
        out: ``target.shape`` uint8, written with the labels (a view is fine); slabs no
            source slice reached are left as they are.
        relative_to_background, separate_z: as :func:`resample_scores_to_labels`.
    """

    def __init__(
        self,
        source: Geometry,
        target: Geometry,
        out: NDArray[np.uint8],
        *,
        relative_to_background: bool = False,
        separate_z: bool = False,
    ) -> None:
        self._source, self._target, self._out = source, target, out
        self._options = {"relative_to_background": relative_to_background, "separate_z": separate_z}
        #: target slabs not labelled yet: (first, last, source slices [low, high) they read)
        self._pending: list[tuple[int, int, int, int]] = []
        for first in range(0, target.shape[0], SCORE_SLAB_SLICES):
            last = min(target.shape[0], first + SCORE_SLAB_SLICES)
            low, high = _needed_box(source, target, (first, 0, 0), (last, *target.shape[1:]))
            self._pending.append((first, last, low[0], high[0]))
        self._blocks: list[tuple[int, NDArray[np.floating]]] = []  # (first slice, scores)
        self._arrived = 0  # source slices 0 .. arrived have come

    def add(self, first: int, block: NDArray[np.floating]) -> None:
        """Scores ``(class, slices, row, column)`` of source slices ``first`` on (the next
        ones: slices arrive in order), kept as given (the caller's own array)."""
        if first != self._arrived:
            raise ValueError(f"expected source slice {self._arrived} next, got {first}")
        self._blocks.append((first, block))
        self._arrived += block.shape[1]
        self._label(ready_until=self._arrived)

    def finish(self) -> None:
        """Label what remains (source slices past the last one added read as the last one's
        edge, as beyond the grid)."""
        self._label(ready_until=self._source.shape[0])
        self._blocks = []

    def _label(self, ready_until: int) -> None:
        still = []
        for first, last, low, high in self._pending:
            if high > ready_until or not self._blocks:
                still.append((first, last, low, high))
                continue
            low = max(low, self._blocks[0][0])
            high = min(high, self._arrived)
            pieces = [
                b[:, max(0, low - at) : high - at]
                for at, b in self._blocks
                if at < high and at + b.shape[1] > low
            ]
            scores = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)
            source = geo.crop_geometry(self._source, (low, 0, 0), (high, *self._source.shape[1:]))
            part = geo.crop_geometry(self._target, (first, 0, 0), (last, *self._target.shape[1:]))
            self._out[first:last] = resample_scores_to_labels(scores, source, part, **self._options)
        self._pending = still
        needed = min((low for _, _, low, _ in still), default=self._arrived)
        self._blocks = [(at, b) for at, b in self._blocks if at + b.shape[1] > needed]


def _argmax_labels(scores: NDArray[np.floating], offset: int = 0) -> NDArray[np.uint8]:
    """Argmax over the class axis as uint8 (ties to the lower label), a few slices at a time.

    With ``offset`` 1 the channels are classes ``1..n`` and class 0 scores 0 everywhere.
    """
    out = np.zeros(scores.shape[1:], dtype=np.uint8)
    for first in range(0, scores.shape[1], SCORE_SLAB_SLICES):
        block = scores[:, first : first + SCORE_SLAB_SLICES]
        out[first : first + block.shape[1]] = _running_argmax(block, block.shape[1:], offset)
    return out


def _running_argmax(
    channels: Iterable[NDArray[np.floating]], shape: tuple[int, ...], offset: int
) -> NDArray[np.uint8]:
    """Argmax as uint8 of scores that arrive one class at a time (ties to the lower label), so
    only the best score so far and one class's are held. With ``offset`` 1 the channels are
    classes ``1..n`` and class 0 scores 0 everywhere."""
    labels = np.zeros(shape, dtype=np.uint8)
    best = np.zeros(shape, dtype=np.float32) if offset else None
    for channel, score in enumerate(channels):
        if best is None:
            best = np.array(score, dtype=np.float32)  # a copy: best is written in place
            continue
        score = np.asarray(score, dtype=np.float32)
        labels[score > best] = channel + offset
        np.maximum(best, score, out=best)
    return labels
