"""The PNG views of the QA page: a CT section with structure outlines, radiologically oriented.

Views follow the radiological convention: axial and coronal views show the patient's right on
the image's left (LPS x increases to the right); anterior is at the top of axial views and on
the left of sagittal views; superior is at the top of coronal and sagittal views. Pixels are
drawn in millimetres, so a 2.5 mm slice is 2.5 times as tall as a 1 mm pixel is wide and each
PNG's width/height is the field of view's width/height in mm. An oblique grid is shown along
its nearest patient axes (:func:`axis_map` says whether it is).

What is drawn for an exported structure (an :class:`Outline` with ``polygons``):

* In the view that cuts across array axis 0 (the slices the RT-STRUCT's contours lie on; the
  axial view for an axial scan) the file's polygons themselves are drawn, point for point.
* In the other two views the outline of the file's *rasterisation* is drawn. An RT-STRUCT
  holds planar polygons on the image slices only: there is no coronal or sagittal contour in
  it, and how a stack of polygons fills the space between slices is a reader's choice. The
  rasterisation (:func:`medseg.io.rtstruct.read`: a voxel belongs to the ROI if its centre is
  inside the slice's polygons by the even-odd rule, as the standard reads them) is the
  structure as a voxel volume, which is what planning systems compute volumes and dose-volume
  histograms from. Both come from the file, not from the label map, so an export that lost a
  hole, put a contour on the wrong slice or dropped a ROI shows in all three views.

Matplotlib draws through its object API and the Agg canvas (no pyplot state, no display).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

from medseg import geometry as geo
from medseg.volume import Volume

__all__ = [
    "CT_WINDOW_HU",
    "VIEWS",
    "AxisMap",
    "Outline",
    "View",
    "axis_map",
    "display_window",
    "draw_view",
]

#: Soft-tissue window (lower, upper) in HU for CT images: level 40, width 400.
CT_WINDOW_HU = (-160.0, 240.0)

#: Longest side of a view PNG in pixels.
_VIEW_SIZE_PX = 512
_DPI = 100

View = Literal["axial", "coronal", "sagittal"]

#: The views, in page order.
VIEWS: tuple[View, ...] = ("axial", "coronal", "sagittal")

#: For each view: the LPS axis it cuts across, then the LPS axes shown horizontally and
#: vertically, and whether each increases rightwards / upwards on screen (see module docstring).
_VIEW_AXES: dict[str, tuple[int, int, int, bool, bool]] = {
    "axial": (2, 0, 1, True, False),  # x to the right (patient left), y down (anterior up)
    "coronal": (1, 0, 2, True, True),  # x to the right, z up
    "sagittal": (0, 1, 2, True, True),  # y to the right (anterior left), z up
}

#: Orientation letters (left, right, top, bottom) drawn on each view.
_LETTERS = {
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}


@dataclass(frozen=True, slots=True)
class AxisMap:
    """How array axes sit in patient space, for display only.

    Attributes:
        lps_axis: for each array axis, the LPS axis (0 = x, 1 = y, 2 = z) it runs nearest to.
        oblique: True if some array axis is not exactly along a patient axis.
    """

    lps_axis: tuple[int, int, int]
    oblique: bool


@dataclass(frozen=True, slots=True)
class Outline:
    """One structure to outline on the views.

    Attributes:
        mask: full-volume boolean mask, array order ``(slice, row, column)``; the outline of
            its section is drawn (at the voxel-centre midpoints, level 0.5).
        colour: a matplotlib colour, e.g. ``"#ff3030"``.
        linestyle: ``"solid"`` or ``"dashed"``.
        polygons: optional slice index (array axis 0) -> ``(N, 2)`` ``(row, column)`` index
            polygons (e.g. an RT-STRUCT's contours from
            :func:`medseg.io.rtstruct.read_contours`). When given, the view that cuts
            across array axis 0 draws these instead of the mask's outline (see the module
            docstring); ``mask`` should then be their rasterisation.
    """

    mask: NDArray[np.bool_]
    colour: str
    linestyle: str = "solid"
    polygons: Mapping[int, Sequence[NDArray[np.float64]]] | None = None


def axis_map(geometry: geo.Geometry) -> AxisMap:
    """The LPS axis nearest to each array axis of ``geometry``, and whether it is oblique."""
    origin = geo.index_to_world(geometry, [0.0, 0.0, 0.0])
    steps = geo.index_to_world(geometry, np.eye(3)) - origin  # row a: world step of array axis a
    units = steps / np.linalg.norm(steps, axis=1, keepdims=True)
    lps = tuple(int(np.argmax(np.abs(u))) for u in units)
    if len(set(lps)) != 3:
        # a 45-degree tie; fall back to the array axes as the direction-free default
        lps = (2, 1, 0)
    oblique = bool(np.any(np.abs(np.abs(units).max(axis=1) - 1.0) > geo.DIRECTION_TOLERANCE))
    return AxisMap(lps_axis=lps, oblique=oblique)  # type: ignore[arg-type]


def _coordinate_mm(
    geometry: geo.Geometry, axis: int, lps_axis: int, index: NDArray[np.float64]
) -> NDArray[np.float64]:
    """LPS coordinate ``lps_axis`` (mm) of positions ``index`` along array ``axis``.

    Positions are taken along the axis through voxel 0; on an axis-aligned grid the other
    indices do not change this coordinate.
    """
    points = np.zeros((len(index), 3))
    points[:, axis] = index
    return np.asarray(geo.index_to_world(geometry, points)[:, lps_axis])


def display_window(image: Volume) -> tuple[float, float]:
    """Grey-level window (lower, upper): :data:`CT_WINDOW_HU` for CT, else percentiles 1-99."""
    array = np.asarray(image.array, dtype=float)
    if image.source.modality == "CT" or (image.source.modality is None and array.min() <= -500):
        return CT_WINDOW_HU
    low, high = (float(v) for v in np.percentile(array, [1.0, 99.0]))
    return (low, high if high > low else low + 1.0)


def draw_view(
    path: Path,
    view: View,
    image: Volume,
    outlines: Sequence[Outline],
    centre_index: NDArray[np.float64],
    window: tuple[float, float],
) -> tuple[int, int]:
    """Write one view PNG through ``centre_index``; returns its (width, height) in pixels.

    Args:
        path: the PNG to write.
        view: which view.
        image: the scan, array order ``(slice, row, column)``.
        outlines: the structures to outline, on ``image``'s grid.
        centre_index: continuous array index ``(slice, row, column)`` the view passes through.
        window: grey-level window (lower, upper) in image units (HU for CT).
    """
    geometry = image.geometry
    axes_map = axis_map(geometry)
    cut_lps, h_lps, v_lps, h_increasing, v_increasing = _VIEW_AXES[view]
    cut_axis = axes_map.lps_axis.index(cut_lps)
    h_axis = axes_map.lps_axis.index(h_lps)
    v_axis = axes_map.lps_axis.index(v_lps)
    k = int(np.clip(round(float(centre_index[cut_axis])), 0, geometry.shape[cut_axis] - 1))

    def plane(array: NDArray[Any]) -> NDArray[Any]:
        section = np.take(array, k, axis=cut_axis)
        # the remaining axes keep their order: (v, h) if v_axis < h_axis, else transposed
        return section if v_axis < h_axis else section.T

    n_h, n_v = geometry.shape[h_axis], geometry.shape[v_axis]
    h_edges = _coordinate_mm(geometry, h_axis, h_lps, np.array([-0.5, n_h - 0.5]))
    v_edges = _coordinate_mm(geometry, v_axis, v_lps, np.array([-0.5, n_v - 0.5]))
    h_centres = _coordinate_mm(geometry, h_axis, h_lps, np.arange(n_h, dtype=float))
    v_centres = _coordinate_mm(geometry, v_axis, v_lps, np.arange(n_v, dtype=float))
    width_mm = float(abs(h_edges[1] - h_edges[0]))
    height_mm = float(abs(v_edges[1] - v_edges[0]))
    scale_px_per_mm = _VIEW_SIZE_PX / max(width_mm, height_mm)
    width_px = max(round(width_mm * scale_px_per_mm), 1)
    height_px = max(round(height_mm * scale_px_per_mm), 1)

    figure = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    ax = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.imshow(
        plane(image.array),
        cmap="gray",
        vmin=window[0],
        vmax=window[1],
        origin="upper",  # row 0 at the top edge of the extent
        extent=(h_edges[0], h_edges[1], v_edges[1], v_edges[0]),
        interpolation="nearest",
        aspect="equal",  # extent is in mm: equal aspect is the physical aspect
    )
    for outline in outlines:
        style: dict[str, Any] = {
            "color": outline.colour, "linewidth": 1.5, "linestyle": outline.linestyle,
        }  # fmt: skip
        if outline.polygons is not None and cut_axis == 0:
            # polygon columns are array axes 1 and 2: (row, column)
            for polygon in outline.polygons.get(k, ()):
                closed = np.vstack([polygon, polygon[:1]])
                ax.plot(
                    _coordinate_mm(geometry, h_axis, h_lps, closed[:, h_axis - 1]),
                    _coordinate_mm(geometry, v_axis, v_lps, closed[:, v_axis - 1]),
                    **style,
                )
            continue
        section = plane(outline.mask)
        if section.any() and not section.all():
            ax.contour(
                h_centres, v_centres, section.astype(float), levels=[0.5],
                colors=[outline.colour], linewidths=1.5, linestyles=outline.linestyle,
            )  # fmt: skip
    h_lo, h_hi = sorted(h_edges)
    v_lo, v_hi = sorted(v_edges)
    ax.set_xlim((h_lo, h_hi) if h_increasing else (h_hi, h_lo))
    ax.set_ylim((v_lo, v_hi) if v_increasing else (v_hi, v_lo))
    left, right, top, bottom = _LETTERS[view]
    letters: dict[str, Any] = {
        "color": "yellow",
        "fontsize": 12,
        "transform": ax.transAxes,
        "weight": "bold",
    }
    ax.text(0.01, 0.5, left, ha="left", va="center", **letters)
    ax.text(0.99, 0.5, right, ha="right", va="center", **letters)
    ax.text(0.5, 0.99, top, ha="center", va="top", **letters)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **letters)
    figure.savefig(path, dpi=_DPI)
    return width_px, height_px
