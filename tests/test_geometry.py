"""Geometry: round trips, conventions of other tools, and the negative cases."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg import geometry as geo
from medseg.errors import GeometryError
from medseg.geometry import Geometry
from medseg.volume import SourceInfo, Volume, VolumeKind, require_same_geometry
from tests.strategies import geometries, indices, uids

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"


@given(geometries(), st.data())
def test_index_world_round_trip(g: Geometry, data: st.DataObject) -> None:
    idx = data.draw(indices(g))
    back = geo.world_to_index(g, geo.index_to_world(g, idx))
    np.testing.assert_allclose(back, idx, atol=1e-6)


@given(st.lists(st.tuples(*[st.floats(-1e4, 1e4)] * 3), min_size=1, max_size=5))
def test_lps_ras_round_trip(points: list[tuple[float, float, float]]) -> None:
    pts = np.asarray(points)
    np.testing.assert_allclose(geo.ras_to_lps(geo.lps_to_ras(pts)), pts)
    ras = geo.lps_to_ras(pts)
    np.testing.assert_allclose(ras[:, :2], -pts[:, :2])
    np.testing.assert_allclose(ras[:, 2], pts[:, 2])


@given(geometries(), st.data())
def test_simpleitk_agrees_on_every_voxel_position(g: Geometry, data: st.DataObject) -> None:
    """Our index_to_world equals SimpleITK's TransformContinuousIndexToPhysicalPoint."""
    size, spacing, origin, direction = geo.to_sitk(g)
    image = sitk.Image([1, 1, 1], sitk.sitkUInt8)  # geometry only; size is irrelevant to the map
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    idx = data.draw(indices(g))
    theirs = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx[::-1]])
    np.testing.assert_allclose(geo.index_to_world(g, idx), theirs, atol=1e-6)
    assert geo.from_sitk(size, spacing, origin, direction) == g


@given(geometries(), st.data())
def test_nibabel_affine_agrees_after_ras_to_lps(g: Geometry, data: st.DataObject) -> None:
    """The NIfTI affine maps (i, j, k) to RAS; converted to LPS it is our world position."""
    affine = geo.to_nifti_affine(g)
    idx = data.draw(indices(g))
    ras = nib.affines.apply_affine(affine, idx[::-1])
    np.testing.assert_allclose(geo.ras_to_lps(ras), geo.index_to_world(g, idx), atol=1e-6)
    back = geo.from_nifti_affine(affine, g.shape[::-1])
    assert geo.geometries_equal(back, g)


@given(geometries(), st.data())
def test_crop_keeps_world_positions(g: Geometry, data: st.DataObject) -> None:
    start = [data.draw(st.integers(0, n - 1)) for n in g.shape]
    stop = [data.draw(st.integers(s + 1, n)) for s, n in zip(start, g.shape)]
    cropped = geo.crop_geometry(g, start, stop)
    local = np.array([data.draw(st.integers(0, b - a - 1)) for a, b in zip(start, stop)], float)
    np.testing.assert_allclose(
        geo.index_to_world(cropped, local), geo.index_to_world(g, local + start), atol=1e-6
    )


@given(geometries(), st.data())
def test_index_box_in_a_crop_is_the_box_shifted(g: Geometry, data: st.DataObject) -> None:
    """A box of ``g`` seen from a crop of ``g`` (same spacing and direction) is the same box
    shifted by the crop's start; seen from a grid with twice the spacing, half of it."""
    start = [data.draw(st.integers(0, n - 1)) for n in g.shape]
    stop = [data.draw(st.integers(s + 1, n)) for s, n in zip(start, g.shape)]
    first = np.array([data.draw(st.integers(0, n - 1)) for n in g.shape], float)
    last = np.array([data.draw(st.integers(int(f), n - 1)) for f, n in zip(first, g.shape)], float)
    low, high = geo.index_box_in(g, first, last, geo.crop_geometry(g, start, stop))
    np.testing.assert_allclose(low, first - start, atol=1e-6)
    np.testing.assert_allclose(high, last - start, atol=1e-6)
    coarse = Geometry(g.shape, tuple(2 * d for d in g.spacing_mm), g.origin_mm, g.direction)
    low, high = geo.index_box_in(g, first, last, coarse)
    np.testing.assert_allclose(low, first / 2, atol=1e-6)
    np.testing.assert_allclose(high, last / 2, atol=1e-6)


@given(geometries(), st.floats(0.01, 100.0))
def test_shifted_geometry_is_never_equal(g: Geometry, shift_mm: float) -> None:
    moved = Geometry(
        g.shape, g.spacing_mm, (g.origin_mm[0] + shift_mm, *g.origin_mm[1:]), g.direction
    )
    assert not geo.geometries_equal(g, moved)
    with pytest.raises(GeometryError, match="different geometry"):
        geo.require_same_geometry(g, moved)


@given(geometries(), st.floats(1.001, 3.0))
def test_rescaled_geometry_is_never_equal(g: Geometry, factor: float) -> None:
    scaled = Geometry(
        g.shape, (g.spacing_mm[0] * factor, *g.spacing_mm[1:]), g.origin_mm, g.direction
    )
    assert not geo.geometries_equal(g, scaled)


@settings(max_examples=25)
@given(uids, uids)
def test_different_frame_of_reference_never_equal(u1: str, u2: str) -> None:
    g = Geometry((2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    a = Volume(
        np.zeros(g.shape, np.uint8), g, VolumeKind.LABELS, SourceInfo(frame_of_reference_uid=u1)
    )
    b = Volume(
        np.zeros(g.shape, np.uint8), g, VolumeKind.LABELS, SourceInfo(frame_of_reference_uid=u2)
    )
    if u1 == u2:
        require_same_geometry(a, b)
    else:
        with pytest.raises(GeometryError, match="different frames of reference"):
            require_same_geometry(a, b)


@given(geometries())
def test_voxel_volume_ml_from_spacing(g: Geometry) -> None:
    assert geo.voxel_volume_ml(g) == pytest.approx(np.prod(g.spacing_mm) / 1000.0)


def test_axial_default_matches_simpleitk_identity() -> None:
    g = Geometry((3, 4, 5), (2.0, 1.0, 0.5), (0.0, 0.0, 0.0))
    assert geo.to_sitk(g)[3] == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    # column index moves along +x, row index along +y, slice index along +z
    np.testing.assert_allclose(geo.index_to_world(g, [1, 2, 3]), [1.5, 2.0, 2.0])


def test_dicom_geometry_of_an_axial_stack() -> None:
    iop = [1, 0, 0, 0, 1, 0]
    positions = [[-100.0, -50.0, z] for z in (10.0, 12.5, 15.0)]
    g = geo.from_dicom(iop, positions, [0.7, 0.9], rows=4, columns=6)
    assert g.shape == (3, 4, 6)
    assert g.spacing_mm == pytest.approx((2.5, 0.7, 0.9))
    np.testing.assert_allclose(geo.slice_positions_mm(g), positions)
    assert geo.dicom_orientation(g) == pytest.approx(tuple(iop))
    # pixel (row 1, column 2) of slice 2: x moves by 2 columns * 0.9, y by 1 row * 0.7
    np.testing.assert_allclose(geo.index_to_world(g, [2, 1, 2]), [-98.2, -49.3, 15.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"spacing_mm": (1.0, 0.0, 1.0)}, "spacing_mm", id="zero-spacing"),
        pytest.param({"spacing_mm": (1.0, 1.0)}, "spacing_mm", id="two-spacings"),
        pytest.param({"spacing_mm": (1.0, float("nan"), 1.0)}, "spacing_mm", id="nan-spacing"),
        pytest.param({"shape": (0, 2, 2)}, "shape", id="empty-shape"),
        pytest.param({"origin_mm": (0.0, float("inf"), 0.0)}, "origin_mm", id="inf-origin"),
        pytest.param({"direction": (1.0, 0.1, 0, 0, 1, 0, 0, 0, 1)}, "orthonormal", id="sheared"),
        pytest.param({"direction": (2.0, 0, 0, 0, 1, 0, 0, 0, 1)}, "orthonormal", id="scaled"),
    ],
)
def test_invalid_geometry_is_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "shape": (2, 2, 2),
        "spacing_mm": (1.0, 1.0, 1.0),
        "origin_mm": (0.0, 0.0, 0.0),
    }
    args.update(kwargs)
    with pytest.raises(GeometryError, match=message):
        Geometry(**args)  # type: ignore[arg-type]


def test_only_geometry_module_inverts_or_reverses_axes() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "geometry.py":
            continue
        text = path.read_text()
        for pattern in (
            r"linalg\.inv",
            r"\[::-1\]",
            r"np\.flip\(",
            r"transpose\(\s*\(?2,\s*1,\s*0",
        ):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(PACKAGE)}: {pattern}")
    assert offenders == []


def _relabelled(
    g: Geometry, order: tuple[int, int, int], flips: tuple[bool, bool, bool]
) -> Geometry:
    """The same lattice as ``g`` with axes reordered and some reversed (independent of geo)."""
    d = g.direction_matrix
    corner = np.array([g.shape[a] - 1 if flips[a] else 0 for a in range(3)], dtype=float)
    columns = [d[:, a] * (-1.0 if flips[a] else 1.0) for a in order]
    return Geometry(
        tuple(g.shape[a] for a in order),  # type: ignore[arg-type]
        tuple(g.spacing_mm[a] for a in order),  # type: ignore[arg-type]
        tuple(geo.index_to_world(g, corner)),  # type: ignore[arg-type]
        tuple(np.stack(columns, axis=1).ravel()),
    )


@settings(max_examples=50)
@given(
    geometries(),
    st.permutations([0, 1, 2]),
    st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_reorder_to_grid_gathers_the_same_voxels(
    g: Geometry, order: list[int], flips: tuple[bool, bool, bool]
) -> None:
    small = Geometry((3, 4, 5), g.spacing_mm, g.origin_mm, g.direction)
    array = np.arange(60).reshape(small.shape)
    other = _relabelled(small, tuple(order), flips)  # type: ignore[arg-type]
    moved = geo.reorder_to_grid(array, small, other)
    # every voxel of the result sits at the world position of the voxel it came from
    for idx in [(0, 0, 0), (2, 3, 4), (1, 2, 0)]:
        target_idx = tuple(min(i, n - 1) for i, n in zip(idx, other.shape))
        world = geo.index_to_world(other, target_idx)
        source_idx = tuple(round(v) for v in geo.world_to_index(small, world))
        assert moved[target_idx] == array[source_idx]


@given(geometries())
def test_reorder_to_grid_refuses_a_half_voxel_shift(g: Geometry) -> None:
    small = Geometry((3, 4, 5), g.spacing_mm, g.origin_mm, g.direction)
    shifted = geo.crop_geometry(small, (0, 0, 0), small.shape)
    half = Geometry(
        shifted.shape,
        shifted.spacing_mm,
        tuple(geo.index_to_world(small, [0.5, 0.0, 0.0])),
        shifted.direction,
    )  # type: ignore[arg-type]
    with pytest.raises(GeometryError, match="not the same voxel lattice"):
        geo.reorder_to_grid(np.zeros(small.shape), small, half)


def _signed_permutation(
    order: list[int], signs: tuple[float, float, float], tilt_deg: float
) -> tuple[float, ...]:
    """A direction whose array axes follow world axes in any order and sense, tilted a little."""
    from scipy.spatial.transform import Rotation

    matrix = np.zeros((3, 3))
    for axis, (world, sign) in enumerate(zip(order, signs)):
        matrix[world, axis] = sign
    return tuple((Rotation.from_euler("z", tilt_deg, degrees=True).as_matrix() @ matrix).ravel())


@settings(max_examples=60)
@given(
    geometries(),
    st.permutations([0, 1, 2]),
    st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    st.floats(-20.0, 20.0),
)
def test_canonical_orientation_matches_simpleitk_dicomorient(
    g: Geometry, order: list[int], signs: tuple[float, float, float], tilt_deg: float
) -> None:
    """Independent referee: SimpleITK's DICOMOrient(image, "LPS") gives the same grid and voxels."""
    small = Geometry(
        (3, 4, 5), g.spacing_mm, g.origin_mm, _signed_permutation(order, signs, tilt_deg)
    )
    array = np.arange(60, dtype=np.int16).reshape(small.shape)
    reorientation = geo.canonical_reorientation(small)

    image = sitk.GetImageFromArray(array)
    _, spacing, origin, direction = geo.to_sitk(small)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    oriented = sitk.DICOMOrient(image, "LPS")
    expected = geo.from_sitk(
        oriented.GetSize(), oriented.GetSpacing(), oriented.GetOrigin(), oriented.GetDirection()
    )

    assert geo.geometries_equal(reorientation.target, expected)
    np.testing.assert_array_equal(reorientation.apply(array), sitk.GetArrayFromImage(oriented))


@settings(max_examples=60)
@given(geometries(), st.data())
def test_canonical_orientation_round_trip_keeps_every_voxel_in_place(
    g: Geometry, data: st.DataObject
) -> None:
    small = Geometry((3, 4, 5), g.spacing_mm, g.origin_mm, g.direction)
    array = np.arange(60).reshape(small.shape)
    r = geo.canonical_reorientation(small)
    canonical = r.apply(array)
    assert canonical.shape == r.target.shape
    np.testing.assert_array_equal(r.restore(canonical), array)
    np.testing.assert_array_equal(
        r.restore(np.stack([canonical, canonical]))[1], array
    )  # channels first
    # each canonical voxel lies where its source voxel lies
    index = tuple(data.draw(st.integers(0, n - 1)) for n in r.target.shape)
    value = int(canonical[index])
    source_index = np.unravel_index(value, small.shape)
    np.testing.assert_allclose(
        geo.index_to_world(r.target, index), geo.index_to_world(small, source_index), atol=1e-6
    )
    # the canonical grid is as close to axial as a signed permutation of the axes can get
    assert geo.canonical_reorientation(r.target).is_identity
