"""Body box, model grid and resampling between grids."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

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
from medseg.preprocess import resample_linear as preprocess_resample_linear
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


@pytest.mark.parametrize("case", SCORE_CASES.values(), ids=SCORE_CASES.keys())
@pytest.mark.parametrize("blocks", [(1,), (3, 5), (8, 1, 2)])
@pytest.mark.parametrize("relative", [False, True])
def test_labels_streamed_a_few_source_slices_at_a_time_are_the_whole_grids(
    case: tuple, blocks: tuple[int, ...], relative: bool
) -> None:
    """StreamedLabels (inference resamples each row of windows' finished slices onto the
    input grid as they come, never holding the scores of the whole model grid) gives the
    labels of one call on the whole grid, whatever the sizes of the blocks that arrive."""
    from medseg.preprocess import StreamedLabels

    source, target, make = case
    scores = make(source.shape).astype(np.float16)
    if relative:
        scores = (scores[1:].astype(np.float32) - scores[0].astype(np.float32)).astype(np.float16)
    expected = resample_scores_to_labels(scores, source, target, relative_to_background=relative)
    out = np.full(target.shape, 7, dtype=np.uint8)
    stream = StreamedLabels(source, target, out, relative_to_background=relative)
    first, sizes = 0, itertools.cycle(blocks)
    while first < source.shape[0]:
        n = min(next(sizes), source.shape[0] - first)
        stream.add(first, scores[:, first : first + n].copy())
        first += n
    stream.finish()
    assert len(np.unique(expected)) == 3
    np.testing.assert_array_equal(out, expected)


def test_streamed_labels_refuse_slices_out_of_order() -> None:
    from medseg.preprocess import StreamedLabels

    source, target, make = SCORE_CASES["noise"]
    stream = StreamedLabels(source, target, np.zeros(target.shape, dtype=np.uint8))
    stream.add(0, make(source.shape)[:, :2])
    with pytest.raises(ValueError, match="expected source slice 2 next, got 3"):
        stream.add(3, make(source.shape)[:, 3:4])


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


# ---------------------------------------------------------------------------------------------
# nnU-Net's intensity normalisations, written out as nnunetv2 computes them


def _ct_like(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = np.full((9, 20, 24), -1000.0, dtype=np.float32)
    hu[1:8, 3:17, 4:20] = rng.normal(40.0, 30.0, (7, 14, 16))
    hu[4, 8:11, 9:12] = 1500.0  # bone, above the clip
    return hu


def test_clip_zscore_is_nnunet_ct_normalization() -> None:
    from medseg.preprocess import normaliser

    lower, upper, mean, std = -57.5, 210.25, 38.5, 27.75
    config = PreprocessConfig(
        lower_hu=lower, upper_hu=upper, intensity="clip_zscore", intensity_mean=mean,
        intensity_std=std,
    )  # fmt: skip
    hu = _ct_like()
    # nnunetv2 CTNormalization.run, float32 target dtype
    expected = hu.astype(np.float32, copy=True)
    np.clip(expected, lower, upper, out=expected)
    expected -= mean
    expected /= max(std, 1e-8)
    normalise = normaliser(hu, config)
    np.testing.assert_array_equal(normalise(hu), expected)
    np.testing.assert_array_equal(normalise(hu[2:5]), expected[2:5])  # slab by slab alike
    assert normaliser(hu[:1], config)(hu).tobytes() == expected.tobytes()  # no image statistics
    assert hu[4, 8, 9] == 1500.0  # the input is not written to


@pytest.mark.parametrize("offset", [0.0, 20000.0], ids=["ct", "large-offset"])
def test_image_zscore_is_nnunet_zscore_normalization_over_every_voxel(offset: float) -> None:
    from medseg.preprocess import normaliser

    config = PreprocessConfig(lower_hu=-900.0, upper_hu=100.0, intensity="image_zscore")
    hu = _ct_like(1) + np.float32(offset)
    # nnunetv2 ZScoreNormalization.run with use_mask_for_norm False (in float64 here)
    image = hu.astype(np.float64)
    expected = (image - image.mean()) / max(image.std(), 1e-8)
    normalise = normaliser(hu, config)
    got = normalise(hu)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert got.max() > (upper := (100.0 + offset - image.mean()) / image.std()) > 0  # no clip
    assert upper < got[4, 8, 9]
    np.testing.assert_array_equal(normaliser(hu, config)(hu[3:6]), got[3:6])
    assert normalise.air_hu == float(hu.min())
    constant = np.full((2, 3, 3), 7.0, dtype=np.float32)
    np.testing.assert_array_equal(normaliser(constant, config)(constant), 0.0)


@pytest.mark.parametrize(
    "extra",
    [
        {"intensity": "window"},
        {"intensity": "zscore"},
        {"intensity": "clip_zscore", "intensity_mean": 30.0, "intensity_std": 40.0},
        {"intensity": "image_zscore"},
    ],
    ids=["window", "zscore", "clip_zscore", "image_zscore"],
)
def test_air_maps_to_what_the_darkest_voxel_maps_to(extra: dict) -> None:
    """Padding with ``air_hu`` gives what the mode makes of air: of the image's minimum (-1000
    HU here) in every mode, and of ``lower_hu`` itself where the mode clips there."""
    from medseg.preprocess import normaliser

    config = PreprocessConfig(lower_hu=-200.0, upper_hu=300.0, **extra)
    hu = _ct_like(2)
    normalise = normaliser(hu, config)
    air = normalise(np.array([normalise.air_hu], dtype=np.float32))
    np.testing.assert_array_equal(air, normalise(np.array([hu.min()])))
    if config.intensity != "image_zscore":
        assert normalise.air_hu == config.lower_hu


def test_window_and_zscore_are_unchanged_by_the_new_modes() -> None:
    """The two modes that existed map as their formulas always said (window bit for bit)."""
    from medseg.preprocess import normaliser, window_intensity

    hu = _ct_like(3)
    window = PreprocessConfig(lower_hu=-100.0, upper_hu=250.0)
    expected = np.clip((hu - np.float32(-100.0)) / np.float32(350.0), 0.0, 1.0)
    np.testing.assert_array_equal(normaliser(hu, window)(hu), expected)
    np.testing.assert_array_equal(window_intensity(hu, window), expected)


# ---------------------------------------------------------------------------------------------
# separate-z resampling (nnU-Net's do_separate_z, order_z 0)


@pytest.mark.parametrize(
    ("source", "target", "axis"),
    [
        ((5.0, 0.8, 0.8), (1.0, 1.0, 1.0), 0),
        ((0.8, 0.8, 5.0), (1.0, 1.0, 1.0), 2),
        ((0.7, 3.0, 0.7), (1.0, 1.0, 1.0), 1),
        ((1.0, 1.0, 1.0), (2.0, 2.0, 2.0), None),
        ((3.0, 1.0, 1.0), (3.0, 1.0, 1.0), None),  # exactly 3: not above the threshold
        ((1.0, 1.0, 1.0), (4.0, 1.0, 1.0), 0),  # the target's axis when the source is iso
        ((0.24, 1.25, 1.25), (3.0, 0.5, 0.5), None),  # two coarse axes: nnU-Net's example
        ((2.0, 0.5, 2.0), (4.0, 1.0, 1.0), None),  # the source decides, even with a tie
    ],
    ids=["slices", "columns", "rows", "iso", "at-threshold", "target", "two-coarse", "tie"],
)
def test_separate_z_axis_is_nnunet_s_choice(
    source: tuple[float, ...], target: tuple[float, ...], axis: int | None
) -> None:
    from medseg.preprocess import separate_z_axis

    assert separate_z_axis(source, target) == axis


def _in_plane_then_nearest(image: Volume, target: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's separate-z on an axial grid, computed plane by plane with 2-D SimpleITK
    images (linear in each source slice onto the target's plane, then the nearest source
    slice for each target slice). Returns the values and a mask of target slices that lie
    half-way between two source slices (rounding there is a coin toss: not compared)."""
    source = image.geometry
    planes = []
    for k in range(source.shape[0]):
        plane = sitk.GetImageFromArray(np.asarray(image.array[k], dtype=np.float64))
        plane.SetSpacing((source.spacing_mm[2], source.spacing_mm[1]))
        plane.SetOrigin((source.origin_mm[0], source.origin_mm[1]))
        resampler = sitk.ResampleImageFilter()
        resampler.SetSize((target.shape[2], target.shape[1]))
        resampler.SetOutputSpacing((target.spacing_mm[2], target.spacing_mm[1]))
        resampler.SetOutputOrigin((target.origin_mm[0], target.origin_mm[1]))
        resampler.SetInterpolator(sitk.sitkLinear)
        resampler.SetUseNearestNeighborExtrapolator(True)
        planes.append(sitk.GetArrayFromImage(resampler.Execute(plane)))
    # slices run along world z on an axial grid: array axis 0, LPS coordinate 2
    z_mm = target.origin_mm[2] + np.arange(target.shape[0]) * target.spacing_mm[0]
    index = (z_mm - source.origin_mm[2]) / source.spacing_mm[0]
    nearest = np.clip(np.floor(index + 0.5), 0, source.shape[0] - 1).astype(int)
    tie = np.abs(index - np.floor(index) - 0.5) < 1e-6
    return np.stack(planes)[nearest], tie


anisotropic_cases = st.tuples(
    st.tuples(st.integers(2, 6), st.integers(3, 9), st.integers(3, 9)),
    st.tuples(st.floats(3.5, 8.0), st.floats(0.5, 1.2), st.floats(0.5, 1.2)),
    st.tuples(st.floats(0.6, 3.0), st.floats(0.4, 2.0), st.floats(0.4, 2.0)),
    st.tuples(*[st.floats(-200.0, 200.0)] * 3),
    st.integers(0, 2**31 - 1),
)


@settings(max_examples=40, deadline=None)
@given(anisotropic_cases)
def test_separate_z_is_in_plane_linear_then_nearest_along_the_coarse_axis(case: tuple) -> None:
    shape, spacing, target_spacing, origin, seed = case
    grid = Geometry(shape, spacing, origin)
    hu = np.random.default_rng(seed).uniform(-1000.0, 1000.0, shape).astype(np.float32)
    image = Volume(hu, grid)
    target = model_grid(grid, target_spacing)
    expected, tie = _in_plane_then_nearest(image, target)
    got = resample(image, target, separate_z=True)
    assert got.geometry == target and got.array.dtype == np.float32
    np.testing.assert_allclose(got.array[~tie], expected[~tie], atol=2e-3)
    # resample_linear (inference, slab by slab) gives the same on any box of the target
    start = (target.shape[0] // 3, 1, 0)
    stop = (target.shape[0], target.shape[1], max(1, target.shape[2] - 1))
    part = geo.crop_geometry(target, start, stop)
    slab = preprocess_resample_linear(hu, grid, part, separate_z=True)
    inside = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    np.testing.assert_allclose(slab, got.array[inside], atol=2e-3)


@settings(max_examples=30, deadline=None)
@given(anisotropic_cases, st.booleans())
def test_separate_z_keeps_the_grid_and_changes_only_images(case: tuple, oblique: bool) -> None:
    """The flag changes values, never the grid (origin, spacing, direction, shape); labels are
    nearest-neighbour with it or without; identity stays the input."""
    shape, spacing, target_spacing, origin, seed = case
    direction = _oblique() if oblique else geo.AXIAL_DIRECTION
    grid = Geometry(shape, spacing, origin, direction)
    rng = np.random.default_rng(seed)
    image = Volume(rng.uniform(-1000.0, 1000.0, shape).astype(np.float32), grid)
    labels = Volume(rng.integers(0, 3, shape).astype(np.uint8), grid, VolumeKind.LABELS)
    target = model_grid(grid, target_spacing)
    with_flag, without = resample(image, target, separate_z=True), resample(image, target)
    assert with_flag.geometry == without.geometry == target
    assert with_flag.array.shape == without.array.shape == target.shape
    np.testing.assert_array_equal(
        resample(labels, target, separate_z=True).array, resample(labels, target).array
    )
    assert resample(image, grid, separate_z=True) is image
    crop = geo.crop_geometry(grid, (0, 1, 1), (shape[0], shape[1], shape[2]))
    np.testing.assert_allclose(
        preprocess_resample_linear(image.array, grid, crop, separate_z=True),
        image.array[:, 1:, 1:],
        rtol=1e-6,
        atol=1e-3,
    )


def test_separate_z_keeps_thick_slices_apart() -> None:
    """A lesion in one 5 mm slice stays at full intensity on the 1 mm grid (nearest across
    slices), where trilinear resampling halves it between slices."""
    grid = Geometry((5, 8, 8), (5.0, 0.8, 0.8), (0.0, 0.0, 0.0))
    hu = np.zeros(grid.shape, dtype=np.float32)
    hu[2] = 400.0
    target = model_grid(grid, (1.0, 0.8, 0.8))
    separate = resample(Volume(hu, grid), target, separate_z=True).array
    trilinear = resample(Volume(hu, grid), target).array
    assert set(np.unique(separate).tolist()) == {0.0, 400.0}
    assert np.flatnonzero(separate[:, 4, 4]).tolist() == list(range(8, 13))  # 7.5..12.5 mm
    assert 0.0 < trilinear[7, 4, 4] < 400.0


def test_separate_z_refuses_grids_of_different_direction() -> None:
    from medseg.errors import GeometryError

    grid = Geometry((4, 6, 6), (5.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    turned = Geometry((6, 6, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), _oblique())
    with pytest.raises(GeometryError, match="one direction"):
        resample(Volume(np.zeros(grid.shape, np.float32), grid), turned, separate_z=True)
