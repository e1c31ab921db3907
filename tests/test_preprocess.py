"""Body box, model grid and resampling between grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from medseg import geometry as geo
from medseg.config import PreprocessConfig
from medseg.errors import InputError
from medseg.geometry import Geometry
from medseg.preprocess import (
    body_box,
    model_grid,
    resample,
    resample_scores_to_labels,
    scale_intensity,
)
from medseg.volume import Volume, VolumeKind


def _oblique() -> tuple[float, ...]:
    a = math.radians(25.0)
    r = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    return tuple(r.ravel())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_body_box_is_the_bounding_box_of_every_voxel_above_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = Geometry((45, 30, 33), (2.5, 0.7, 0.9), (0.0, 0.0, 0.0))
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    for _ in range(3):  # separate blobs, one possibly on the border
        k, j, i = (int(rng.integers(0, n)) for n in grid.shape)
        hu[k : k + 3, j : j + 2, i : i + 4] = 50.0
    points = np.argwhere(hu > -500.0)
    margin_mm = 2.0
    margin = [math.ceil(margin_mm / s) for s in grid.spacing_mm]
    expected_start = tuple(max(0, int(points[:, a].min()) - margin[a]) for a in range(3))
    expected_stop = tuple(
        min(grid.shape[a], int(points[:, a].max()) + 1 + margin[a]) for a in range(3)
    )
    assert body_box(Volume(hu, grid), -500.0, margin_mm) == (expected_start, expected_stop)


def test_body_box_of_air_is_none() -> None:
    grid = Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert body_box(Volume(np.full(grid.shape, -1000.0), grid), -500.0, 5.0) is None


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.5, 0.7), (3.3, 0.35, 2.1)])
def test_model_grid_covers_the_input(spacing: tuple[float, float, float]) -> None:
    grid = Geometry((21, 40, 37), (2.5, 0.8, 0.9), (5.0, -3.0, 100.0), _oblique())
    target = model_grid(grid, spacing)
    assert target.spacing_mm == spacing and target.direction == grid.direction
    last = geo.index_to_world(grid, np.asarray(grid.shape, dtype=float) - 1.0)
    index = geo.world_to_index(target, last)
    assert np.all(index <= np.asarray(target.shape) - 1 + 1e-6)
    assert np.all(index >= np.asarray(target.shape) - 2)  # no more than one voxel to spare


def test_labels_survive_a_round_trip_through_a_finer_grid() -> None:
    grid = Geometry((7, 9, 11), (2.0, 2.0, 2.0), (1.0, 2.0, 3.0), _oblique())
    labels = np.random.default_rng(0).integers(0, 4, grid.shape).astype(np.uint8)
    volume = Volume(labels, grid, VolumeKind.LABELS)
    fine = resample(volume, model_grid(grid, (1.0, 1.0, 1.0)))
    back = resample(fine, grid)
    assert back.kind is VolumeKind.LABELS and back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, labels)


def _sparse_scores(shape: tuple[int, int, int]) -> np.ndarray:
    """Background wins everywhere but in two small blobs of classes 1 and 2 (a lesion case)."""
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(3, *shape)).astype(np.float32)
    scores[0] += 6.0
    scores[1, 3:5, 4:8, 5:9] += 12.0
    scores[2, 9:11, 14:16, 2:4] += 12.0
    return scores.astype(np.float16)


SCORE_CASES = {
    # dense noise: every slab has every class; the interpolation runs everywhere
    "noise": (
        Geometry((13, 20, 22), (3.0, 1.6, 1.4), (-5.0, 7.0, 11.0), _oblique()),
        Geometry((40, 37, 31), (0.9, 0.8, 0.95), (-3.0, 8.0, 12.0), _oblique()),
        lambda shape: np.random.default_rng(1).normal(size=(3, *shape)).astype(np.float16),
    ),
    # two blobs: most slabs and most of each slab are skipped as all-background corners;
    # the target grid is not even aligned with the source's axes
    "sparse-lesions": (
        Geometry((13, 20, 22), (3.0, 1.6, 1.4), (-5.0, 7.0, 11.0), _oblique()),
        Geometry((44, 40, 36), (0.9, 0.8, 0.95), (0.0, 6.0, -8.0)),
        _sparse_scores,
    ),
}


@pytest.mark.parametrize("case", SCORE_CASES.values(), ids=SCORE_CASES.keys())
def test_slab_wise_scores_match_whole_volume_simpleitk(case: tuple) -> None:
    source, target, make = case
    scores = make(source.shape)

    labels = resample_scores_to_labels(scores, source, target)

    # referee: each class resampled whole by SimpleITK, then numpy's argmax
    size, spacing, origin, direction = geo.to_sitk(target)
    whole = []
    for channel in scores.astype(np.float32):
        image = sitk.GetImageFromArray(channel)
        _, s_spacing, s_origin, s_direction = geo.to_sitk(source)
        image.SetSpacing(s_spacing)
        image.SetOrigin(s_origin)
        image.SetDirection(s_direction)
        out = sitk.Resample(
            image,
            [int(v) for v in size],
            sitk.Transform(),
            sitk.sitkLinear,
            origin,
            spacing,
            direction,
            0.0,
            sitk.sitkFloat32,
            True,
        )
        whole.append(sitk.GetArrayFromImage(out))
    expected = np.argmax(np.stack(whole), axis=0)
    assert len(np.unique(expected)) == 3  # the case has all three labels on the target
    np.testing.assert_array_equal(labels, expected)
    # the same from the scores relative to background (one channel less)
    relative = scores[1:].astype(np.float32) - scores[0].astype(np.float32)
    from_relative = resample_scores_to_labels(relative, source, target, relative_to_background=True)
    assert np.mean(from_relative == expected) > 0.9995  # float rounding at near-ties only


def test_resample_linear_reads_an_integer_image_and_matches_whole_volume_simpleitk() -> None:
    from medseg.preprocess import resample_linear

    source = Geometry((30, 40, 50), (2.5, 0.9, 0.8), (1.0, -2.0, 3.0), _oblique())
    hu = np.random.default_rng(3).integers(-1000, 1500, source.shape).astype(np.int16)
    region = geo.crop_geometry(model_grid(source, (2.0, 1.5, 1.5)), (3, 5, 7), (20, 19, 22))

    part = resample_linear(hu, source, region)

    whole = resample(Volume(hu.astype(np.float32), source), model_grid(source, (2.0, 1.5, 1.5)))
    assert part.dtype == np.float32
    np.testing.assert_allclose(part, whole.array[3:20, 5:19, 7:22], atol=1e-3)


def test_scale_intensity_refuses_nan() -> None:
    grid = Geometry((2, 2, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    hu = np.zeros(grid.shape)
    hu[1, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        scale_intensity(Volume(hu, grid), PreprocessConfig(lower_hu=-100.0, upper_hu=100.0))


def test_foreground_box_crops_air_but_never_a_label() -> None:
    from medseg.preprocess import foreground_box

    grid = Geometry((20, 40, 50), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    hu = np.full(grid.shape, -1000.0)
    hu[5:15, 10:30, 20:35] = 40.0  # the body
    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[8, 12, 22] = 1
    labels[19, 39, 0] = 1  # a label in the air at the far corner: kept
    box = foreground_box(Volume(hu, grid), Volume(labels, grid, VolumeKind.LABELS), -500.0, 2.0)
    assert box == ((4, 8, 0), (20, 40, 37))
    labels[19, 39, 0] = 0
    box = foreground_box(Volume(hu, grid), Volume(labels, grid, VolumeKind.LABELS), -500.0, 2.0)
    assert box == ((4, 8, 18), (16, 32, 37))  # body box + 1 slice (2 mm) / 2 voxels
    empty = foreground_box(
        Volume(np.full(grid.shape, -1000.0), grid),
        Volume(np.zeros(grid.shape, np.uint8), grid, VolumeKind.LABELS),
        -500.0,
        2.0,
    )
    assert empty == ((0, 0, 0), grid.shape)


def test_zscore_standardises_the_body_and_clips() -> None:
    from medseg.preprocess import normaliser

    rng = np.random.default_rng(0)
    hu = np.full((10, 30, 30), -1000.0)
    hu[2:8, 5:25, 5:25] = rng.normal(300.0, 50.0, (6, 20, 20))
    hu[0, 0, 0] = 5000.0  # above upper: clipped to 1000 before the statistics
    config = PreprocessConfig(lower_hu=-900.0, upper_hu=1000.0, intensity="zscore")
    body = hu > -900.0
    clipped = np.minimum(hu[body], 1000.0)
    z = normaliser(hu, config)(hu)
    np.testing.assert_allclose(
        z[body], (clipped - clipped.mean()) / clipped.std(), rtol=1e-4, atol=1e-4
    )
    # slab by slab gives the same as the whole image (statistics are of the whole image)
    np.testing.assert_array_equal(normaliser(hu, config)(hu[3:5]), z[3:5])
    constant = np.full((2, 3, 3), 7.0)
    assert np.isfinite(normaliser(constant, config)(constant)).all()
