"""A QA page per case: orthogonal views through every lesion with contours, and the numbers.

The page is what a clinician opens before importing a segmentation into the planning system:
for each lesion (connected component) of each named label, an axial, a coronal and a sagittal
view through its centroid, with the CT in a soft-tissue window and the predicted contour drawn
(the reference contour too, dashed, when one is given); then the volumes, the lesion table and,
with a reference, the agreement metrics.

Views follow the radiological convention: axial and coronal views show the patient's right on
the image's left (LPS x increases to the right); anterior is at the top of axial views and on
the left of sagittal views; superior is at the top of coronal and sagittal views. Pixels are
drawn in millimetres, so a 2.5 mm slice is 2.5 times as tall as a 1 mm pixel is wide and each
PNG's width/height is the field of view's width/height in mm. An oblique grid is shown along
its nearest patient axes (the page says so).

Matplotlib draws through its object API and the Agg canvas (no pyplot state, no display), and
the page is a plain string template with every value escaped. No deep-learning stack is
loaded here (a test checks that torch stays out).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

from medseg import geometry as geo
from medseg.io.files import atomic_dir
from medseg.metrics import SegmentationMetrics, compute_label_metrics
from medseg.postprocess import Lesion, find_lesions, volumes_report
from medseg.volume import Volume, require_same_geometry

__all__ = [
    "CT_WINDOW_HU",
    "MAX_LESIONS_PER_LABEL",
    "REPORT_TOLERANCE_MM",
    "View",
    "write_report",
]

#: Soft-tissue window (lower, upper) in HU for CT images: level 40, width 400.
CT_WINDOW_HU = (-160.0, 240.0)

#: Views are drawn for at most this many lesions per label (the largest), so a noisy
#: prediction with hundreds of specks still gives a page that opens quickly.
MAX_LESIONS_PER_LABEL = 10

#: Surface Dice tolerance used on the page when a reference is given.
REPORT_TOLERANCE_MM = 2.0

#: Longest side of a view PNG in pixels.
_VIEW_SIZE_PX = 512
_DPI = 100
_LPS_NAMES = ("x", "y", "z")

View = Literal["axial", "coronal", "sagittal"]

#: For each view: the LPS axis it cuts across, then the LPS axes shown horizontally and
#: vertically, and whether each increases rightwards / upwards on screen (see module docstring).
_VIEWS: dict[str, tuple[int, int, int, bool, bool]] = {
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
class _AxisMap:
    """How array axes sit in patient space, for display only.

    Attributes:
        lps_axis: for each array axis, the LPS axis (0 = x, 1 = y, 2 = z) it runs nearest to.
        oblique: True if some array axis is not exactly along a patient axis.
    """

    lps_axis: tuple[int, int, int]
    oblique: bool


def _axis_map(geometry: geo.Geometry) -> _AxisMap:
    origin = geo.index_to_world(geometry, [0.0, 0.0, 0.0])
    steps = geo.index_to_world(geometry, np.eye(3)) - origin  # row a: world step of array axis a
    units = steps / np.linalg.norm(steps, axis=1, keepdims=True)
    lps = tuple(int(np.argmax(np.abs(u))) for u in units)
    if len(set(lps)) != 3:
        # a 45-degree tie; fall back to the array axes as the direction-free default
        lps = (2, 1, 0)
    oblique = bool(np.any(np.abs(np.abs(units).max(axis=1) - 1.0) > geo.DIRECTION_TOLERANCE))
    return _AxisMap(lps_axis=lps, oblique=oblique)  # type: ignore[arg-type]


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


def _window(image: Volume) -> tuple[float, float]:
    array = np.asarray(image.array, dtype=float)
    if image.source.modality == "CT" or (image.source.modality is None and array.min() <= -500):
        return CT_WINDOW_HU
    low, high = (float(v) for v in np.percentile(array, [1.0, 99.0]))
    return (low, high if high > low else low + 1.0)


def _draw_view(
    path: Path,
    view: str,
    image: Volume,
    masks: Sequence[tuple[NDArray[np.bool_], str, str]],
    centre_index: NDArray[np.float64],
    window: tuple[float, float],
) -> tuple[int, int]:
    """Write one view PNG through ``centre_index``; returns its (width, height) in pixels.

    Args:
        masks: ``(mask, colour, linestyle)`` of each contour to draw, full-volume masks.
    """
    geometry = image.geometry
    axes_map = _axis_map(geometry)
    cut_lps, h_lps, v_lps, h_increasing, v_increasing = _VIEWS[view]
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
    for mask, colour, linestyle in masks:
        section = plane(mask)
        if section.any() and not section.all():
            ax.contour(
                h_centres, v_centres, section.astype(float), levels=[0.5],
                colors=[colour], linewidths=1.5, linestyles=linestyle,
            )  # fmt: skip
    h_lo, h_hi = sorted(h_edges)
    v_lo, v_hi = sorted(v_edges)
    ax.set_xlim((h_lo, h_hi) if h_increasing else (h_hi, h_lo))
    ax.set_ylim((v_lo, v_hi) if v_increasing else (v_hi, v_lo))
    left, right, top, bottom = _LETTERS[view]
    style: dict[str, Any] = {
        "color": "yellow",
        "fontsize": 12,
        "transform": ax.transAxes,
        "weight": "bold",
    }
    ax.text(0.01, 0.5, left, ha="left", va="center", **style)
    ax.text(0.99, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.99, top, ha="center", va="top", **style)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)
    figure.savefig(path, dpi=_DPI)
    return width_px, height_px


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else ("inf" if value > 0 else "-inf")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medseg QA: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #111; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }}
th {{ background: #eee; }}
figure {{ display: inline-block; margin: 0.3em; }}
figure img {{ max-width: 30vw; border: 1px solid #444; }}
.note {{ color: #555; font-size: 0.9em; }}
</style></head>
<body>
<h1>Segmentation QA</h1>
<p>Source: <code>{title}</code><br>Grid: {grid}</p>
<p class="note">Radiological convention: patient right on the image left; anterior up in axial
views. Solid contours: prediction{reference_note}. {oblique_note}</p>
<h2>Volumes</h2>
{volumes_table}
<h2>Lesions</h2>
{lesions_table}
{metrics_section}
<h2>Views</h2>
{views}
</body></html>
"""


def write_report(
    image: Volume,
    labels: Volume,
    names: Mapping[int, str],
    out_dir: Path,
    *,
    reference: Volume | None = None,
) -> Path:
    """Write ``report.html`` and its view PNGs into ``out_dir``, atomically.

    Args:
        image: the scan, array order ``(slice, row, column)``; HU for CT.
        labels: the predicted ``LABELS`` volume on the image's grid.
        names: label value -> structure name; only these labels are shown.
        out_dir: the report folder; replaced as a whole if it exists (a half-written report is
            never left behind).
        reference: optional reference ``LABELS`` volume on the same grid: its contours are
            drawn dashed and Dice, HD95, ASSD and surface Dice (at
            :data:`REPORT_TOLERANCE_MM`) are tabled.

    Returns:
        The path of ``report.html``. PNGs are named ``<label>-<lesion id>-<view>.png`` beside it.

    Raises:
        GeometryError: if image, labels and reference are not on one grid.
        InputError: if ``labels`` or ``reference`` is not a labels volume.
    """
    require_same_geometry(image, labels)
    if reference is not None:
        require_same_geometry(labels, reference)
    report = volumes_report(labels, names)
    metrics: dict[str, SegmentationMetrics] = (
        compute_label_metrics(labels, reference, names, tolerance_mm=REPORT_TOLERANCE_MM)
        if reference is not None
        else {}
    )
    window = _window(image)
    colours = ("#ff3030", "#30c030", "#3080ff", "#ff9f00", "#d040d0", "#00d0d0")
    axes_map = _axis_map(image.geometry)
    out_dir = Path(out_dir)
    views_html: list[str] = []
    with atomic_dir(out_dir, overwrite=True) as tmp:
        for n, (value, name) in enumerate(names.items()):
            colour = colours[n % len(colours)]
            predicted = np.asarray(labels.array == value)
            referenced = np.asarray(reference.array == value) if reference is not None else None
            lesions: list[Lesion] = find_lesions(labels, value)[:MAX_LESIONS_PER_LABEL]
            source = "prediction"
            if not lesions and reference is not None:
                lesions = find_lesions(reference, value)[:MAX_LESIONS_PER_LABEL]
                source = "reference only (missed by the prediction)"
            masks = [(predicted, colour, "solid")]
            if referenced is not None:
                masks.append((referenced, "#ffff60", "dashed"))
            for lesion in lesions:
                centre_index = geo.world_to_index(image.geometry, lesion.centroid_mm)
                figures = []
                for view in _VIEWS:
                    file_name = f"label{value}-lesion{lesion.id}-{view}.png"
                    width, height = _draw_view(
                        tmp / file_name, view, image, masks, centre_index, window
                    )
                    figures.append(
                        f'<figure><img src="{html.escape(file_name)}" width="{width}" '
                        f'height="{height}" alt="{html.escape(name)} lesion {lesion.id} {view}">'
                        f"<figcaption>{view}</figcaption></figure>"
                    )
                heading = (
                    f"{name} (label {value}), lesion {lesion.id}: {_fmt(lesion.volume_ml)} mL, "
                    f"longest axial diameter {_fmt(lesion.longest_axial_diameter_mm, 1)} mm; "
                    f"{source}"
                )
                views_html.append(f"<h3>{html.escape(heading)}</h3>" + "".join(figures))
        page = _PAGE.format(
            title=html.escape(labels.source.describe()),
            grid=html.escape(
                f"shape {image.geometry.shape} (slice, row, column), spacing "
                f"{tuple(round(s, 3) for s in image.geometry.spacing_mm)} mm"
            ),
            reference_note="; dashed yellow: reference" if reference is not None else "",
            oblique_note=(
                "The grid is oblique: views are along its nearest patient axes."
                if axes_map.oblique
                else ""
            ),
            volumes_table=_volumes_table(report),
            lesions_table=_lesions_table(report),
            metrics_section=_metrics_section(metrics),
            views="\n".join(views_html) or "<p>No lesions.</p>",
        )
        (tmp / "report.html").write_text(page, encoding="utf-8")
    return out_dir / "report.html"


def _volumes_table(report: Mapping[str, Any]) -> str:
    rows = [
        [name, str(entry["label"]), _fmt(entry["volume_ml"]), str(entry["n_lesions"])]
        for name, entry in report["labels"].items()
    ]
    rows.append(["total", "", _fmt(report["total_burden_ml"]), str(report["n_lesions_total"])])
    return _table(["structure", "label", "volume (mL)", "lesions"], rows)


def _lesions_table(report: Mapping[str, Any]) -> str:
    rows = [
        [
            name, str(lesion["id"]), _fmt(lesion["volume_ml"]),
            _fmt(lesion["longest_axial_diameter_mm"], 1),
            ", ".join(_fmt(c, 1) for c in lesion["centroid_mm"]),
            f"{lesion['first_slice']}-{lesion['last_slice']} ({lesion['n_slices']})",
        ]
        for name, entry in report["labels"].items()
        for lesion in entry["lesions"]
    ]  # fmt: skip
    return _table(
        ["structure", "lesion", "volume (mL)", "longest axial diameter (mm)",
         "centroid LPS (mm)", "slices"],
        rows,
    )  # fmt: skip


def _metrics_section(metrics: Mapping[str, SegmentationMetrics]) -> str:
    if not metrics:
        return ""
    rows = [
        [name, _fmt(m.dice, 3), _fmt(m.hausdorff95_mm), _fmt(m.assd_mm), _fmt(m.surface_dice, 3),
         _fmt(m.volume_prediction_ml), _fmt(m.volume_reference_ml),
         _fmt(100 * m.relative_volume_error, 1)]
        for name, m in metrics.items()
    ]  # fmt: skip
    header = [
        "structure", "Dice", "HD95 (mm)", "ASSD (mm)", f"surface Dice @{REPORT_TOLERANCE_MM} mm",
        "predicted (mL)", "reference (mL)", "volume error (%)",
    ]  # fmt: skip
    return "<h2>Agreement with the reference</h2>" + _table(header, rows)
