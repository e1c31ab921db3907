"""The batch summary page: one row per case, with its status, volumes and a link to its QA page."""

from __future__ import annotations

import html
import json
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.errors import ConfigError, InputError
from medseg.io.files import atomic_path
from medseg.report._html import STYLE, Markup, fmt, html_table
from medseg.status import SummaryStatus, count_statuses

if TYPE_CHECKING:
    from medseg.evaluation import EvaluationSummary

__all__ = [
    "SUMMARY_PAGE",
    "CaseSummary",
    "SummaryStatus",
    "read_case_summary",
    "write_summary_page",
]

#: File name of the batch summary page in its folder.
SUMMARY_PAGE = "summary.html"


@dataclass(frozen=True, slots=True)
class CaseSummary:
    """One case's row on the batch summary page (:func:`write_summary_page`).

    Attributes:
        case: the case's name, e.g. its output folder's name; shown as given.
        status: a :class:`~medseg.status.SummaryStatus` (or its word: ``"done"``,
            ``"skipped"``, ``"failed"``, ``"interrupted"``), shown as that word, the word
            ``summary.csv`` has; failed and interrupted rows are highlighted.
        report_path: the case's ``report.html`` (absolute, or relative to the working
            directory), linked relatively from the page; None when the case has none (a
            failed case). A path that does not exist is shown as missing, not linked.
        volumes_ml: structure name -> volume in mL (e.g. ``pipeline.CaseResult.volumes_ml``
            or :func:`read_case_summary`); a structure a case lacks shows blank.
        message: the reason for a failure or another note, shown as given; it must not hold
            protected health information (error messages from medseg do not).

    Raises:
        ConfigError: ``status`` is not a SummaryStatus or one of its words.
    """

    case: str
    status: SummaryStatus
    report_path: Path | None = None
    volumes_ml: Mapping[str, float] = field(default_factory=dict)
    message: str = ""

    def __post_init__(self) -> None:
        try:
            status = SummaryStatus(self.status)
        except ValueError:
            words = ", ".join(s.value for s in SummaryStatus)
            raise ConfigError(
                f"CaseSummary.status of {self.case!r} must be one of {words}, got {self.status!r}"
            ) from None
        object.__setattr__(self, "status", status)


def read_case_summary(
    case_dir: Path, *, status: SummaryStatus = SummaryStatus.DONE, message: str = ""
) -> CaseSummary:
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
{references}
</body></html>
"""


def write_summary_page(
    out_root: Path,
    cases: Sequence[CaseSummary],
    *,
    title: str = "medseg batch summary",
    evaluation: EvaluationSummary | None = None,
) -> Path:
    """Write the batch summary page ``out_root/summary.html``, atomically.

    One row per case, in the order given: name, status, the volume of every structure (the
    union over the cases, in order of first appearance, volumes in mL), the link to the case's
    ``report.html`` and the message; failed and interrupted rows are highlighted. Above the
    table, the count of each status (``5 cases: 3 done, 1 skipped, 1 failed.``). Links are
    relative to ``out_root``, so the batch folder can be moved whole.

    Args:
        out_root: the batch output folder (created if missing).
        cases: one :class:`CaseSummary` per case (from the batch runner, or
            :func:`read_case_summary` for case folders).
        title: the page's heading.
        evaluation: the cases' agreement with their references
            (:func:`medseg.evaluation.evaluate_folder` with the case names as its case names,
            as ``medseg batch --references`` makes it): each case row gets its mean Dice and
            surface Dice over the structures, and a section below the table has per
            structure the tolerance, the medians of Dice, surface Dice, HD95, added path
            length and the fraction of slices needing no edit, the experts' medians beside
            them when the evaluation had a reference agreement (rows where the model is worse
            highlighted), and the cases that could not be evaluated.

    Returns:
        The page's path, ``out_root /`` :data:`SUMMARY_PAGE`.
    """
    out_root = Path(out_root)
    structures: dict[str, None] = {}
    for case in cases:
        structures.update(dict.fromkeys(case.volumes_ml))
    per_case = {} if evaluation is None else evaluation.per_case
    compared = ["mean Dice", "mean surface Dice"] if evaluation is not None else []
    rows: list[list[str]] = []
    for case in cases:
        row = [case.case, case.status.value]
        row += [fmt(case.volumes_ml[s]) if s in case.volumes_ml else "" for s in structures]
        if evaluation is not None:
            row += _case_agreement(per_case.get(case.case))
        row += [_report_link(out_root, case.report_path), case.message]
        rows.append(row)
    counts = count_statuses(case.status for case in cases) + "."
    table = html_table(
        ["case", "status", *(f"{s} (mL)" for s in structures), *compared, "report", "message"],
        rows,
        # the row's class is its status word: failed and interrupted rows are highlighted
        ["" if case.status.ok else case.status.value for case in cases],
    )
    page = _SUMMARY.format(
        title=html.escape(title),
        style=STYLE,
        counts=html.escape(counts),
        table=table,
        references="" if evaluation is None else _references_section(evaluation, out_root),
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
    return Markup(_link(out_root, report_path, "report"))


def _case_agreement(metrics: Mapping[str, Mapping[str, float]] | None) -> list[str]:
    """A case row's mean Dice and surface Dice over its structures (blank without a
    reference)."""
    if not metrics:
        return ["", ""]
    return [
        fmt(sum(m[key] for m in metrics.values()) / len(metrics), 3)
        for key in ("dice", "surface_dice")
    ]


def _references_section(evaluation: EvaluationSummary, out_root: Path) -> str:
    """Per structure the medians over the evaluated cases, beside the experts' agreement."""

    def median(name: str, column: str, digits: int = 2) -> str:
        value = evaluation.statistics[name][column]["median"]
        return "" if value is None else fmt(float(value), digits)

    experts = evaluation.expert_agreement
    header = [
        "structure", "tolerance (mm)", "tolerance source", "cases", "Dice", "surface Dice",
        "HD95 (mm)", "added path length (mm)", "slices without edit",
    ]  # fmt: skip
    if experts:
        header += ["experts' Dice", "experts' surface Dice", "experts' HD95 (mm)", "outside"]
    rows: list[list[str]] = []
    classes: list[str] = []
    for name in evaluation.statistics:
        tolerance = evaluation.tolerances[name]
        row = [
            name,
            fmt(tolerance.mm),
            tolerance.source,
            str(evaluation.statistics[name]["dice"]["n"]),
            median(name, "dice", 3),
            median(name, "surface_dice", 3),
            median(name, "hausdorff95_mm"),
            median(name, "added_path_length_mm", 0),
            median(name, "fraction_slices_without_edit", 2),
        ]
        comparison = experts.get(name)
        if experts:
            theirs = {} if comparison is None else comparison.experts
            digits = {"dice": 3, "surface_dice": 3, "hausdorff95_mm": 2}
            for metric, d in digits.items():
                value = theirs.get(metric)
                row.append("" if value is None else fmt(float(value), d))
            row.append("" if comparison is None else ", ".join(comparison.worse))
        rows.append(row)
        classes.append("outside" if comparison is not None and comparison.outside else "")
    n_failed = len(evaluation.failures)
    note = (
        f"{len(evaluation.cases)} cases compared with their reference RT-STRUCTs"
        + (f", {n_failed} could not be compared" if n_failed else "")
        + ". Medians over the cases; surface Dice and added path length at each structure's "
        "tolerance. Per-case values: "
    )
    link = _link(out_root, evaluation.per_case_csv)
    parts = [
        "<h2>Agreement with the references</h2>",
        f'<p class="note">{html.escape(note)}{link}.</p>',
        html_table(header, rows, classes),
    ]
    if experts:
        parts.append(
            '<p class="note">Highlighted: structures where the model is worse than the two '
            "experts' agreement on a metric (lower Dice or surface Dice, larger HD95).</p>"
        )
    if evaluation.failures:
        parts.append("<h3>Not compared</h3>")
        parts.append(
            html_table(["case", "reason"], [[f.case, f.reason] for f in evaluation.failures])
        )
    return "\n".join(parts)


def _link(out_root: Path, path: Path, text: str | None = None) -> str:
    """A link to ``path`` relative to ``out_root`` (the folder can be moved whole), showing
    ``text`` or, without it, the relative path."""
    relative = Path(os.path.relpath(Path(path).resolve(), Path(out_root).resolve())).as_posix()
    href = urllib.parse.quote(relative)
    return f'<a href="{html.escape(href)}">{html.escape(relative if text is None else text)}</a>'
