"""Evaluate a folder of predicted label maps against a folder of references.

Each case is compared label by label with :func:`medseg.metrics.compute_metrics` (distances in
mm, volumes in mL; empty masks as tabled in :mod:`medseg.metrics`). The per-case table and a
summary (mean, median, quartiles and IQR per label and metric) are written as CSV and JSON.
This is what ``medseg evaluate`` runs.

A case is a label-map file or, on either side, a DICOM case folder: an RT-STRUCT and the
image series it was drawn on, which is rasterised into a label map on that image's grid
(:func:`_case_files` finds the cases, :func:`_load_case` loads one).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import (
    ConfigError,
    GeometryError,
    InputError,
    MedsegError,
    UnreadableScanError,
)
from medseg.io import dicom, nifti, rtstruct
from medseg.io.files import atomic_path, claim_output_dir
from medseg.metrics import METRIC_NAMES, SegmentationMetrics, compute_metrics, editing_effort
from medseg.structures import Structure
from medseg.tolerances import Tolerance, resolve_tolerances
from medseg.volume import Volume, VolumeKind

__all__ = [
    "AGREEMENT_METRICS",
    "COLUMN_NAMES",
    "EDITING_NAMES",
    "CaseFailure",
    "EvaluationSummary",
    "ExpertComparison",
    "evaluate_folder",
    "read_expert_agreement",
]

#: Suffixes :func:`evaluate_folder` reads (longest first so ``.nii.gz`` wins over ``.gz``).
_CASE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: At most this many ROI names are listed in a warning.
_MAX_LISTED_ROIS = 20

_PER_CASE_CSV = "metrics_per_case.csv"
_SUMMARY_CSV = "metrics_summary.csv"
_SUMMARY_JSON = "metrics_summary.json"
_PER_SLICE_CSV = "editing_per_slice.csv"
_AGREEMENT_CSV = "expert_agreement.csv"

#: Editing-effort columns (:func:`medseg.metrics.editing_effort`) after the metric columns.
EDITING_NAMES: tuple[str, ...] = ("added_path_length_mm", "fraction_slices_without_edit")

#: Every per-case column that is summarised.
COLUMN_NAMES: tuple[str, ...] = (*METRIC_NAMES, *EDITING_NAMES)

#: The metrics compared with the experts' agreement, and whether larger is better.
AGREEMENT_METRICS: Mapping[str, bool] = {
    "dice": True,
    "surface_dice": True,
    "hausdorff95_mm": False,
}


@dataclass(frozen=True, slots=True)
class CaseFailure:
    """A case that could not be evaluated.

    Attributes:
        case: the case name (file name without its image suffix, or the case folder's name).
        reason: what went wrong, naming the file(s).
    """

    case: str
    reason: str


@dataclass(frozen=True, slots=True)
class EvaluationSummary:
    """What :func:`evaluate_folder` computed and wrote.

    Attributes:
        cases: names of the cases evaluated successfully, sorted.
        failures: cases missing on one side or unreadable / on different grids.
        labels: label value -> name, as evaluated.
        tolerance_mm: the fallback surface Dice tolerance (``--tolerance-mm``), mm.
        tolerances: label name -> the tolerance used for it and its source
            (:func:`medseg.tolerances.resolve_tolerances`); also the editing-effort tolerance.
        statistics: ``{label name: {column: {"n", "n_not_finite", "mean", "median", "q1",
            "q3", "iqr"}}}`` over :data:`COLUMN_NAMES`; statistics are over the finite values
            (``None`` if there are none), ``n_not_finite`` counts cases with ``inf`` (an empty
            mask on one side).
        per_case_csv: the per-case table (one row per case and label).
        summary_csv: the summary table (one row per label and metric).
        summary_json: the same summary with failures, as JSON.
        per_slice_csv: the added path length of every slice holding a structure.
        expert_agreement: with ``reference_agreement``, per label name the model-vs-reference
            medians beside the experts' (:class:`ExpertComparison`); empty otherwise.
        agreement_csv: the table of ``expert_agreement``, or None.
        per_case: ``{case: {label name: {column: value}}}`` over :data:`COLUMN_NAMES`, the
            per-case table's values (``inf`` where a mask is empty on one side).
    """

    cases: tuple[str, ...]
    failures: tuple[CaseFailure, ...]
    labels: Mapping[int, str]
    tolerance_mm: float
    tolerances: Mapping[str, Tolerance]
    statistics: Mapping[str, Mapping[str, Mapping[str, float | int | None]]]
    per_case_csv: Path
    summary_csv: Path
    summary_json: Path
    per_slice_csv: Path
    expert_agreement: Mapping[str, ExpertComparison] = dataclasses.field(default_factory=dict)
    agreement_csv: Path | None = None
    per_case: Mapping[str, Mapping[str, Mapping[str, float]]] = dataclasses.field(
        default_factory=dict
    )

    @property
    def ok(self) -> bool:
        """True if every case was evaluated."""
        return not self.failures


@dataclass(frozen=True, slots=True)
class ExpertComparison:
    """One structure's model-vs-reference medians beside two experts' agreement.

    Attributes:
        model: metric -> median over the evaluated cases (:data:`AGREEMENT_METRICS`).
        experts: metric -> the experts' median, from the ``reference_agreement`` summary.
        worse: the metrics where the model is outside the experts' agreement (a lower Dice
            or surface Dice, a larger HD95).
    """

    model: Mapping[str, float | None]
    experts: Mapping[str, float | None]
    worse: tuple[str, ...]

    @property
    def outside(self) -> bool:
        """True if the model is worse than the experts on any compared metric."""
        return bool(self.worse)


def read_expert_agreement(
    path: Path,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Per structure ``{metric: median}`` (:data:`AGREEMENT_METRICS`) and tolerance (mm) from
    an evaluation summary JSON (``medseg evaluate EXPERT_A EXPERT_B``'s
    ``metrics_summary.json``, or its folder), as ``reference_agreement`` uses it.

    Raises:
        InputError: the file cannot be read or is not a medseg evaluation summary.
    """
    path = Path(path)
    if path.is_dir():
        path = path / _SUMMARY_JSON
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable evaluation summary ({exc})") from exc
    statistics = document.get("statistics") if isinstance(document, dict) else None
    if not isinstance(statistics, dict):
        raise InputError(
            f"{path}: not a medseg evaluation summary (no 'statistics'); make it with "
            "medseg evaluate EXPERT_A EXPERT_B --out DIR"
        )
    medians: dict[str, dict[str, Any]] = {}
    for name, per_metric in statistics.items():
        if isinstance(per_metric, dict):
            medians[name] = {m: (per_metric.get(m) or {}).get("median") for m in AGREEMENT_METRICS}
    tolerances = {
        name: float(t["mm"])
        for name, t in (document.get("tolerances") or {}).items()
        if isinstance(t, dict) and isinstance(t.get("mm"), (int, float))
    }
    return medians, tolerances


def _compare_with_experts(
    statistics: Mapping[str, Mapping[str, Mapping[str, float | int | None]]],
    tolerances: Mapping[str, Tolerance],
    agreement: Path,
    read: tuple[dict[str, dict[str, Any]], dict[str, float]],
) -> dict[str, ExpertComparison]:
    """The model's medians beside the experts' (``read``: :func:`read_expert_agreement` of the
    file ``agreement``, read before any case so a bad file fails at once)."""
    experts, expert_tolerances = read
    compared: dict[str, ExpertComparison] = {}
    for name, per_metric in statistics.items():
        if name not in experts:
            continue
        theirs = expert_tolerances.get(name)
        if theirs is not None and not math.isclose(theirs, tolerances[name].mm, abs_tol=1e-9):
            raise ConfigError(
                f"{agreement}: the experts' surface Dice of {name!r} used a tolerance of "
                f"{theirs:g} mm, this evaluation {tolerances[name].mm:g} mm; use the same "
                "--tolerances for both"
            )
        model = {m: per_metric[m]["median"] for m in AGREEMENT_METRICS}
        worse = []
        for metric, larger_is_better in AGREEMENT_METRICS.items():
            ours, expert = model[metric], experts[name][metric]
            if isinstance(expert, str):  # "inf" in JSON
                expert = float(expert)
            if ours is None or expert is None:
                continue
            if (float(ours) < float(expert)) if larger_is_better else (float(ours) > float(expert)):
                worse.append(metric)
        compared[name] = ExpertComparison(
            model={m: None if v is None else float(v) for m, v in model.items()},
            experts={m: None if v is None else float(v) for m, v in experts[name].items()},
            worse=tuple(worse),
        )
    return compared


def _label_map_files(folder: Path) -> dict[str, Path]:
    """Case name -> file for every NIfTI/NRRD/MetaImage file directly in ``folder``."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        lower = path.name.lower()
        suffix = next((s for s in _CASE_SUFFIXES if lower.endswith(s)), None)
        if suffix is None or not path.is_file():
            continue
        case = path.name[: -len(suffix)]
        if case in found:
            raise InputError(
                f"{folder}: case {case!r} has two files: {found[case].name}, {path.name}"
            )
        found[case] = path
    return found


def _case_files(folder: Path) -> dict[str, Path]:
    """Case name -> label-map file, or DICOM case folder (every sub-folder not starting with
    ``.``), directly in ``folder``."""
    found = _label_map_files(folder)
    for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if path.name in found:
            raise InputError(
                f"{folder}: case {path.name!r} is both a file ({found[path.name].name}) and a "
                "folder"
            )
        found[path.name] = path
    return found


class _DicomFolders:
    """The DICOM case folders of one case, each scanned, and its image loaded, at most once."""

    def __init__(self) -> None:
        self._inventories: dict[Path, dicom.Inventory] = {}
        self._images: dict[Path, Volume] = {}

    def inventory(self, folder: Path) -> dicom.Inventory:
        if folder not in self._inventories:
            inventory = dicom.scan_folder(folder)
            if inventory.problems:
                shown = "; ".join(p.message for p in inventory.problems[:5])
                more = len(inventory.problems) - 5
                raise UnreadableScanError(
                    f"{folder}: {len(inventory.problems)} file(s) cannot be read: {shown}"
                    + (f"; and {more} more" if more > 0 else "")
                )
            self._inventories[folder] = inventory
        return self._inventories[folder]

    def has_image(self, folder: Path) -> bool:
        return any(s.kind is dicom.SeriesKind.VOLUME for s in self.inventory(folder).series)

    def image(self, folder: Path) -> Volume:
        if folder not in self._images:
            self._images[folder] = dicom.load_series(folder)
        return self._images[folder]

    def structure_set(self, folder: Path) -> Path:
        """The one RT-STRUCT file under ``folder``."""
        inventory = self.inventory(folder)
        files = sorted(f for s in inventory.series if s.modality == "RTSTRUCT" for f in s.files)
        if len(files) != 1:
            found = (
                f"{len(files)} RT-STRUCTs ({', '.join(str(f.relative_to(folder)) for f in files)})"
                if files
                else f"no RT-STRUCT among its {inventory.n_files} file(s)"
            )
            raise InputError(
                f"{folder}: a case folder holds one RT-STRUCT (with the image series it was "
                f"drawn on, or with that series in the other side's case folder); found {found}"
            )
        return files[0]


def _rtstruct_labels(
    folder: Path, other: Path, labels: Mapping[int, str], folders: _DicomFolders
) -> Volume:
    """The label map of a DICOM case folder: its RT-STRUCT on its own image series or, when
    it holds none (e.g. a ``medseg predict`` output folder), on the other side's."""
    structure_set = folders.structure_set(folder)
    if folders.has_image(folder):
        image = folders.image(folder)
    elif other.is_dir() and folders.has_image(other):
        image = folders.image(other)  # read() refuses it unless it is the referenced series
    else:
        raise InputError(
            f"{structure_set}: no CT/MR image series for this RT-STRUCT: its folder holds none, "
            f"and the other side's case {other} is "
            + ("a folder without one" if other.is_dir() else "a label map, not a DICOM folder")
            + "; put the series it was drawn on in either case folder"
        )
    rois = {value: [name] for value, name in labels.items()}
    return rtstruct.read_label_map(
        [structure_set], image, rois, match="name", missing="empty", where=structure_set
    )


def _load_case(
    pred_path: Path, ref_path: Path, labels: Mapping[int, str] | None
) -> tuple[Volume, Volume]:
    """The prediction and reference label maps of one case, each from a label-map file or a
    DICOM case folder (RT-STRUCT ROIs named like ``labels``' structures get their values; a
    structure without a ROI is empty there)."""
    folders = _DicomFolders()

    def load(path: Path, other: Path) -> Volume:
        if path.is_file():
            return nifti.load(path, VolumeKind.LABELS)
        return _rtstruct_labels(path, other, labels or {}, folders)

    return load(pred_path, ref_path), load(ref_path, pred_path)


def _rtstruct_structures(
    labels: Mapping[int, str] | None, pred_files: Mapping[str, Path], ref_files: Mapping[str, Path]
) -> tuple[Mapping[int, str] | None, list[CaseFailure]]:
    """The structures to evaluate, from the ROI names of every RT-STRUCT case folder, read
    before any case is loaded; and the cases whose RT-STRUCT cannot be read.

    Without ``labels`` the structures are the ROI names numbered 1, 2, ... in order of first
    appearance (cases sorted, reference before prediction, ROIs in file order; names equal up
    to case, spaces, ``-`` and ``_`` are one structure). With ``labels``, a structure that no
    ROI is named like warns: a misspelt ``rois.yaml`` would otherwise make it "empty on both
    sides" in every case, which scores as a perfect match.
    """
    cases = sorted(set(pred_files) & set(ref_files))
    if not any(p.is_dir() for c in cases for p in (pred_files[c], ref_files[c])):
        return labels, []
    names: dict[str, str] = {}  # roi_name_key -> the name as first seen
    failures: list[CaseFailure] = []
    folders = _DicomFolders()
    for case in cases:
        try:
            found = [
                name
                for path in (ref_files[case], pred_files[case])
                if path.is_dir()
                for name in rtstruct.read_roi_names(folders.structure_set(path))
            ]
        except MedsegError as exc:  # this case fails; the others are still named and evaluated
            failures.append(CaseFailure(case, str(exc)))
            continue
        for name in found:
            names.setdefault(rtstruct.roi_name_key(name), name)
    if labels is None:
        return dict(enumerate(names.values(), start=1)), failures
    unmatched = [n for n in labels.values() if rtstruct.roi_name_key(n) not in names]
    if unmatched:
        shown = sorted(names.values())[:_MAX_LISTED_ROIS]
        more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
        warnings.warn(
            f"structure(s) {unmatched} are named like no ROI of any RT-STRUCT case (ROIs: "
            f"{shown}{more}; names are compared ignoring case, spaces, '-' and '_'): they are "
            "empty on every RT-STRUCT side",
            stacklevel=3,
        )
    return labels, failures


def _grid_files(spacing_from: Path) -> dict[str, Path] | Path:
    """The per-case images of a ``spacing_from`` folder, or the one ``spacing_from`` file."""
    if spacing_from.is_dir():
        return _label_map_files(spacing_from)
    if not spacing_from.is_file():
        raise InputError(f"{spacing_from}: spacing_from is neither an image file nor a folder")
    return spacing_from


def _on_grid_of(
    prediction: Volume, case: str, grid_files: dict[str, Path] | Path, spacing_from: Path
) -> Volume:
    """``prediction`` with the grid of its case's ``spacing_from`` image (shapes must match)."""
    path = grid_files if isinstance(grid_files, Path) else grid_files.get(case)
    if path is None:
        raise InputError(f"{spacing_from}: no image for case {case!r} to take its grid from")
    grid = nifti.load(path).geometry
    if grid.shape != prediction.geometry.shape:
        raise GeometryError(
            f"{prediction.source.describe()}: shape {prediction.geometry.shape} differs from "
            f"the shape {grid.shape} of {path}; spacing_from adopts a grid voxel for voxel "
            "and never resamples, so the shapes must be equal"
        )
    return dataclasses.replace(prediction, geometry=grid)


def _present_labels(*volumes: Volume) -> dict[int, str]:
    values: set[int] = set()
    for volume in volumes:
        values.update(int(v) for v in np.unique(volume.array) if v != 0)
    return {v: f"label_{v}" for v in sorted(values)}


def _statistics(values: Sequence[float]) -> dict[str, float | int | None]:
    array = np.asarray(values, dtype=float)
    finite = array[np.isfinite(array)]
    stats: dict[str, float | int | None] = {
        "n": int(array.size),
        "n_not_finite": int(array.size - finite.size),
    }
    if finite.size == 0:
        return stats | dict.fromkeys(("mean", "median", "q1", "q3", "iqr"))
    q1, median, q3 = (float(q) for q in np.percentile(finite, [25.0, 50.0, 75.0]))
    return stats | {
        "mean": float(finite.mean()),
        "median": median,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
    }


def _json_number(value: Any) -> Any:
    """JSON has no ``inf``: write it as the string ``"inf"`` (and NaN as ``None``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_number(v) for v in value]
    return value


def evaluate_folder(
    pred_dir: Path,
    ref_dir: Path,
    out_dir: Path,
    *,
    labels: Mapping[int, str] | Sequence[Structure] | None,
    tolerance_mm: float,
    spacing_from: Path | None = None,
    tolerances: Mapping[str, float] | None = None,
    tolerances_source: str = "",
    builtin_tolerances: bool = True,
    reference_agreement: Path | None = None,
) -> EvaluationSummary:
    """Compare every predicted label map in a folder with the reference of the same name.

    A case is a file ``NAME.nii.gz`` / ``.nii`` / ``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd``,
    or a sub-folder ``NAME/`` holding DICOM: one RT-STRUCT and the CT/MR series it was drawn
    on. ``NAME`` must match between the folders (the kinds and formats may differ). An
    RT-STRUCT is rasterised onto its series' grid (:func:`medseg.io.rtstruct.read`) and each
    structure's value is given to the ROI of the same name, compared ignoring case, spaces,
    ``-`` and ``_`` (``GTV-1`` is ``gtv 1``); a structure without a ROI is empty on that side
    (Dice 0 against a non-empty one, distances ``inf``). A folder holding only the RT-STRUCT
    (``medseg predict``'s ``NAME/rtstruct.dcm``) is put on the series in the other side's
    case folder, which must be the series the RT-STRUCT references; a label-map side must
    lie on the same grid. A case that is missing on one side, unreadable (the message names
    the file), drawn on another series, or on another grid is recorded as a failure and the
    rest go on, so one bad scan never stops an evaluation. Input folders are only read.

    Args:
        pred_dir: folder of predicted label maps and/or DICOM case folders.
        ref_dir: folder of reference label maps and/or DICOM case folders.
        out_dir: created if missing; receives ``metrics_per_case.csv`` (one row per case and
            label), ``metrics_summary.csv`` (one row per label and metric),
            ``metrics_summary.json`` and ``editing_per_slice.csv`` (the added path length of
            every slice holding a structure), each written atomically.
        labels: the structures (a model's ``model.labels`` or a ``rois.yaml``'s), or label
            value -> name; the names select the ROIs of RT-STRUCT cases. ``None``: without
            RT-STRUCT cases, every non-zero value found in any case, named ``label_<value>``;
            with them, the ROI names of all RT-STRUCTs, numbered 1, 2, ... in order of first
            appearance (cases sorted, reference before prediction, ROIs in file order), which
            label-map sides are then compared with by value (give ``labels`` when their
            values mean something else). A structure of ``labels`` that no ROI of any
            RT-STRUCT is named like warns (it is empty on every RT-STRUCT side).
        tolerance_mm: surface Dice tolerance in mm of a structure no table has.
        tolerances: the user's structure name -> tolerance (mm) table
            (:func:`medseg.tolerances.load_tolerances`); ``tolerances_source`` names it in the
            outputs.
        builtin_tolerances: use medseg's H&N table
            (:data:`medseg.tolerances.HN_OAR_TOLERANCES_MM`) for H&N organs the user's table
            lacks. Each structure's tolerance is also the one its editing effort uses (a
            contour within it needs no edit); the per-case CSV has it on every row.
        reference_agreement: an evaluation summary of two experts' contours against each other
            (``metrics_summary.json`` of ``medseg evaluate EXPERT_A EXPERT_B``, or its folder):
            per structure it evaluated, its medians are put beside this evaluation's and
            structures where the model is worse are flagged (``expert_agreement.csv``). The
            tolerances must be the same.
        spacing_from: where the *predictions'* voxel grid comes from, for predictions saved
            without their true geometry (e.g. NIfTI with a unit-spacing affine): an image
            file, used for every case, or a folder holding one image per case under the
            case's name (the reference folder itself, or the CT images). The whole grid is
            taken (spacing, origin and direction) and nothing is resampled or reordered:
            prediction voxel ``(k, j, i)`` is taken to be voxel ``(k, j, i)`` of that grid, so
            the shapes must be equal, else the case fails. References keep their own geometry
            and must then match the adopted grid, as always. DICOM case folders keep their
            series' grid.

    Returns:
        The summary; ``summary.ok`` is False if any case failed.

    Raises:
        InputError: if a folder does not exist or holds two files for one case, or
            ``spacing_from`` does not exist.
        ConfigError: on a negative tolerance or two labels sharing a name.
        OutputError: ``out_dir`` is, contains or lies inside an input folder, holds files
            medseg did not write, or cannot be written (checked before any case is read).
    """
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ConfigError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}")
    if labels is not None and not isinstance(labels, Mapping):
        labels = {s.label: s.name for s in labels}
    if labels is not None and len(set(labels.values())) != len(labels):
        raise ConfigError(f"label names must be unique, got {dict(labels)}")
    experts = None if reference_agreement is None else read_expert_agreement(reference_agreement)
    out = claim_output_dir(
        Path(out_dir), inputs=(pred_dir, ref_dir, spacing_from, reference_agreement)
    )
    pred_files, ref_files = _case_files(Path(pred_dir)), _case_files(Path(ref_dir))
    failures = [
        CaseFailure(case, f"no prediction in {pred_dir}")
        for case in sorted(set(ref_files) - set(pred_files))
    ] + [
        CaseFailure(case, f"no reference in {ref_dir}")
        for case in sorted(set(pred_files) - set(ref_files))
    ]
    labels, unnamed = _rtstruct_structures(labels, pred_files, ref_files)
    failures += unnamed
    grid_source = None if spacing_from is None else Path(spacing_from)
    grid_files = None if grid_source is None else _grid_files(grid_source)
    results: dict[str, dict[int, dict[str, float]]] = {}
    per_slice: dict[str, dict[int, Mapping[int, float]]] = {}
    found_labels: dict[int, str] = {}
    resolved: dict[str, Tolerance] = {}

    def tolerance_of(name: str) -> Tolerance:
        if name not in resolved:
            resolved.update(
                resolve_tolerances(
                    [name],
                    tolerance_mm,
                    tolerances,
                    table_source=tolerances_source or "tolerance table",
                    builtin=builtin_tolerances,
                )
            )
        return resolved[name]

    for case in sorted(set(pred_files) & set(ref_files) - {f.case for f in unnamed}):
        try:
            prediction, reference = _load_case(pred_files[case], ref_files[case], labels)
            if grid_source is not None and grid_files is not None and pred_files[case].is_file():
                prediction = _on_grid_of(prediction, case, grid_files, grid_source)
            case_labels = labels if labels is not None else _present_labels(prediction, reference)
            found_labels.update(case_labels)
            rows: dict[int, dict[str, float]] = {}
            slices: dict[int, Mapping[int, float]] = {}
            for value, name in case_labels.items():
                tau = tolerance_of(name).mm
                metrics = compute_metrics(prediction, reference, label=value, tolerance_mm=tau)
                effort = editing_effort(prediction, reference, label=value, tolerance_mm=tau)
                rows[value] = metrics.to_dict() | {
                    "added_path_length_mm": effort.added_path_length_mm,
                    "fraction_slices_without_edit": effort.fraction_without_edit,
                }
                slices[value] = effort.per_slice_mm
            results[case], per_slice[case] = rows, slices
        except MedsegError as exc:  # one bad case is recorded, the others are still evaluated
            failures.append(CaseFailure(case, str(exc)))
    names = dict(labels) if labels is not None else dict(sorted(found_labels.items()))
    for name in names.values():
        tolerance_of(name)
    if labels is None:
        # a label absent from a whole case is "both empty" there, which compute_metrics defines
        for case, per_label in results.items():
            for value, name in names.items():
                if value not in per_label:
                    per_label[value] = SegmentationMetrics.both_empty(
                        resolved[name].mm
                    ).to_dict() | {"added_path_length_mm": 0.0, "fraction_slices_without_edit": 1.0}
    statistics = {
        name: {
            column: _statistics([results[c][value][column] for c in sorted(results)])
            for column in COLUMN_NAMES
        }
        for value, name in names.items()
    }
    used = {name: resolved[name] for name in names.values()}
    compared = (
        {}
        if reference_agreement is None or experts is None
        else _compare_with_experts(statistics, used, Path(reference_agreement), experts)
    )
    per_case_csv, summary_csv, summary_json, per_slice_csv = (
        out / _PER_CASE_CSV,
        out / _SUMMARY_CSV,
        out / _SUMMARY_JSON,
        out / _PER_SLICE_CSV,
    )
    with (
        atomic_path(per_case_csv) as tmp,
        tmp.open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh,
    ):
        writer = csv.writer(fh)
        writer.writerow(
            ["case", "label", "name", *COLUMN_NAMES, "tolerance_mm", "tolerance_source"]
        )
        for case in sorted(results):
            for value, name in names.items():
                row = results[case][value]
                writer.writerow(
                    [
                        case,
                        value,
                        name,
                        *(repr(row[k]) for k in COLUMN_NAMES),
                        used[name].mm,
                        used[name].source,
                    ]
                )
    with (
        atomic_path(per_slice_csv) as tmp,
        tmp.open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh,
    ):
        writer = csv.writer(fh)
        writer.writerow(["case", "label", "name", "slice", "added_path_length_mm"])
        for case in sorted(per_slice):
            for value, name in names.items():
                for index, mm in sorted(per_slice[case].get(value, {}).items()):
                    writer.writerow([case, value, name, index, repr(mm)])
    stat_keys = ("n", "n_not_finite", "mean", "median", "q1", "q3", "iqr")
    with (
        atomic_path(summary_csv) as tmp,
        tmp.open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh,
    ):
        writer = csv.writer(fh)
        writer.writerow(["name", "metric", *stat_keys])
        for name, per_metric in statistics.items():
            for metric, stats in per_metric.items():
                writer.writerow(
                    [name, metric, *("" if stats[k] is None else stats[k] for k in stat_keys)]
                )
    document = {
        "tolerance_mm": tolerance_mm,
        "tolerances": {n: {"mm": t.mm, "source": t.source} for n, t in used.items()},
        "labels": {str(v): n for v, n in names.items()},
        "cases": sorted(results),
        "failures": [{"case": f.case, "reason": f.reason} for f in failures],
        "spacing_from": None if spacing_from is None else str(spacing_from),
        "statistics": statistics,
        "note": "statistics are over finite values; n_not_finite counts cases with an empty mask "
        "on one side (distances inf)",
    }
    agreement_csv = None
    if reference_agreement is not None:
        document["reference_agreement"] = {
            "file": str(reference_agreement),
            "structures": {
                n: {"model": c.model, "experts": c.experts, "worse": list(c.worse)}
                for n, c in compared.items()
            },
        }
        agreement_csv = out / _AGREEMENT_CSV
        with (
            atomic_path(agreement_csv) as tmp,
            tmp.open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh,
        ):
            writer = csv.writer(fh)
            writer.writerow(["name", "metric", "model_median", "experts_median", "outside"])
            for name, c in compared.items():
                for metric in AGREEMENT_METRICS:
                    writer.writerow(
                        [name, metric, c.model[metric], c.experts[metric], metric in c.worse]
                    )
    with atomic_path(summary_json) as tmp:
        tmp.write_text(json.dumps(_json_number(document), indent=2), encoding="utf-8")
    return EvaluationSummary(
        cases=tuple(sorted(results)),
        failures=tuple(failures),
        labels=names,
        tolerance_mm=float(tolerance_mm),
        tolerances=used,
        statistics=statistics,
        per_case_csv=per_case_csv,
        summary_csv=summary_csv,
        summary_json=summary_json,
        per_slice_csv=per_slice_csv,
        expert_agreement=compared,
        agreement_csv=agreement_csv,
        per_case={
            case: {
                name: {k: results[case][v][k] for k in COLUMN_NAMES} for v, name in names.items()
            }
            for case in sorted(results)
        },
    )
