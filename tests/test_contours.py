"""Mask slice <-> polygon tracing: exact round trips under both even-odd and union readers."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from medseg.contours import (
    MAX_SIMPLIFY_VOXELS,
    mask_to_polygons,
    polygon_area,
    polygons_to_mask,
    split_polygon,
)
from tests.conftest import require_module


def _disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> NDArray[np.bool_]:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _empty() -> NDArray[np.bool_]:
    return np.zeros((12, 12), dtype=bool)


def _single_voxel() -> NDArray[np.bool_]:
    m = _empty()
    m[5, 7] = True
    return m


def _two_lesions() -> NDArray[np.bool_]:
    return _disk((40, 40), (10, 10), 5) | _disk((40, 40), (28, 25), 7)


def _donut() -> NDArray[np.bool_]:
    return _disk((40, 40), (20, 20), 12) & ~_disk((40, 40), (20, 20), 5)


def _two_holes() -> NDArray[np.bool_]:
    m = _disk((50, 50), (25, 25), 20)
    return m & ~_disk((50, 50), (15, 25), 4) & ~_disk((50, 50), (33, 20), 5)


def _island_in_hole() -> NDArray[np.bool_]:
    return _donut() | _disk((40, 40), (20, 20), 2)


def _border() -> NDArray[np.bool_]:
    m = np.zeros((20, 20), dtype=bool)
    m[:6, :9] = True  # touches the top-left corner
    m[14:, 17:] = True  # and the bottom-right one
    return m


def _full() -> NDArray[np.bool_]:
    return np.ones((7, 9), dtype=bool)


def _diagonal() -> NDArray[np.bool_]:
    m = _empty()
    m[3, 3] = m[4, 4] = m[5, 5] = True  # only corner contact
    return m


def _checkerboard() -> NDArray[np.bool_]:
    return (np.indices((10, 10)).sum(axis=0) % 2).astype(bool)


def _holes_in_line() -> NDArray[np.bool_]:
    """Holes stacked vertically: every cut from a lower hole meets the hole above first."""
    m = np.zeros((40, 15), dtype=bool)
    m[2:38, 2:13] = True
    for top in (5, 12, 19, 26, 33):
        m[top : top + 3, 5:10] = False
    return m


SHAPES = {
    "empty": _empty,
    "single-voxel": _single_voxel,
    "two-lesions": _two_lesions,
    "donut": _donut,
    "two-holes": _two_holes,
    "island-in-hole": _island_in_hole,
    "touching-border": _border,
    "full-slice": _full,
    "diagonal-only": _diagonal,
    "checkerboard": _checkerboard,
    "holes-in-a-column": _holes_in_line,
}

EXPECTED_POLYGONS = {
    "empty": 0,
    "single-voxel": 1,
    "two-lesions": 2,
    "donut": 1,  # keyhole: outer + hole as one polygon
    "two-holes": 1,
    "island-in-hole": 2,
    "touching-border": 2,
    "full-slice": 1,
    "diagonal-only": 3,
    "checkerboard": 50,
    "holes-in-a-column": 1,
}


@pytest.mark.parametrize("name", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("tolerance_mm", [0.0, 0.1, 5.0], ids=["exact", "0.1mm", "5mm"])
def test_round_trip_even_odd_and_union(name: str, tolerance_mm: float) -> None:
    mask = SHAPES[name]()
    polygons = mask_to_polygons(mask, (0.8, 0.8), tolerance_mm=tolerance_mm)
    assert len(polygons) == EXPECTED_POLYGONS[name]
    assert all(len(p) >= 3 for p in polygons)
    for rule in ("evenodd", "union"):
        back = polygons_to_mask(polygons, mask.shape, rule=rule)
        assert np.array_equal(back, mask), f"{name}: {rule} fill differs"


@pytest.mark.parametrize("name", list(SHAPES), ids=list(SHAPES))
def test_points_lie_on_voxel_edges(name: str) -> None:
    """Every vertex has a half-integer coordinate: it sits on a voxel edge, never on a centre."""
    for polygon in mask_to_polygons(SHAPES[name](), tolerance_mm=0.1):
        doubled = polygon * 2.0
        assert np.allclose(doubled, np.round(doubled))
        assert np.all((np.round(doubled).astype(int) % 2 == 1).any(axis=1))


def test_keyhole_donut_is_one_polygon_with_zero_area_cut() -> None:
    mask = _donut()
    (polygon,) = mask_to_polygons(mask, tolerance_mm=0.0)
    # shoelace area of the keyhole = outer area - hole area (the cut adds nothing)
    outer = mask_to_polygons(ndimage.binary_fill_holes(mask), tolerance_mm=0.0)[0]
    hole = mask_to_polygons(_disk((40, 40), (20, 20), 5), tolerance_mm=0.0)[0]
    assert polygon_area(polygon) == pytest.approx(
        abs(polygon_area(outer)) - abs(polygon_area(hole))
    )
    # a reader that fills each polygon and takes the union keeps the hole too
    assert not polygons_to_mask([polygon], mask.shape, rule="union")[20, 20]
    # outer and hole written separately would lose the hole under the union rule (FINDINGS)
    separate = polygons_to_mask([outer, hole], mask.shape, rule="union")
    assert separate[20, 20]


def test_collinear_points_always_dropped() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[4:14, 3:15] = True
    (polygon,) = mask_to_polygons(mask, tolerance_mm=0.0)
    # a rectangle traced through edge midpoints: 4 sides + 4 cut corners
    assert len(polygon) == 8


def _max_distance_to_outline(points: NDArray[np.float64], polygon: NDArray[np.float64]) -> float:
    """Largest distance from any of ``points`` to the closed outline ``polygon``."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    rel = points[:, None, :] - a[None, :, :]
    t = np.clip((rel * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    nearest = a[None] + t[..., None] * ab[None]
    return float(np.linalg.norm(points[:, None, :] - nearest, axis=-1).min(axis=1).max())


@pytest.mark.parametrize(
    ("tolerance_mm", "spacing_mm", "allowed_voxels"),
    [
        pytest.param(0.1, 1.0, 0.1, id="0.1mm-at-1mm"),
        pytest.param(0.1, 0.5, 0.2, id="0.1mm-at-0.5mm"),
        pytest.param(5.0, 1.0, MAX_SIMPLIFY_VOXELS, id="capped"),
    ],
)
def test_simplification_stays_within_tolerance(
    tolerance_mm: float, spacing_mm: float, allowed_voxels: float
) -> None:
    mask = _disk((120, 120), (60, 60), 50) & ~_disk((120, 120), (40, 70), 9)
    exact = mask_to_polygons(mask, (spacing_mm, spacing_mm), tolerance_mm=0.0)[0]
    simplified = mask_to_polygons(mask, (spacing_mm, spacing_mm), tolerance_mm=tolerance_mm)[0]
    assert len(simplified) <= len(exact)
    assert _max_distance_to_outline(exact, simplified) <= allowed_voxels + 1e-9
    assert np.array_equal(polygons_to_mask([simplified], mask.shape), mask)


def test_diagonal_edge_is_one_segment() -> None:
    """A 45-degree staircase traced through edge midpoints is exactly straight: 1 segment."""
    rows, cols = np.indices((60, 60))
    mask = (rows + cols < 80) & (rows > 3) & (cols > 3)
    (polygon,) = mask_to_polygons(mask, tolerance_mm=0.0)
    assert len(polygon) <= 8
    assert np.array_equal(polygons_to_mask([polygon], mask.shape), mask)


def test_random_masks_round_trip() -> None:
    rng = np.random.default_rng(7)
    for _ in range(40):
        mask = rng.random((24, 24)) < rng.uniform(0.3, 0.7)
        mask = ndimage.binary_opening(mask) | (rng.random((24, 24)) < 0.05)
        polygons = mask_to_polygons(mask, tolerance_mm=0.1)
        assert np.array_equal(polygons_to_mask(polygons, mask.shape), mask)
        assert np.array_equal(polygons_to_mask(polygons, mask.shape, rule="union"), mask)


@pytest.mark.parametrize("max_points", [16, 40, 200], ids=["16", "40", "200"])
@pytest.mark.parametrize("name", ["donut", "two-holes", "island-in-hole"], ids=str)
def test_split_polygon_keeps_the_fill(name: str, max_points: int) -> None:
    mask = np.kron(SHAPES[name](), np.ones((3, 3), dtype=bool))  # more points per ring
    for polygon in mask_to_polygons(mask, tolerance_mm=0.0):
        pieces = split_polygon(polygon, max_points)
        assert all(3 <= len(p) <= max_points for p in pieces)
        if len(polygon) > max_points:
            assert len(pieces) > 1
        original = polygons_to_mask([polygon], mask.shape)
        assert np.array_equal(polygons_to_mask(pieces, mask.shape), original)
        assert np.array_equal(polygons_to_mask(pieces, mask.shape, rule="union"), original)


def test_split_polygon_refuses_tiny_limits() -> None:
    with pytest.raises(ValueError, match="max_points"):
        split_polygon(np.zeros((10, 2)), 4)


def test_unknown_fill_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="rule"):
        polygons_to_mask([], (4, 4), rule="nonzero")


def test_mask_must_be_2d() -> None:
    with pytest.raises(ValueError, match="2D"):
        mask_to_polygons(np.zeros((2, 2, 2), dtype=bool))


def test_holes_run_opposite_to_their_outer_ring() -> None:
    """Non-zero-winding readers keep a hole only if it winds against the outer ring."""
    mask = _two_holes()
    outer = mask_to_polygons(ndimage.binary_fill_holes(mask), tolerance_mm=0.0)[0]
    keyhole = mask_to_polygons(mask, tolerance_mm=0.0)[0]
    assert polygon_area(outer) > 0
    assert 0 < polygon_area(keyhole) < polygon_area(outer)
    holes = mask_to_polygons(ndimage.binary_fill_holes(mask) & ~mask, tolerance_mm=0.0)
    assert all(polygon_area(h) > 0 for h in holes)  # a hole traced alone is an outer ring
    assert polygon_area(keyhole) == pytest.approx(
        polygon_area(outer) - sum(polygon_area(h) for h in holes)
    )


# ---------------------------------------------------------------------------------------------
# sub-voxel iso-lines of probabilities


def _logistic_donut(outer: float, inner: float) -> NDArray[np.float64]:
    rows, cols = np.ogrid[:48, :48]
    d = np.sqrt((rows - 23.3) ** 2 + (cols - 24.6) ** 2)
    return 1.0 / (1.0 + np.exp((d - outer) / 1.2)) - 1.0 / (1.0 + np.exp((d - inner) / 1.2))


def test_probability_donut_is_one_keyhole_polygon_for_both_readers() -> None:
    from medseg.contours import probability_to_polygons

    probability = _logistic_donut(15.0, 6.0)
    polygons = probability_to_polygons(probability)
    assert len(polygons) == 1  # hole joined by a zero-width cut
    even_odd = polygons_to_mask(polygons, probability.shape)
    union = polygons_to_mask(polygons, probability.shape, rule="union")
    assert np.array_equal(even_odd, union)
    assert not even_odd[23, 25]  # the hole survives
    expected = probability > 0.5
    assert np.count_nonzero(even_odd ^ expected) <= 0.02 * expected.sum()
    # sub-voxel: points are not all on voxel edges
    assert np.abs(polygons[0] - np.round(polygons[0] * 2) / 2).max() > 0.05


def test_probability_to_polygons_edge_cases() -> None:
    from medseg.contours import probability_to_polygons

    assert probability_to_polygons(np.zeros((8, 8))) == []
    assert probability_to_polygons(np.full((8, 8), 0.5)) == []  # not above the level
    full = probability_to_polygons(np.ones((5, 7)))
    assert polygons_to_mask(full, (5, 7)).all()
    with pytest.raises(ValueError, match="2D"):
        probability_to_polygons(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        probability_to_polygons(np.full((3, 3), np.nan))


# ---------------------------------------------------------------------------------------------
# readers that round vertices (rt-utils, platipy) and the inward move that makes them exact


def _rounding_reader(
    polygons: list[NDArray[np.float64]], shape: tuple[int, ...]
) -> NDArray[np.bool_]:
    """rt-utils 1.2.7's rasteriser (``image_helper.get_slice_mask_from_slice_contour_data``):
    every vertex rounded to the nearest voxel (``np.around``), then ``cv2.fillPoly`` of all
    polygons of the slice together, which fills the outline's own voxels too."""
    cv2 = require_module("cv2")  # OpenCV, as rt-utils installs it
    out = np.zeros(shape[:2], dtype=np.uint8)
    pts = [np.around(p[:, ::-1]).astype(np.int32) for p in polygons]  # (x=column, y=row)
    cv2.fillPoly(out, pts=pts, color=1)
    return out.astype(bool)


def _inset(polygons: list[NDArray[np.float64]]) -> list[NDArray[np.float64]]:
    from medseg.contours import READER_INSET_VOXELS, inset_polygon

    return [inset_polygon(p, READER_INSET_VOXELS) for p in polygons]


@pytest.mark.parametrize("name", list(SHAPES), ids=list(SHAPES))
def test_inset_polygons_are_exact_for_centre_and_rounding_readers(name: str) -> None:
    mask = SHAPES[name]()
    polygons = _inset(mask_to_polygons(mask))
    assert np.array_equal(polygons_to_mask(polygons, mask.shape), mask)
    assert np.array_equal(polygons_to_mask(polygons, mask.shape, rule="union"), mask)
    assert np.array_equal(_rounding_reader(polygons, mask.shape), mask)


def test_rounding_reader_reads_voxel_edge_points_too_large() -> None:
    """Without the inward move, the rounding reader adds voxels (the bug this fixes)."""
    mask = _two_lesions()
    read = _rounding_reader(mask_to_polygons(mask), mask.shape)
    assert read.sum() > mask.sum()
    assert np.array_equal(read & mask, mask)


def test_random_masks_are_exact_for_rounding_readers() -> None:
    """Exact, except where a hole has no cut whose two ends lie on voxel corners (a one-voxel
    hole is a diamond without a horizontal or vertical edge): a rounding reader may then add
    the voxel beside each end of that cut. No structure voxel is ever lost."""
    rng = np.random.default_rng(11)
    eight = np.ones((3, 3), dtype=bool)  # background is 8-connected (module docstring)
    exact = 0
    for _ in range(60):
        mask = rng.random((24, 24)) < rng.uniform(0.3, 0.7)
        mask = ndimage.binary_opening(mask) | (rng.random((24, 24)) < 0.05)
        polygons = _inset(mask_to_polygons(mask, tolerance_mm=0.1))
        assert np.array_equal(polygons_to_mask(polygons, mask.shape), mask)
        read = _rounding_reader(polygons, mask.shape)
        n_holes = ndimage.label(ndimage.binary_fill_holes(mask, structure=eight) & ~mask, eight)[1]
        assert not (mask & ~read).any()
        assert (read & ~mask).sum() <= 2 * n_holes
        exact += bool(np.array_equal(read, mask))
    assert exact >= 50


def test_inset_moves_every_vertex_inwards_by_the_distance() -> None:
    from medseg.contours import inset_polygon

    square = np.array([[0.5, 0.5], [0.5, 4.5], [4.5, 4.5], [4.5, 0.5]])  # voxels 1..4
    for ring in (square, square[::-1]):  # either winding
        moved = inset_polygon(ring, 0.02)
        np.testing.assert_allclose(np.sort(moved[:, 0]), [0.52, 0.52, 4.48, 4.48])
        np.testing.assert_allclose(np.sort(moved[:, 1]), [0.52, 0.52, 4.48, 4.48])
    np.testing.assert_array_equal(inset_polygon(square, 0.0), square)


def test_split_pieces_moved_inwards_stay_exact_for_rounding_readers() -> None:
    """Pieces of a split outline move apart along their cut line, so a rounding reader fills
    the cut's voxels once. (Split pieces of an outline *with holes* overlap themselves along
    the cut, which OpenCV's fill does not cancel: rt-utils reads those holes filled, with or
    without the inward move; outlines are split only past 65534 bytes, ~1,800 points.)"""
    mask = _disk((60, 60), (30, 29), 24)
    (polygon,) = mask_to_polygons(mask)
    pieces = _inset(split_polygon(polygon, 16))
    assert len(pieces) > 4
    assert np.array_equal(polygons_to_mask(pieces, mask.shape, rule="union"), mask)
    read = _rounding_reader(pieces, mask.shape)
    assert not (mask & ~read).any()
    # the cut lines cross the outline where it steps diagonally: one voxel at most each
    assert (read & ~mask).sum() <= 2 * len(pieces)


def test_probability_points_never_pass_half_way_to_an_outside_voxel() -> None:
    """Sub-voxel outlines: every point stays nearer its inside voxel centre than the outside
    one, so rounding readers read the voxels centre readers read."""
    from medseg.contours import probability_to_polygons

    rng = np.random.default_rng(5)
    extra = total = 0
    for _ in range(30):
        probability = ndimage.gaussian_filter(rng.random((30, 30)), 1.5)
        probability = (probability - probability.min()) / np.ptp(probability)
        polygons = probability_to_polygons(probability, tolerance_mm=0.0)
        centre_read = polygons_to_mask(polygons, probability.shape)
        assert np.array_equal(centre_read, probability > 0.5)
        rounded = _rounding_reader(_inset(polygons), probability.shape)
        assert not (centre_read & ~rounded).any()
        extra, total = extra + int((rounded & ~centre_read).sum()), total + int(centre_read.sum())
    # a few voxels beside keyhole cuts and diagonal chords (0.2 % measured; without pulling
    # points back, rounding readers read sub-voxel outlines several percent too large)
    assert extra <= 0.005 * total


def test_tiny_subvoxel_holes_get_a_keyhole() -> None:
    """A hole narrower than a voxel between half-integer columns still joins its outer ring."""
    from medseg.contours import probability_to_polygons

    probability = np.full((9, 9), 0.9)
    probability[0, :] = probability[-1, :] = probability[:, 0] = probability[:, -1] = 0.0
    probability[4, 4] = 0.3  # a dip below 0.5 around one voxel centre only
    (polygon,) = probability_to_polygons(probability, tolerance_mm=0.0)
    read = polygons_to_mask([polygon], probability.shape)
    assert np.array_equal(read, probability > 0.5)
