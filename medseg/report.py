"""QA pages: one per case (views through every lesion with the exported contours, and the
numbers), and a batch summary page linking the cases.

The case page is what a clinician opens before importing a segmentation into the planning
system: the model, the input series, then for each lesion (connected component) of each named
label an axial, a coronal and a sagittal view through its centroid, with the CT in a
soft-tissue window and the contour drawn **from the exported RT-STRUCT** when one is given
(see :mod:`medseg.report_views` for what is drawn in which view), the reference contour too
(dashed) when one is given; then the volumes, the lesion table and, with a reference, the
agreement metrics.

The pages are plain string templates with every value escaped; the PNGs sit beside
``report.html`` and are linked relatively, so a case folder can be moved or zipped whole. No
deep-learning stack is loaded here (a test checks that torch stays out).
"""

from __future__ import annotations

import html
import json
import math
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg import geometry as geo
from medseg.errors import InputError
from medseg.io import rtstruct_read
from medseg.io.files import atomic_dir, atomic_path
from medseg.metrics import SegmentationMetrics, compute_label_metrics
from medseg.postprocess import Lesion, find_lesions, volumes_report
from medseg.report_views import VIEWS, Outline, axis_map, display_window, draw_view
from medseg.structures import InterpretedType, Structure, structure_set
from medseg.volume import Volume, require_same_geometry

__all__ = [
    "MAX_LESIONS_PER_LABEL",
    "REPORT_TOLERANCE_MM",
    "SUMMARY_PAGE",
    "CaseSummary",
    "read_case_summary",
    "write_report",
    "write_summary_page",
]

#: Views are drawn for at most this many lesions per label (the largest), so a noisy
#: prediction with hundreds of specks still gives a page that opens quickly.
MAX_LESIONS_PER_LABEL = 10

#: Surface Dice tolerance used on the page when a reference is given.
REPORT_TOLERANCE_MM = 2.0

#: File name of the batch summary page in its folder.
SUMMARY_PAGE = "summary.html"

#: Outline colours when the RT-STRUCT gives none (or there is no RT-STRUCT), by label order.
_REFERENCE_COLOUR = "#ffff60"

_STYLE = """body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #111; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
th { background: #eee; }
figure { display: inline-block; margin: 0.3em; }
figure img { max-width: 30vw; height: auto; border: 1px solid #444; }
.note { color: #555; font-size: 0.9em; }
.warning { color: #a00; font-weight: bold; }
tr.failed td { background: #fdd; }"""

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
            drawn dashed and Dice, HD95, ASSD and surface Dice (at
            :data:`REPORT_TOLERANCE_MM`) are tabled.
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

    Returns:
        The path of ``report.html``. PNGs are named ``label<value>-lesion<id>-<view>.png``
        beside it.

    Raises:
        GeometryError: if image, labels and reference are not on one grid, or the RT-STRUCT
            is in another frame of reference or does not fit the image's slices
            (:class:`~medseg.errors.MissingReferenceError` when it references another
            series or slices the image lacks).
        InputError: if ``labels`` or ``reference`` is not a labels volume.
        UnreadableScanError: if ``rtstruct_path`` is not a readable RT Structure Set.
    """
    require_same_geometry(image, labels)
    if reference is not None:
        require_same_geometry(labels, reference)
    structures = _as_structures(names)
    colours = {s.label: s.hex_color for s in structures}
    names = {s.label: s.name for s in structures}
    report = volumes_report(labels, names)
    metrics: dict[str, SegmentationMetrics] = (
        compute_label_metrics(labels, reference, names, tolerance_mm=REPORT_TOLERANCE_MM)
        if reference is not None
        else {}
    )
    exported: dict[str, rtstruct_read.RoiContours] = {}
    exported_masks: dict[str, Volume] = {}
    warnings_html: list[str] = []
    series_description = "not recorded"
    generation: list[str] = []
    found = {name for name, entry in report["labels"].items() if entry["voxel_count"]}
    header = image.source.dicom_header
    if header is not None:  # which scan this is, also when no RT-STRUCT was written
        if not show_identifiers:
            series_description = "withheld (privacy.log_identifiers is off)"
        else:
            series_description = str(header.get("SeriesDescription", "") or series_description)
    if rtstruct_path is not None:
        structure_set = rtstruct_read.read_contours(Path(rtstruct_path), image)
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
            lesions: list[Lesion] = find_lesions(labels, value)[:MAX_LESIONS_PER_LABEL]
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
                    f"{name} (label {value}), lesion {lesion.id}: {_fmt(lesion.volume_ml)} mL, "
                    f"longest axial diameter {_fmt(lesion.longest_axial_diameter_mm, 1)} mm; "
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
            style=_STYLE,
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
            metrics_section=_metrics_section(metrics),
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


def _outlines(
    labels: Volume,
    value: int,
    name: str,
    exported: Mapping[str, rtstruct_read.RoiContours],
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


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else ("inf" if value > 0 else "-inf")


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], row_classes: Sequence[str] = ()
) -> str:
    """An HTML table; cells are escaped, except those given as ``Markup``."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        (f'<tr class="{row_classes[i]}">' if i < len(row_classes) and row_classes[i] else "<tr>")
        + "".join(
            f"<td>{cell if isinstance(cell, _Markup) else html.escape(cell)}</td>" for cell in row
        )
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Markup(str):
    """A table cell that is already HTML (built from escaped parts)."""

    __slots__ = ()


def _volumes_table(report: Mapping[str, Any], exported: Mapping[str, Volume] | None) -> str:
    header = ["structure", "label", "volume (mL)", "lesions"]
    rows = [
        [name, str(entry["label"]), _fmt(entry["volume_ml"]), str(entry["n_lesions"])]
        for name, entry in report["labels"].items()
    ]
    rows.append(["total", "", _fmt(report["total_burden_ml"]), str(report["n_lesions_total"])])
    if exported is not None:
        header.append("RT-STRUCT (mL)")
        total = 0.0
        for row, name in zip(rows, report["labels"], strict=False):
            mask = exported.get(name)
            volume_ml = (
                float(np.count_nonzero(mask.array)) * mask.voxel_volume_ml if mask else math.nan
            )
            total += 0.0 if math.isnan(volume_ml) else volume_ml
            row.append("missing" if math.isnan(volume_ml) else _fmt(volume_ml))
        rows[-1].append(_fmt(total))
    return _table(header, rows)


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


# ---------------------------------------------------------------------------------------------
# batch summary page


@dataclass(frozen=True, slots=True)
class CaseSummary:
    """One case's row on the batch summary page (:func:`write_summary_page`).

    Attributes:
        case: the case's name, e.g. its output folder's name; shown as given.
        status: ``"ok"`` for a case that went through; anything else (e.g. ``"failed"``,
            ``"skipped"``) is shown as given and the row is highlighted.
        report_path: the case's ``report.html`` (absolute, or relative to the working
            directory), linked relatively from the page; None when the case has none (a
            failed case). A path that does not exist is shown as missing, not linked.
        volumes_ml: structure name -> volume in mL (e.g. ``pipeline.CaseResult.volumes_ml``
            or :func:`read_case_summary`); a structure a case lacks shows blank.
        message: the reason for a failure or another note, shown as given; it must not hold
            protected health information (error messages from medseg do not).
    """

    case: str
    status: str
    report_path: Path | None = None
    volumes_ml: Mapping[str, float] = field(default_factory=dict)
    message: str = ""


def read_case_summary(case_dir: Path, *, status: str = "ok", message: str = "") -> CaseSummary:
    """The :class:`CaseSummary` of a case folder written by ``pipeline.predict_case``.

    Reads ``volumes.json`` for the volumes and links ``report/report.html``; the case's name
    is the folder's name. Meant for cases finished in an earlier run (a resumed batch).

    Raises:
        InputError: if ``case_dir/volumes.json`` is missing or not a volumes report.
    """
    case_dir = Path(case_dir)
    volumes_path = case_dir / "volumes.json"
    try:
        document = json.loads(volumes_path.read_text(encoding="utf-8"))
        volumes = {name: float(e["volume_ml"]) for name, e in document["labels"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{volumes_path}: not a readable volumes report ({exc})") from exc
    return CaseSummary(
        case=case_dir.name,
        status=status,
        report_path=case_dir / "report" / "report.html",
        volumes_ml=volumes,
        message=message,
    )


_SUMMARY = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medseg batch: {title}</title>
<style>
{style}
</style></head>
<body>
<h1>{title}</h1>
<p>{counts}</p>
{table}
</body></html>
"""


def write_summary_page(
    out_root: Path, cases: Sequence[CaseSummary], *, title: str = "medseg batch summary"
) -> Path:
    """Write the batch summary page ``out_root/summary.html``, atomically.

    One row per case, in the order given: name, status, the volume of every structure (the
    union over the cases, in order of first appearance, volumes in mL), the link to the case's
    ``report.html`` and the message. Links are relative to ``out_root``, so the batch folder
    can be moved whole.

    Args:
        out_root: the batch output folder (created if missing).
        cases: one :class:`CaseSummary` per case (from the batch runner, or
            :func:`read_case_summary` for case folders).
        title: the page's heading.

    Returns:
        The page's path, ``out_root /`` :data:`SUMMARY_PAGE`.
    """
    out_root = Path(out_root)
    structures: dict[str, None] = {}
    for case in cases:
        structures.update(dict.fromkeys(case.volumes_ml))
    rows: list[list[str]] = []
    for case in cases:
        row = [case.case, case.status]
        row += [_fmt(case.volumes_ml[s]) if s in case.volumes_ml else "" for s in structures]
        row += [_report_link(out_root, case.report_path), case.message]
        rows.append(row)
    n_ok = sum(case.status == "ok" for case in cases)
    counts = f"{len(cases)} cases: {n_ok} ok, {len(cases) - n_ok} not ok."
    table = _table(
        ["case", "status", *(f"{s} (mL)" for s in structures), "report", "message"],
        rows,
        ["" if case.status == "ok" else "failed" for case in cases],
    )
    page = _SUMMARY.format(
        title=html.escape(title), style=_STYLE, counts=html.escape(counts), table=table
    )
    path = out_root / SUMMARY_PAGE
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8", errors="backslashreplace")
    return path


def _report_link(out_root: Path, report_path: Path | None) -> str:
    if report_path is None:
        return ""
    if not Path(report_path).is_file():
        return "missing"
    relative = Path(os.path.relpath(Path(report_path).resolve(), Path(out_root).resolve()))
    href = urllib.parse.quote(relative.as_posix())
    return _Markup(f'<a href="{html.escape(href)}">report</a>')
