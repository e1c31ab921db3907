"""`medseg batch --references`: each prediction against the reference RT-STRUCT drawn on its
series, into OUTPUT_ROOT/evaluation and the summary page (issue 21).

The referees: the reference RT-STRUCTs are read back by pydicom only to find their series,
the predictions by nibabel, and Dice is recomputed with numpy from the phantom's true labels;
the evaluation must also equal ``medseg evaluate`` run by hand on each case, which shows each
case was matched to its own reference (by series UID: the reference files are named and
nested unlike the input folders). Inputs and references are compared byte for byte after.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.io import dicom, rtstruct
from medseg.structures import Structure
from medseg.synthetic import phantom
from tests.test_batch import _snapshot, train_tiny_model

SECRET = "DOE^REFERENCE"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_model(tmp_path_factory)


def _studies(root: Path, refs: Path, n: int) -> dict[str, np.ndarray]:
    """``n`` phantom studies under ``root`` and, under ``refs`` (other names, nested), an
    RT-STRUCT of each one's true tumour; returns SeriesInstanceUID -> true labels."""
    truths = {}
    for i in range(n):
        case = phantom.make_case(
            300 + i, shape=(16, 64, 64), n_tumours=1, radius_range_mm=(7.0, 9.0)
        )
        paths = phantom.write_case(
            case, root / f"{SECRET}_{i}", patient_id=f"MRN-{i}", patient_name=SECRET
        )
        image = dicom.load_series(paths.ct_dir)
        labels = image.with_array(np.asarray(case.labels.array), kind=case.labels.kind)
        target = refs / ("nested" if i % 2 else "") / f"clinical-{n - i}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        rtstruct.write(
            labels, image, [Structure(label=1, name="Tumour")], target
        )  # other case than model's
        truths[paths.series_instance_uid] = np.asarray(case.labels.array)
    return truths


def _batch(*args: str) -> object:
    return CliRunner().invoke(app, ["batch", *args])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_each_case_is_compared_with_the_reference_drawn_on_its_series(
    tmp_path: Path, tiny_model: Path
) -> None:
    inputs, refs, out = tmp_path / "in", tmp_path / "refs", tmp_path / "out"
    truths = _studies(inputs, refs, 3)
    before_inputs, before_refs = _snapshot(inputs), _snapshot(refs)
    result = _batch(str(inputs), str(out), "--model", str(tiny_model), "--references", str(refs))
    assert result.exit_code == 0, result.output
    assert "references: 3 cases evaluated, 0 failed" in result.output
    assert _snapshot(inputs) == before_inputs and _snapshot(refs) == before_refs
    assert not (out / ".staging" / "evaluation").exists()

    summary = {row["case_id"]: row for row in _rows(out / "summary.csv")}
    per_case = {row["case"]: row for row in _rows(out / "evaluation" / "metrics_per_case.csv")}
    assert set(per_case) == set(summary)
    for case_id, row in per_case.items():
        # numpy's Dice of the prediction (nibabel) and the phantom truth of the same series
        truth = truths[summary[case_id]["series_instance_uid"]] == 1
        image = nib.load(out / "cases" / case_id / "labels.nii.gz")
        predicted = np.asarray(image.dataobj).transpose(2, 1, 0) == 1
        expected = 2 * np.sum(truth & predicted) / (truth.sum() + predicted.sum())
        assert row["name"] == "tumour"
        assert float(row["dice"]) == pytest.approx(expected, abs=0.02), case_id
        assert row["tolerance_mm"] == "2.0" and row["tolerance_source"] == "--tolerance-mm"
    assert len({row["dice"] for row in per_case.values()}) == 3  # three different cases

    # the same numbers as `medseg evaluate` of a case folder laid out by hand
    case_id, row = next(iter(per_case.items()))
    series = summary[case_id]["series_instance_uid"]
    pred, ref = tmp_path / "pred", tmp_path / "ref" / case_id
    pred.mkdir()
    (pred / f"{case_id}.nii.gz").symlink_to(out / "cases" / case_id / "labels.nii.gz")
    reference = next(
        p
        for p in refs.rglob("*.dcm")
        if pydicom.dcmread(p)
        .ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .SeriesInstanceUID
        == series
    )
    ct = next(
        p
        for p in inputs.iterdir()
        if dicom.load_series(p / "ct").source.series_instance_uid == series
    )
    ref.mkdir(parents=True)
    (ref / "rs.dcm").symlink_to(reference)
    for f in (ct / "ct").iterdir():
        (ref / f.name).symlink_to(f)
    by_hand = CliRunner().invoke(
        app,
        ["evaluate", str(pred), str(tmp_path / "ref"), "--out", str(tmp_path / "e"),
         "--rois", str(_rois_yaml(tmp_path))],
    )  # fmt: skip
    assert by_hand.exit_code == 0, by_hand.output
    (hand,) = _rows(tmp_path / "e" / "metrics_per_case.csv")
    assert {k: hand[k] for k in row} == row

    page = (out / "summary.html").read_text(encoding="utf-8")
    assert "Agreement with the references" in page and "mean surface Dice" in page
    assert "added path length (mm)" in page and "evaluation/metrics_per_case.csv" in page
    assert SECRET not in page and "MRN-" not in page
    mean_dice = float(per_case[case_id]["dice"])
    assert f"{mean_dice:.3f}" in page

    # a rerun skips every case but compares them again
    again = _batch(str(inputs), str(out), "--model", str(tiny_model), "--references", str(refs))
    assert again.exit_code == 0, again.output
    assert "3 skipped" in again.output and "references: 3 cases evaluated" in again.output
    assert _rows(out / "evaluation" / "metrics_per_case.csv") == list(per_case.values())


def _rois_yaml(folder: Path) -> Path:
    path = folder / "rois.yaml"
    path.write_text("- {label: 1, name: tumour}\n", encoding="utf-8")
    return path


def test_expert_columns_two_references_for_one_series_and_cases_without_one(
    tmp_path: Path, tiny_model: Path
) -> None:
    inputs, refs, out = tmp_path / "in", tmp_path / "refs", tmp_path / "out"
    _studies(inputs, refs, 3)
    # a second structure set on the first study's series: which is the reference is unknown
    first = min(refs.rglob("*.dcm"))
    (refs / "copy.dcm").write_bytes(first.read_bytes())
    # and one reference removed: that case is not compared (and is no failure)
    max(refs.rglob("*.dcm")).unlink()
    experts = tmp_path / "experts.json"
    experts.write_text(
        json.dumps(
            {
                "statistics": {
                    "tumour": {
                        "dice": {"median": 0.99},
                        "surface_dice": {"median": 0.0},
                        "hausdorff95_mm": {"median": 1000.0},
                    }
                },
                "tolerances": {"tumour": {"mm": 3.0, "source": "file"}},
            }
        ),
        encoding="utf-8",
    )
    tolerances = tmp_path / "tolerances.yaml"
    tolerances.write_text("tumour: 3.0\n", encoding="utf-8")
    result = _batch(
        str(inputs), str(out), "--model", str(tiny_model), "--references", str(refs),
        "--tolerances", str(tolerances), "--reference-agreement", str(experts),
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # the segmentation is fine, one comparison not
    assert "references: 1 cases evaluated, 1 failed" in result.output
    assert "found 2 RT-STRUCTs" in result.output
    assert "outside the experts' agreement: tumour (dice)" in result.output
    (row,) = _rows(out / "evaluation" / "metrics_per_case.csv")
    assert row["tolerance_mm"] == "3.0" and row["tolerance_source"].startswith("file ")
    page = (out / "summary.html").read_text(encoding="utf-8")
    assert "experts&#x27; Dice" in page and '<tr class="outside">' in page
    assert "Not compared" in page and "found 2 RT-STRUCTs" in page
    assert (out / "evaluation" / "expert_agreement.csv").is_file()


def test_reference_options_are_checked_before_any_case_runs(
    tmp_path: Path, tiny_model: Path
) -> None:
    inputs, refs = tmp_path / "in", tmp_path / "refs"
    _studies(inputs, refs, 1)
    bad = tmp_path / "experts.json"
    bad.write_text("{not json", encoding="utf-8")
    out = tmp_path / "out"
    result = _batch(
        str(inputs), str(out), "--model", str(tiny_model), "--references", str(refs),
        "--reference-agreement", str(bad),
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"{bad}: not a readable evaluation summary" in result.output
    assert not (out / "cases").exists() or not any((out / "cases").iterdir())
    # the output may not lie inside the references
    inside = _batch(
        str(inputs), str(refs / "out"), "--model", str(tiny_model), "--references", str(refs)
    )
    assert inside.exit_code == 2 and str(refs) in inside.output
    assert not (refs / "out").exists()
    # an evaluation folder medseg did not write: the cases and summaries are kept, then exit 2
    foreign = tmp_path / "o3"
    first = _batch(str(inputs), str(foreign), "--model", str(tiny_model))
    assert first.exit_code == 0, first.output
    (foreign / "evaluation").mkdir()
    (foreign / "evaluation" / "notes.txt").write_text("mine", encoding="utf-8")
    kept = _batch(str(inputs), str(foreign), "--model", str(tiny_model), "--references", str(refs))
    assert kept.exit_code == 2 and str(foreign / "evaluation") in kept.output, kept.output
    assert [r["status"] for r in _rows(foreign / "summary.csv")] == ["skipped"]
    assert (foreign / "evaluation" / "notes.txt").read_text(encoding="utf-8") == "mine"
    # tolerance options without references are a usage error
    alone = _batch(
        str(inputs), str(tmp_path / "o2"), "--model", str(tiny_model),
        "--reference-agreement", str(bad),
    )  # fmt: skip
    assert alone.exit_code == 2 and "need --references" in alone.output


def test_clinical_rtstructs_beside_their_ct_are_the_references(tmp_path: Path) -> None:
    """Real data: lung-gtv-ct/pat_2 (a CT and its clinical RT-STRUCT with ROI ``GTV-1`` in one
    folder) is both INPUT_ROOT and --references, the way a hospital's export looks. A tiny
    model whose structure is named ``GTV1`` is matched to ``GTV-1``; the reference volume is
    the one plastimatch rasterises from the same RT-STRUCT, the predicted volume the one
    nibabel counts in labels.nii.gz, and the input folder is not touched."""
    from medseg.config import load_config
    from medseg.training.train import train
    from tests.conftest import REPO_ROOT, require_data
    from tests.rt_helpers import plastimatch_masks

    source = require_data("lung-gtv-ct/pat_2")
    text = (REPO_ROOT / "configs" / "tiny.yaml").read_text(encoding="utf-8")
    assert "labels: {1: tumour}" in text
    config_path = tmp_path / "tiny-gtv.yaml"
    config_path.write_text(text.replace("labels: {1: tumour}", "labels: {1: GTV1}"))
    config = load_config(config_path)
    cases = [phantom.make_case(seed, shape=(32, 64, 64), n_tumours=2) for seed in range(2)]
    model = train(config, [(c.image, c.labels) for c in cases], [], tmp_path / "model")
    before = _snapshot(source)
    out = tmp_path / "out"
    result = _batch(
        str(source), str(out), "--model", str(model.checkpoint_path), "--references", str(source)
    )
    assert result.exit_code == 0, result.output
    assert "references: 1 cases evaluated, 0 failed" in result.output
    assert _snapshot(source) == before
    (row,) = _rows(out / "evaluation" / "metrics_per_case.csv")
    assert row["name"] == "GTV1"
    (rs,) = source.glob("DCM_RS_*.dcm")
    (mask,) = plastimatch_masks(rs, source, tmp_path / "plastimatch").values()
    voxel_ml = float(np.prod(mask.geometry.spacing_mm)) / 1000
    assert float(row["volume_reference_ml"]) == pytest.approx(
        float(np.sum(mask.array)) * voxel_ml, rel=0.02
    )
    predicted = np.asarray(nib.load(out / "cases" / row["case"] / "labels.nii.gz").dataobj) == 1
    assert float(row["volume_prediction_ml"]) == pytest.approx(
        float(predicted.sum()) * voxel_ml, rel=1e-6, abs=1e-9
    )
