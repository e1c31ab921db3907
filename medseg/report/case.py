"""The QA page of one case: views through every lesion with the exported contours, and the
numbers.

The case page is what a clinician opens before importing a segmentation into the planning
system: the model, the input series, then for each lesion (connected component) of each named
label an axial, a coronal and a sagittal view through its centroid, with the CT in a
soft-tissue window and the contour drawn **from the exported RT-STRUCT** when one is given
(see :mod:`medseg.report.views` for what is drawn in which view), the reference contour too
(dashed) when one is given; then the volumes, the lesion table and, with a reference, the
agreement metrics.

The pages are plain string templates with every value escaped; the PNGs sit beside
``report.html`` and are linked relatively, so a case folder can be moved or zipped whole. No
deep-learning stack is loaded here (a test checks that torch stays out).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg import geometry as geo
from medseg.errors import InputError
from medseg.io import rtstruct
from medseg.io.files import atomic_dir
from medseg.metrics import SegmentationMetrics, compute_label_metrics
from medseg.postprocess import Lesion, VolumesReport, find_lesions, volumes_report
from medseg.report._html import STYLE, fmt, html_table
from medseg.report.views import VIEWS, Outline, axis_map, display_window, draw_view
from medseg.structures import InterpretedType, Structure, structure_set
from medseg.tolerances import Tolerance, resolve_tolerances
from medseg.volume import Volume, require_same_geometry

__all__ = [
    "MAX_LESIONS_PER_LABEL",
    "REPORT_TOLERANCE_MM",
    "write_report",
]

#: Views are drawn for at most this many lesions per label (the largest), so a noisy
#: prediction with hundreds of specks still gives a page that opens quickly.
MAX_LESIONS_PER_LABEL = 10

#: Surface Dice tolerance on the page, when a reference is given, of a structure that medseg's
#: H&N table (:func:`medseg.tolerances.resolve_tolerances`) does not have.
REPORT_TOLERANCE_MM = 2.0

#: Outline colours when the RT-STRUCT gives none (or there is no RT-STRUCT), by label order.
_REFERENCE_COLOUR = "#ffff60"

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medseg QA: {title}</title>
<style>
{style}
</style></head>
<body>
<h1>Segmentation QA</h1>
<p>Input: <code>{title}</code><br>Series description: {series_description}<br>
Model: {model_id}<br>Contours: {contour_source}<br>Grid: {grid}</p>
{warnings}
<p class="note">Radiological convention: patient right on the image left; anterior up in axial
views. Solid contours: {solid_note}{reference_note}. {oblique_note}</p>
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
    names: Sequence[Structure] | Mapping[int, str],
    out_dir: Path,
    *,
    reference: Volume | None = None,
    rtstruct_path: Path | None = None,
    model_id: str | None = None,
    show_identifiers: bool = False,
    volumes: VolumesReport | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
) -> Path:
    """Write ``report.html`` and its view PNGs into ``out_dir``, atomically.

    Args:
        image: the scan, array order ``(slice, row, column)``; HU for CT.
        labels: the predicted ``LABELS`` volume on the image's grid; lesions, volumes and
            views come from it.
        names: the structures to show (:class:`medseg.structures.Structure`, drawn in their
            display colours), or label value -> structure name (palette colours).
        out_dir: the report folder; replaced as a whole if it exists (a half-written report is
            never left behind).
        reference: optional reference ``LABELS`` volume on the same grid: its contours are
            drawn dashed and Dice, HD95, ASSD and surface Dice are tabled, the surface Dice at
            each structure's tolerance (``tolerances``).
        rtstruct_path: the RT-STRUCT exported from ``labels`` onto ``image`` (which must
            then be the DICOM series it references). The contours drawn are the file's, ROIs
            matched to ``names`` by ROIName, in the file's display colours; the volume table
            gets the file's rasterised volumes, and the page warns about a structure found
            but missing from the file. Without it the label map's outlines are drawn. The
            page shows the image's SeriesDescription (if read from DICOM) either way.
        model_id: the model that made ``labels`` (e.g. name, version, run id). Without it the
            page shows the RT-STRUCT's ROIGenerationDescription.
        show_identifiers: show the image's SeriesDescription (``privacy.log_identifiers``);
            clinics put patient names there, so by default the page says it is withheld.
        volumes: the :func:`~medseg.postprocess.volumes_report` of ``labels`` and ``names``,
            when the caller has it (``predict_case`` writes ``volumes.json`` from the same
            one): its volumes and lesions are shown and the components are not found again.
            Without it the report is computed here.
        tolerances: structure name -> surface Dice tolerance
            (:func:`medseg.tolerances.resolve_tolerances`, as ``medseg evaluate`` resolves
            them); a structure it lacks gets medseg's H&N organ tolerance, else
            :data:`REPORT_TOLERANCE_MM`. Tabled beside each surface Dice.

    Returns:
        The path of ``report.html``. PNGs are named ``label<value>-lesion<id>-<view>.png``
        beside it.

    Raises:
        GeometryError: if image, labels and reference are not on one grid, or the RT-STRUCT
            is in another frame of reference or does not fit the image's slices
            (:class:`~medseg.errors.MissingReferenceError` when it references another
            series or slices the image lacks).
        InputError: if ``labels`` or ``reference`` is not a labels volume, or ``volumes`` is
            not the report of ``labels`` (another grid) and ``names`` (other structures).
        UnreadableScanError: if ``rtstruct_path`` is not a readable RT Structure Set.
    """
    require_same_geometry(image, labels)
    if reference is not None:
        require_same_geometry(labels, reference)
    structures = _as_structures(names)
    colours = {s.label: s.hex_color for s in structures}
    names = {s.label: s.name for s in structures}
    if volumes is None:
        report = volumes_report(labels, names)
    else:
        _require_report_of(volumes, labels, names)
        report = volumes
    used = resolve_tolerances(names.values(), REPORT_TOLERANCE_MM) | dict(tolerances or {})
    metrics: dict[str, SegmentationMetrics] = (
        compute_label_metrics(
            labels, reference, names, tolerance_mm={n: t.mm for n, t in used.items()}
        )
        if reference is not None
        else {}
    )
    exported: dict[str, rtstruct.RoiContours] = {}
    exported_masks: dict[str, Volume] = {}
    warnings_html: list[str] = []
    series_description = "not recorded"
    generation: list[str] = []
    found = {s.name for s in report.structures if s.voxel_count}
    predicted = report.by_label()
    header = image.source.dicom_header
    if header is not None:  # which scan this is, also when no RT-STRUCT was written
        if not show_identifiers:
            series_description = "withheld (privacy.log_identifiers is off)"
        else:
            series_description = str(header.get("SeriesDescription", "") or series_description)
    if rtstruct_path is not None:
        structure_set = rtstruct.read_contours(Path(rtstruct_path), image)
        exported = structure_set.by_name()
        exported_masks = structure_set.masks(image)
        generation = sorted({r.generation_description or "" for r in structure_set.rois} - {""})
        missing = [name for name in names.values() if name not in exported and name in found]
        if missing:
            warnings_html.append(f"Not in the RT-STRUCT: {', '.join(missing)}.")
    not_found = [name for name in names.values() if name not in found]
    if not_found:  # left out of the RT-STRUCT and SEG (export.empty_rois: omit)
        warnings_html.append(f"Not found in this scan: {', '.join(not_found)}.")
    window = display_window(image)
    out_dir = Path(out_dir)
    views_html: list[str] = []
    with atomic_dir(out_dir, overwrite=True) as tmp:
        for value, name in names.items():
            outlines = _outlines(
                labels, value, name, exported, exported_masks, colours[value], rtstruct_path
            )
            if reference is not None:
                outlines.append(
                    Outline(np.asarray(reference.array == value), _REFERENCE_COLOUR, "dashed")
                )
            lesions: list[Lesion] = list(predicted[value].lesions[:MAX_LESIONS_PER_LABEL])
            source = "prediction"
            if not lesions and reference is not None:
                lesions = find_lesions(reference, value)[:MAX_LESIONS_PER_LABEL]
                source = "reference only (missed by the prediction)"
            for lesion in lesions:
                centre_index = geo.world_to_index(image.geometry, lesion.centroid_mm)
                figures = []
                for view in VIEWS:
                    file_name = f"label{value}-lesion{lesion.id}-{view}.png"
                    width, height = draw_view(
                        tmp / file_name, view, image, outlines, centre_index, window
                    )
                    figures.append(
                        f'<figure><img src="{html.escape(file_name)}" width="{width}" '
                        f'height="{height}" alt="{html.escape(name)} lesion {lesion.id} {view}">'
                        f"<figcaption>{view}</figcaption></figure>"
                    )
                heading = (
                    f"{name} (label {value}), lesion {lesion.id}: {fmt(lesion.volume_ml)} mL, "
                    f"longest axial diameter {fmt(lesion.longest_axial_diameter_mm, 1)} mm; "
                    f"{source}"
                )
                views_html.append(f"<h3>{html.escape(heading)}</h3>" + "".join(figures))
        if rtstruct_path is not None:
            contour_source = (
                f"from the exported RT-STRUCT {Path(rtstruct_path).name} (axial: its polygons; "
                "coronal and sagittal: the outline of its rasterisation)"
            )
        else:
            contour_source = "from the label map (no RT-STRUCT was given)"
        page = _PAGE.format(
            title=html.escape(image.source.describe()),
            style=STYLE,
            series_description=html.escape(series_description),
            model_id=html.escape(model_id or "; ".join(generation) or "not recorded"),
            contour_source=html.escape(contour_source),
            grid=html.escape(
                f"shape {image.geometry.shape} (slice, row, column), spacing "
                f"{tuple(round(s, 3) for s in image.geometry.spacing_mm)} mm"
            ),
            warnings="".join(f'<p class="warning">{html.escape(w)}</p>' for w in warnings_html),
            solid_note="RT-STRUCT" if rtstruct_path is not None else "prediction",
            reference_note="; dashed yellow: reference" if reference is not None else "",
            oblique_note=(
                "The grid is oblique: views are along its nearest patient axes."
                if axis_map(image.geometry).oblique
                else ""
            ),
            volumes_table=_volumes_table(report, exported_masks if rtstruct_path else None),
            lesions_table=_lesions_table(report),
            metrics_section=_metrics_section(metrics, used),
            views="\n".join(views_html) or "<p>No lesions.</p>",
        )
        # an input path that is not UTF-8 (a folder named in Latin-1) is shown escaped
        (tmp / "report.html").write_text(page, encoding="utf-8", errors="backslashreplace")
    return out_dir / "report.html"


def _as_structures(names: Sequence[Structure] | Mapping[int, str]) -> tuple[Structure, ...]:
    """Structures as given, or made from a ``{label: name}`` map with palette colours.

    The report shows no interpreted type, so names given as a map are not sent through the
    type rule (whose warnings belong where structures are declared).
    """
    if isinstance(names, Mapping):
        return structure_set(
            [Structure(label=v, name=n, type=InterpretedType.ORGAN) for v, n in names.items()]
        )
    return tuple(names)


def _require_report_of(report: VolumesReport, labels: Volume, names: Mapping[int, str]) -> None:
    """Refuse a volumes report made from another label map or for other structures: the
    page would show numbers that are not those of its contours."""
    if report.geometry != labels.geometry:
        raise InputError(
            f"{labels.source.describe()}: the volumes report ({report.source}) was made on "
            f"another grid, {report.geometry}, than the labels' {labels.geometry}"
        )
    given = {s.label: s.name for s in report.structures}
    if given != dict(names):
        raise InputError(
            f"{labels.source.describe()}: the volumes report has the structures {given}, "
            f"the report was asked for {dict(names)}"
        )


def _outlines(
    labels: Volume,
    value: int,
    name: str,
    exported: Mapping[str, rtstruct.RoiContours],
    exported_masks: Mapping[str, Volume],
    colour: str,
    rtstruct_path: Path | None,
) -> list[Outline]:
    """The solid outline of one structure: the RT-STRUCT's when given, else the label map's."""
    if rtstruct_path is None:
        return [Outline(np.asarray(labels.array == value), colour)]
    roi = exported.get(name)
    if roi is None:
        return []  # the page warns that it is missing
    if roi.colour_rgb is not None:  # the file's own colour, as a planning system shows it
        colour = "#{:02x}{:02x}{:02x}".format(*roi.colour_rgb)
    mask = np.asarray(exported_masks[name].array, dtype=bool)
    return [Outline(mask, colour, "solid", polygons=roi.polygons)]


def _volumes_table(report: VolumesReport, exported: Mapping[str, Volume] | None) -> str:
    header = ["structure", "label", "volume (mL)", "lesions"]
    rows = [[s.name, str(s.label), fmt(s.volume_ml), str(s.n_lesions)] for s in report.structures]
    rows.append(["total", "", fmt(report.total_burden_ml), str(report.n_lesions_total)])
    if exported is not None:
        header.append("RT-STRUCT (mL)")
        total = 0.0
        for row, structure in zip(rows, report.structures, strict=False):
            mask = exported.get(structure.name)
            volume_ml = (
                float(np.count_nonzero(mask.array)) * mask.voxel_volume_ml if mask else math.nan
            )
            total += 0.0 if math.isnan(volume_ml) else volume_ml
            row.append("missing" if math.isnan(volume_ml) else fmt(volume_ml))
        rows[-1].append(fmt(total))
    return html_table(header, rows)


def _lesions_table(report: VolumesReport) -> str:
    rows = [
        [
            s.name, str(lesion.id), fmt(lesion.volume_ml),
            fmt(lesion.longest_axial_diameter_mm, 1),
            ", ".join(fmt(c, 1) for c in lesion.centroid_mm),
            f"{lesion.first_slice}-{lesion.last_slice} ({lesion.n_slices})",
        ]
        for s in report.structures
        for lesion in s.lesions
    ]  # fmt: skip
    return html_table(
        ["structure", "lesion", "volume (mL)", "longest axial diameter (mm)",
         "centroid LPS (mm)", "slices"],
        rows,
    )  # fmt: skip


def _metrics_section(
    metrics: Mapping[str, SegmentationMetrics], tolerances: Mapping[str, Tolerance]
) -> str:
    if not metrics:
        return ""
    rows = [
        [name, fmt(m.dice, 3), fmt(m.hausdorff95_mm), fmt(m.assd_mm), fmt(m.surface_dice, 3),
         fmt(tolerances[name].mm), fmt(m.volume_prediction_ml), fmt(m.volume_reference_ml),
         fmt(100 * m.relative_volume_error, 1)]
        for name, m in metrics.items()
    ]  # fmt: skip
    header = [
        "structure", "Dice", "HD95 (mm)", "ASSD (mm)", "surface Dice", "tolerance (mm)",
        "predicted (mL)", "reference (mL)", "volume error (%)",
    ]  # fmt: skip
    return "<h2>Agreement with the reference</h2>" + html_table(header, rows)
