"""``evaluate_folder`` / ``medseg evaluate`` with DICOM RT-STRUCT case folders on either side.

Real data: ``lung-gtv-ct`` (three CT series, each with a clinical RT-STRUCT holding one ROI,
``GTV-1``). Inputs are copied into ``tmp_path`` and hashed before and after every evaluation:
evaluation only reads them.
"""

from __future__ import annotations

import csv
import hashlib
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.evaluation import EvaluationSummary, evaluate_folder
from medseg.io import nifti
from medseg.io.convert import convert_dicom
from medseg.io.rois import export_rtstruct
from medseg.volume import VolumeKind
from tests.conftest import require_data

PATIENTS = ("pat_1", "pat_2", "pat_3")
#: CATALOG.md: the GTVs as plastimatch rasterises them, mL.
GTV_ML = {"pat_1": 359.0, "pat_2": 6.5, "pat_3": 11.6}
#: Metrics that do not depend on which side is the prediction.
SYMMETRIC = ("dice", "iou", "hausdorff_mm", "hausdorff95_mm", "assd_mm", "surface_dice")


def _source(patient: str) -> Path:
    return require_data(f"lung-gtv-ct/{patient}")


def _rtstruct_of(patient: str) -> Path:
    (path,) = sorted(_source(patient).glob("DCM_RS_*.dcm"))
    return path


def _dicom_cases(root: Path, patients: Sequence[str] = PATIENTS) -> Path:
    """``root/<patient>/``: a copy of the CT series and its RT-STRUCT."""
    for patient in patients:
        shutil.copytree(_source(patient), root / patient)
    return root


def _rtstruct_only_cases(root: Path, patients: Sequence[str] = PATIENTS) -> Path:
    """``root/<patient>/rtstruct.dcm`` alone, as ``medseg predict`` writes its output."""
    for patient in patients:
        (root / patient).mkdir(parents=True)
        shutil.copy(_rtstruct_of(patient), root / patient / "rtstruct.dcm")
    return root


def _label_map_cases(root: Path, work: Path, patients: Sequence[str] = PATIENTS) -> Path:
    """``root/<patient>.nii.gz``: the GTV mask ``convert_dicom`` writes (value 1)."""
    root.mkdir(parents=True)
    for patient in patients:
        done = convert_dicom(_source(patient), work / patient, rtstruct=_rtstruct_of(patient))
        shutil.copy(done.masks["GTV-1"], root / f"{patient}.nii.gz")
    return root


def _hashes(*roots: Path) -> dict[Path, str]:
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _evaluate(
    pred: Path, ref: Path, out: Path, labels: Mapping[int, str] | None = None
) -> EvaluationSummary:
    """``evaluate_folder`` (tolerance 2 mm), checking that it left its inputs as they were."""
    before = _hashes(pred, ref)
    summary = evaluate_folder(pred, ref, out, labels=labels, tolerance_mm=2.0)
    assert _hashes(pred, ref) == before
    return summary


def _rows(summary: EvaluationSummary) -> dict[tuple[str, str], dict[str, float]]:
    columns = (*SYMMETRIC, "volume_reference_ml", "volume_prediction_ml")
    with summary.per_case_csv.open(newline="") as fh:
        return {
            (row["case"], row["name"]): {k: float(row[k]) for k in columns}
            for row in csv.DictReader(fh)
        }


def _reasons(summary: EvaluationSummary) -> dict[str, str]:
    return {f.case: f.reason for f in summary.failures}


def _require_perfect(summary: EvaluationSummary, name: str, cases: Iterable[str]) -> None:
    rows = _rows(summary)
    for case in cases:
        row = rows[(case, name)]
        assert (row["dice"], row["hausdorff_mm"], row["surface_dice"]) == (1.0, 0.0, 1.0), case
        assert row["volume_reference_ml"] == pytest.approx(GTV_ML[case], rel=0.01)


def test_an_rtstruct_against_itself_has_dice_one(tmp_path: Path) -> None:
    pred = _dicom_cases(tmp_path / "pred")
    ref = _dicom_cases(tmp_path / "ref")

    summary = _evaluate(pred, ref, tmp_path / "out")

    # without labels the structures are the RT-STRUCTs' ROI names, numbered in ROI order
    assert summary.ok and summary.cases == PATIENTS
    assert summary.labels == {1: "GTV-1"}
    _require_perfect(summary, "GTV-1", PATIENTS)


def test_rtstruct_and_converted_label_maps_agree_from_either_side(tmp_path: Path) -> None:
    dicom_cases = _dicom_cases(tmp_path / "dicom")
    label_maps = _label_map_cases(tmp_path / "labels", tmp_path / "convert")
    labels = {1: "gtv 1"}  # the ROI is "GTV-1": case, spaces, '-' and '_' are ignored

    forward = _evaluate(label_maps, dicom_cases, tmp_path / "out1", labels=labels)
    backward = _evaluate(dicom_cases, label_maps, tmp_path / "out2", labels=labels)

    assert forward.ok and backward.ok and forward.cases == backward.cases == PATIENTS
    _require_perfect(forward, "gtv 1", PATIENTS)
    a, b = _rows(forward), _rows(backward)
    assert a.keys() == b.keys()
    for key in a:
        assert {m: a[key][m] for m in SYMMETRIC} == {m: b[key][m] for m in SYMMETRIC}
        # volumes use each side's own voxel size, and NIfTI stores the spacing as float32
        # (within the geometry tolerance, so the grids are equal): 1e-8 relative apart
        rel = 1e-6
        assert a[key]["volume_prediction_ml"] == pytest.approx(
            b[key]["volume_reference_ml"], rel=rel
        )
        assert a[key]["volume_reference_ml"] == pytest.approx(
            b[key]["volume_prediction_ml"], rel=rel
        )


def test_a_folder_with_only_the_rtstruct_takes_the_other_sides_series(tmp_path: Path) -> None:
    ref = _dicom_cases(tmp_path / "ref")
    pred = _rtstruct_only_cases(tmp_path / "pred")

    summary = _evaluate(pred, ref, tmp_path / "out", labels={1: "GTV-1"})
    reverse = _evaluate(ref, pred, tmp_path / "out2", labels={1: "GTV-1"})

    assert summary.ok and reverse.ok and summary.cases == reverse.cases == PATIENTS
    _require_perfect(summary, "GTV-1", PATIENTS)
    _require_perfect(reverse, "GTV-1", PATIENTS)


def test_a_structure_missing_on_one_side_is_empty_there(tmp_path: Path) -> None:
    """medseg's own export of the GTV plus a box named "Spinal Cord" against the clinical
    RT-STRUCT, which has no such ROI; and a label map with a value the reference lacks."""
    patient = "pat_2"
    ref = _dicom_cases(tmp_path / "ref", [patient])
    label_maps = _label_map_cases(tmp_path / "labels", tmp_path / "convert", [patient])
    gtv = nifti.load(label_maps / f"{patient}.nii.gz", VolumeKind.LABELS)
    array = np.asarray(gtv.array).copy()
    corner = (slice(0, 4), slice(0, 10), slice(0, 10))
    assert not array[corner].any()
    array[corner] = 2
    two_labels = tmp_path / "two-labels.nii.gz"
    nifti.save(gtv.with_array(array), two_labels)
    rois = tmp_path / "rois.yaml"
    rois.write_text("rois: {1: GTV-1, 2: Spinal Cord}\n")
    pred = tmp_path / "pred"
    (pred / patient).mkdir(parents=True)
    export_rtstruct(_source(patient), two_labels, rois, pred / patient / "rtstruct.dcm")
    (tmp_path / "pred-labels").mkdir()
    shutil.copy(two_labels, tmp_path / "pred-labels" / f"{patient}.nii.gz")

    exported = _evaluate(pred, ref, tmp_path / "out1")
    with pytest.warns(UserWarning, match=r"\['Spinal Cord'\] are named like no ROI"):
        from_labels = _evaluate(
            tmp_path / "pred-labels", ref, tmp_path / "out2", labels={1: "GTV-1", 2: "Spinal Cord"}
        )

    # numbered in order of first appearance: the reference's GTV-1, then the prediction's ROI
    assert exported.labels == {1: "GTV-1", 2: "Spinal Cord"}
    for summary in (exported, from_labels):
        assert summary.ok and summary.cases == (patient,)
        rows = _rows(summary)
        cord = rows[(patient, "Spinal Cord")]
        assert cord["dice"] == 0.0 and math.isinf(cord["hausdorff_mm"])
        assert cord["volume_reference_ml"] == 0.0 and cord["volume_prediction_ml"] > 0
        assert rows[(patient, "GTV-1")]["dice"] > 0.95  # exported contours, read back
        assert summary.statistics["Spinal Cord"]["hausdorff_mm"]["n_not_finite"] == 1
    assert _rows(from_labels)[(patient, "GTV-1")]["dice"] == 1.0


def test_a_structure_no_roi_is_named_like_warns(tmp_path: Path) -> None:
    """A misspelt rois.yaml would score "empty on both sides" as a perfect match: it warns."""
    pred = _rtstruct_only_cases(tmp_path / "pred", ["pat_2"])
    ref = _dicom_cases(tmp_path / "ref", ["pat_2"])

    with pytest.warns(UserWarning, match=r"\['GTV'\] are named like no ROI.*'GTV-1'"):
        summary = _evaluate(pred, ref, tmp_path / "out", labels={1: "GTV"})

    assert summary.ok and _rows(summary)[("pat_2", "GTV")]["volume_reference_ml"] == 0.0


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_dicom(path: Path) -> None:
    path.write_bytes(b"not a DICOM file\n" * 64)


def _break(kind: str, pred: Path, ref: Path, tmp_path: Path) -> str:
    """Break pat_2 on the prediction side; return the file the reason must name."""
    case = pred / "pat_2"
    if kind == "other-series":  # pat_1's RT-STRUCT next to pat_2's CT
        (rs,) = case.glob("DCM_RS_*.dcm")
        rs.unlink()
        shutil.copy(_rtstruct_of("pat_1"), case / "rtstruct.dcm")
        return str(case / "rtstruct.dcm")
    if kind == "alone-other-series":  # pat_1's RT-STRUCT alone, against pat_2's CT
        shutil.rmtree(case)
        case.mkdir()
        shutil.copy(_rtstruct_of("pat_1"), case / "rtstruct.dcm")
        return str(case / "rtstruct.dcm")
    if kind == "no-image":  # the RT-STRUCT alone, and the reference a label map
        shutil.rmtree(ref / "pat_2")
        label_maps = _label_map_cases(tmp_path / "labels", tmp_path / "convert", ["pat_2"])
        shutil.copy(label_maps / "pat_2.nii.gz", ref / "pat_2.nii.gz")
        for path in case.glob("DCM_IMG_*"):
            path.unlink()
        (rs,) = case.glob("DCM_RS_*.dcm")
        return str(rs)
    (rs,) = case.glob("DCM_RS_*.dcm")
    {"truncated": _truncate, "not-dicom": _not_dicom}[kind](rs)
    return rs.name


@pytest.mark.parametrize(
    "kind",
    ["truncated", "not-dicom", "other-series", "alone-other-series", "no-image"],
    ids=[
        "truncated-rtstruct",
        "garbage-rtstruct",
        "rtstruct-of-another-series",
        "rtstruct-alone-of-another-series",
        "rtstruct-alone-against-a-label-map",
    ],
)
@pytest.mark.parametrize("labels", [None, {1: "GTV-1"}], ids=["roi-names", "labels"])
def test_a_broken_case_fails_alone_naming_its_file(
    tmp_path: Path, kind: str, labels: dict[int, str] | None
) -> None:
    pred = _dicom_cases(tmp_path / "pred")
    ref = _dicom_cases(tmp_path / "ref")
    named = _break(kind, pred, ref, tmp_path)

    summary = _evaluate(pred, ref, tmp_path / "out", labels=labels)

    assert summary.cases == ("pat_1", "pat_3")
    reasons = _reasons(summary)
    assert list(reasons) == ["pat_2"]
    assert named in reasons["pat_2"] and "\n" not in reasons["pat_2"], reasons["pat_2"]
    _require_perfect(summary, "GTV-1", ("pat_1", "pat_3"))


def test_a_sub_folder_without_an_rtstruct_fails_as_a_case(tmp_path: Path) -> None:
    pred = _dicom_cases(tmp_path / "pred", ["pat_1", "pat_2"])
    ref = _dicom_cases(tmp_path / "ref", ["pat_1", "pat_2"])
    for path in (ref / "pat_2").glob("DCM_RS_*.dcm"):
        path.unlink()
    (ref / ".cache").mkdir()  # hidden folders are not cases

    summary = _evaluate(pred, ref, tmp_path / "out", labels={1: "GTV-1"})

    assert summary.cases == ("pat_1",)
    assert "no RT-STRUCT" in _reasons(summary)["pat_2"]
    assert str(ref / "pat_2") in _reasons(summary)["pat_2"]


def test_evaluate_command_reads_rtstruct_folders_and_label_maps(tmp_path: Path) -> None:
    ref = _dicom_cases(tmp_path / "ref")
    rtstructs = _rtstruct_only_cases(tmp_path / "pred-rtstruct")
    label_maps = _label_map_cases(tmp_path / "pred-labels", tmp_path / "convert")
    rois = tmp_path / "rois.yaml"
    rois.write_text("rois: {1: GTV-1}\n")
    before = _hashes(ref, rtstructs, label_maps)

    for i, (pred, extra) in enumerate(
        [(rtstructs, []), (rtstructs, ["--rois", str(rois)]), (label_maps, ["--rois", str(rois)])]
    ):
        out = tmp_path / f"out{i}"
        args = ["evaluate", str(pred), str(ref), "--out", str(out), *extra]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "3 cases evaluated, 0 failed" in result.output
        with (out / "metrics_per_case.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [(r["case"], r["name"], float(r["dice"])) for r in rows] == [
            (p, "GTV-1", 1.0) for p in PATIENTS
        ]

    # RT-STRUCTs alone against label maps: no image series to rasterise them on
    result = CliRunner().invoke(
        app, ["evaluate", str(rtstructs), str(label_maps), "--out", str(tmp_path / "out9")]
    )
    assert result.exit_code == 1
    assert "0 cases evaluated, 3 failed" in result.output
    assert "no CT/MR image series" in result.output
    assert _hashes(ref, rtstructs, label_maps) == before
